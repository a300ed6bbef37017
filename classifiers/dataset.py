"""Routing-outcome rows (prompt, weak and strong model's measured quality) for training and calibration.

Row format: the data card in ``classifiers/data/README.md``. Rows whose licence or terms forbid
shaping a shipped model are never used for training (``TRAINING_EXCLUDED_SOURCES``); evaluation
may read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Evaluation only, never training rows of the shipped model (data card: ../shared/data/routing/README.md):
# AlpacaEval is CC BY-NC 4.0; NQ and ARC are share-alike (CC BY-SA) and this repository is Apache-2.0;
# GPQA's authors ask that its questions not be published in plain text, so they cannot be copied into
# classifiers/data and a model trained on them could not be reproduced from the repository.
TRAINING_EXCLUDED_SOURCES = frozenset({"alpaca_eval", "llmrouter-nq", "llmrouter-arc", "llmrouter-gpqa"})


@dataclass(frozen=True)
class OutcomeData:
    """Columns of a routing-outcome dataset, rows in file order."""

    ids: list[str]
    messages: list[Any]
    weak: np.ndarray
    strong: np.ndarray
    sources: np.ndarray  # the row's ``source``
    collections: np.ndarray  # the file's model set: the source up to its first "-" (llmrouter-gsm8k -> llmrouter)
    groups: np.ndarray  # CV group, a domain: "<source>:<subject|category|task>", else the source
    # rows x models: every model's outcome (``meta.model_scores``, else the pair's), NaN if unmeasured
    model_scores: np.ndarray
    model_names: tuple[str, ...]  # columns of ``model_scores``
    duplicates: list[tuple[str, ...]]  # ids of the same question in other files (``meta.dev_duplicates``)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray) -> OutcomeData:
        """The rows selected by a boolean mask or an index array, in that order."""
        idx = np.arange(len(self))[rows]
        return OutcomeData(
            ids=[self.ids[i] for i in idx],
            messages=[self.messages[i] for i in idx],
            weak=self.weak[idx],
            strong=self.strong[idx],
            sources=self.sources[idx],
            collections=self.collections[idx],
            groups=self.groups[idx],
            model_scores=self.model_scores[idx],
            model_names=self.model_names,
            duplicates=[self.duplicates[i] for i in idx],
        )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON objects of a JSON Lines file, blank lines skipped. A bad line raises ValueError naming it."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ValueError(f"{path}:{number}: not valid JSON") from None
    return rows


def _meta(row: dict[str, Any]) -> dict[str, Any]:
    meta = row.get("meta")
    return meta if isinstance(meta, dict) else {}


def _group(row: dict[str, Any]) -> str:
    """The domain a row belongs to; cross-validation holds out whole domains."""
    meta = _meta(row)
    source = str(row.get("source", ""))
    for key in ("subject", "category"):
        if key in meta:
            return f"{source}:{meta[key]}"
    # LLMRouter has one source per task already; math_l5's task is the whole file.
    return source


def _model_scores(row: dict[str, Any], weak: float, strong: float) -> dict[str, float]:
    scores = _meta(row).get("model_scores")
    if isinstance(scores, dict) and scores:
        return {str(k): float(v) for k, v in scores.items()}
    return {f"weak:{row.get('weak_model', '')}": weak, f"strong:{row.get('strong_model', '')}": strong}


def _score_matrix(per_row: list[dict[str, float]]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Rows x models matrix of scores (NaN where a model has no outcome for a row), and the model names."""
    names = tuple(sorted({name for scores in per_row for name in scores}))
    col = {name: j for j, name in enumerate(names)}
    Y = np.full((len(per_row), len(names)), np.nan)
    for i, scores in enumerate(per_row):
        for name, value in scores.items():
            Y[i, col[name]] = value
    return Y, names


def from_rows(rows: list[dict[str, Any]]) -> OutcomeData:
    """Columns of already parsed rows. Raises KeyError/TypeError/ValueError on a row without both grades."""
    weak = np.array([float(r["weak_score"]) for r in rows])
    strong = np.array([float(r["strong_score"]) for r in rows])
    sources = np.array([str(r.get("source", "")) for r in rows])
    scores, names = _score_matrix([_model_scores(r, w, s) for r, w, s in zip(rows, weak, strong)])
    return OutcomeData(
        ids=[str(r["id"]) for r in rows],
        messages=[r.get("messages") for r in rows],
        weak=weak,
        strong=strong,
        sources=sources,
        collections=np.array([s.split("-", 1)[0] for s in sources]),
        groups=np.array([_group(r) for r in rows]),
        model_scores=scores,
        model_names=names,
        duplicates=[tuple(str(d) for d in _meta(r).get("dev_duplicates") or ()) for r in rows],
    )


def load(path: str | Path, for_training: bool = False) -> OutcomeData:
    """Rows of a ``.jsonl`` file or of every ``*.jsonl`` in a directory (sorted by name).

    ``for_training`` drops rows from ``TRAINING_EXCLUDED_SOURCES`` so a directory that also holds
    evaluation-only data cannot leak it into the model. Raises ValueError when there is nothing to read.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
    elif path.is_file():
        files = [path]
    else:
        raise ValueError(f"{path} does not exist")
    rows = [row for f in files for row in read_jsonl(f)]
    if for_training:
        rows = [r for r in rows if r.get("source") not in TRAINING_EXCLUDED_SOURCES]
    if not rows:
        raise ValueError(f"no routing-outcome rows in {path}")
    return from_rows(rows)
