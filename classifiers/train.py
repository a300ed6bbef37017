"""Train the complexity model: featurize, subject-grouped CV, calibrate, fit on everything, export.

Reproducible from the repo alone (``tiergate train --data classifiers/data --out classifiers/models/complexity.onnx``):
the same data and seed give the same CV metrics and the same ONNX bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from tqdm import tqdm

from classifiers import cv, dataset, export, model, modelmeta
from classifiers.features import FEATURE_NAMES, featurize_many, split_request
from metering.tokens import count_text


@dataclass(frozen=True)
class TrainResult:
    report: cv.CVReport
    model_path: Path
    card_json: Path
    card_md: Path
    platt: tuple[float, float]
    size_bytes: int


def _card_paths(out: Path) -> tuple[Path, Path]:
    return out.with_suffix(".card.json"), out.with_suffix(".card.md")


def format_report(rep: cv.CVReport) -> str:
    """Human-readable CV summary (printed by ``tiergate train`` and put in the card)."""
    def row(name: str, m) -> str:
        return f"| {name} | {m.apgr:.3f} | {100 * m.cpt50:.1f}% | {100 * m.cpt80:.1f}% |"

    lines = [
        "| score | APGR | CPT(50%) | CPT(80%) |",
        "|---|---:|---:|---:|",
        row("model (pooled out-of-fold)", rep.pooled),
        row("prompt length (tokens) baseline", rep.baseline),
        "",
        f"Model beats prompt length on {rep.wins} of {len(rep.scored_folds)} folds "
        f"(folds with undefined PGR, strong <= weak on average: "
        f"{', '.join(f.group for f in rep.folds if not np.isfinite(f.apgr)) or 'none'}).",
        "",
        "| held-out group | n | model APGR | length APGR |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {f.group} | {f.n} | {f.apgr:.3f} | {f.baseline_apgr:.3f} |" for f in rep.folds]
    return "\n".join(lines)


def train(data_dir: str | Path, out: str | Path, seed: int = 0, show_progress: bool = True) -> TrainResult:
    """Run the whole training and write the model and its card. Returns the CV report."""
    data = dataset.load(data_dir, for_training=True)
    X = featurize_many(data.messages)

    def fit_predict(train_rows: np.ndarray, test_rows: np.ndarray) -> np.ndarray:
        fitted = model.fit(X[train_rows], data.weak[train_rows], data.strong[train_rows], data.groups[train_rows], seed)
        return model.decision(fitted, X[test_rows])

    progress: Callable[[Iterable[str]], Iterable[str]] = (
        (lambda it: tqdm(list(it), desc="grouped CV", unit="fold")) if show_progress else iter
    )
    oof = cv.out_of_fold(fit_predict, data.groups, progress)
    baseline = np.array([count_text(split_request(m)[0]) for m in data.messages], dtype=np.float64)
    rep = cv.report(oof, baseline, data.weak, data.strong, data.groups)

    a, b = model.fit_platt(oof, model.strong_needed(data.weak, data.strong))
    final = model.fit(X, data.weak, data.strong, data.groups, seed)
    model.fold_platt(final, a, b)

    out = Path(out)
    data_sha = hashlib.sha256("\n".join(data.ids).encode()).hexdigest()[:12]
    meta = {**modelmeta.encode_bounds(X), "trained_on": f"{len(data)} rows, ids sha256 {data_sha}", "seed": str(seed),
            "label": "z-scored sum of P(weak fails) and P(strong fails) logits; Platt-calibrated to P(strong beats weak)"}
    onnx_bytes = export.to_onnx(final, out, meta)
    drift = export.check_roundtrip(final, onnx_bytes, X[:512])
    if drift > 1e-4:
        raise RuntimeError(f"ONNX export changed scores by up to {drift}")

    card_json, card_md = _card_paths(out)
    lr = final.named_steps["lr"]
    card = {
        "model_file": out.name,
        "model_id": hashlib.sha256(onnx_bytes).hexdigest()[:12],
        "size_bytes": len(onnx_bytes),
        "seed": seed,
        "data": {"rows": len(data), "groups": sorted(set(data.groups.tolist())), "ids_sha256_12": data_sha},
        "cv": {
            "pooled": asdict(rep.pooled),
            "length_baseline": asdict(rep.baseline),
            "wins": rep.wins,
            "scored_folds": len(rep.scored_folds),
            "folds": [asdict(f) for f in rep.folds],
        },
        "platt": {"a": a, "b": b},
        "features": list(FEATURE_NAMES),
        "weights_standardised": dict(zip(FEATURE_NAMES, [round(float(w), 5) for w in lr.coef_[0]])),
    }
    card_json.write_text(json.dumps(card, indent=1) + "\n")
    card_md.write_text(
        f"# {out.name}: generated training report\n\n"
        f"model_id `{card['model_id']}`, {len(onnx_bytes)} bytes, seed {seed}, "
        f"{len(data)} training rows in {len(card['data']['groups'])} groups.\n\n"
        f"Subject-grouped CV (one whole subject held out per fold, pooled out-of-fold scores):\n\n"
        f"{format_report(rep)}\n"
    )
    return TrainResult(rep, out, card_json, card_md, (a, b), len(onnx_bytes))
