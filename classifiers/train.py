"""Train the default complexity model: featurize, domain-grouped CV, calibrate, fit on everything, export.

Reproducible from the repo alone (``tiergate train --data classifiers/data --out classifiers/models/complexity.onnx``):
the same data and seed give the same CV metrics and the same ONNX bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from classifiers import cv, dataset, export, model
from classifiers.features import FEATURE_NAMES, featurize_many, split_request
from text.tokens import count_text


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
        return f"| {name} | {m.n} | {m.apgr:.3f} | {100 * m.cpt50:.1f}% | {100 * m.cpt80:.1f}% |"

    lines = ["| collection (pooled out-of-fold) | n | APGR | CPT(50%) | CPT(80%) |", "|---|---:|---:|---:|---:|"]
    for source, (m, base) in rep.sources.items():
        lines += [row(f"{source}: model", m), row(f"{source}: prompt length (tokens)", base)]
    undefined = ", ".join(f.group for f in rep.folds if not np.isfinite(f.apgr)) or "none"
    lines += [
        "",
        (f"Mean over collections: model {rep.mean_source_apgr:.3f}. Model beats prompt length on {rep.wins} of "
         f"{len(rep.scored_folds)} held-out domains (undefined PGR, strong <= weak on average: {undefined})."),
        "",
        "| held-out domain | n | model APGR | length APGR |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {f.group} | {f.n} | {f.apgr:.3f} | {f.baseline_apgr:.3f} |" for f in rep.folds]
    return "\n".join(lines)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def fit(data: dataset.OutcomeData, X: np.ndarray) -> model.LinearScore:
    """The default recipe on these rows: labels computed from them only, then the ridge fit."""
    return model.fit_linear(X, model.target(data, model.LABEL), model.balanced_weights(data.groups), model.ALPHA,
                            drop=model.DEFAULT_DROP)


def out_of_fold(data: dataset.OutcomeData, X: np.ndarray,
                progress: Callable[[Iterable[str]], Iterable[str]] = iter) -> np.ndarray:
    """Domain-grouped out-of-fold logits of the default recipe (labels re-fitted inside every fold)."""
    def fit_predict(train_rows: np.ndarray, test_rows: np.ndarray) -> np.ndarray:
        return fit(data.subset(train_rows), X[train_rows]).decision(X[test_rows])

    return cv.out_of_fold(fit_predict, data.groups, data.ids, data.duplicates, progress)


def train(data_dir: str | Path, out: str | Path, seed: int = 0, show_progress: bool = True) -> TrainResult:
    """Run the whole training and write the model and its card. Raises ValueError if there are no rows.

    ``seed`` is recorded for the record: every step is closed form or a fixed iteration, so nothing
    random is drawn.
    """
    data = dataset.load(data_dir, for_training=True)
    X = featurize_many(data.messages).astype(np.float64)
    progress: Callable[[Iterable[str]], Iterable[str]] = iter
    if show_progress:
        from tqdm import tqdm

        def with_bar(folds: Iterable[str]) -> Iterable[str]:
            return tqdm(list(folds), desc="domain-grouped CV", unit="fold")

        progress = with_bar
    oof = out_of_fold(data, X, progress)
    baseline = np.array([count_text(split_request(m)[0]) for m in data.messages], dtype=np.float64)
    rep = cv.report(oof, baseline, data.weak, data.strong, data.groups, data.collections)

    a, b = model.fit_platt(oof, model.strong_needed(data.weak, data.strong))
    final = fit(data, X).calibrated(a, b)

    out = Path(out)
    data_sha = hashlib.sha256("\n".join(data.ids).encode()).hexdigest()[:12]
    meta = {"kind": "default", "trained_on": f"{len(data)} rows, ids sha256 {data_sha}", "seed": str(seed),
            "label": f"{model.LABEL} difficulty, z-scored per collection; ridge alpha {model.ALPHA:g}, "
                     "domain-balanced; Platt-calibrated to P(strong beats weak)"}
    onnx_bytes = export.linear_model(final, out, meta)
    from classifiers.scorer import ComplexityScorer

    got = np.array(ComplexityScorer(onnx_bytes).score_many(data.messages[:512]))
    drift = float(np.max(np.abs(got - _sigmoid(final.decision(X[:512])))))
    if drift > 1e-4:
        raise RuntimeError(f"ONNX export changed scores by up to {drift}")

    card_json, card_md = _card_paths(out)
    sd = X.std(axis=0)
    card = {
        "model_file": out.name,
        "model_id": hashlib.sha256(onnx_bytes).hexdigest()[:12],
        "size_bytes": len(onnx_bytes),
        "seed": seed,
        "data": {"rows": len(data), "collections": sorted(set(data.collections.tolist())),
                 "groups": sorted(set(data.groups.tolist())), "ids_sha256_12": data_sha},
        "cv": {
            "collections": {s: {"model": asdict(m), "length_baseline": asdict(base)}
                            for s, (m, base) in rep.sources.items()},
            "mean_collection_apgr": rep.mean_source_apgr,
            "wins": rep.wins,
            "scored_folds": len(rep.scored_folds),
            "folds": [asdict(f) for f in rep.folds],
        },
        "platt": {"a": a, "b": b},
        "features": list(FEATURE_NAMES),
        # Weight x training sd: how far one sd of each feature moves the logit (0 = not used).
        "weights_per_sd": dict(zip(FEATURE_NAMES, [round(float(w), 5) for w in final.coef * sd])),
    }
    card_json.write_text(json.dumps(card, indent=1) + "\n")
    card_md.write_text(
        f"# {out.name}: generated training report\n\n"
        f"model_id `{card['model_id']}`, {len(onnx_bytes)} bytes, seed {seed}, "
        f"{len(data)} training rows in {len(card['data']['groups'])} domains.\n\n"
        f"Domain-grouped CV (one whole domain held out per fold, copies of its questions never trained on; "
        f"pooled out-of-fold scores):\n\n"
        f"{format_report(rep)}\n"
    )
    return TrainResult(rep, out, card_json, card_md, (a, b), len(onnx_bytes))
