"""Routing-outcome rows (prompt, weak and strong model's measured quality) for training and calibration.

Row format: the data card in ``classifiers/data/README.md``. Rows from non-commercially licensed
sources are never used for training (see ``TRAINING_EXCLUDED_SOURCES``); evaluation may read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# AlpacaEval's data is CC BY-NC 4.0: evaluation only, it must never shape the shipped model.
TRAINING_EXCLUDED_SOURCES = frozenset({"alpaca_eval"})


@dataclass(frozen=True)
class OutcomeData:
    """Columns of a routing-outcome dataset, rows in file order."""

    ids: list[str]
    messages: list[Any]
    weak: np.ndarray
    strong: np.ndarray
    groups: np.ndarray  # CV group: MMLU subject, else the source name

    def __len__(self) -> int:
        return len(self.ids)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON objects of a JSON Lines file, blank lines skipped."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _group(row: dict[str, Any]) -> str:
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
    source = str(row.get("source", ""))
    return f"{source}:{meta['subject']}" if "subject" in meta else source


def from_rows(rows: list[dict[str, Any]]) -> OutcomeData:
    """Columns of already parsed rows."""
    return OutcomeData(
        ids=[str(r["id"]) for r in rows],
        messages=[r.get("messages") for r in rows],
        weak=np.array([float(r["weak_score"]) for r in rows]),
        strong=np.array([float(r["strong_score"]) for r in rows]),
        groups=np.array([_group(r) for r in rows]),
    )


def load(path: str | Path, for_training: bool = False) -> OutcomeData:
    """Rows of a ``.jsonl`` file or of every ``*.jsonl`` in a directory (sorted by name).

    ``for_training`` drops rows from ``TRAINING_EXCLUDED_SOURCES`` so a directory that also holds
    evaluation-only data cannot leak it into the model.
    """
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    rows = [row for f in files for row in read_jsonl(f)]
    if for_training:
        rows = [r for r in rows if r.get("source") not in TRAINING_EXCLUDED_SOURCES]
    if not rows:
        raise ValueError(f"no routing-outcome rows in {path}")
    return from_rows(rows)
