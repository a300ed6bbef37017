"""The promotion gate's paired bootstrap (``classifiers.promotion``): no promotion on noise, promotion on a clear win.

In-process, no ledger: ``judge`` fits a real candidate on the older 75% of features-only rows and scores it and the
default prior on the newest 25%. "Noisy" rows have a faint planted signal (the strong tier wins 55% of short requests
and 45% of long ones), so on 50 held-out rows a candidate can beat the prior by a hair without being better; the
planted rows of ``test_learn_features_only`` (85% / 10%) give a candidate that is clearly better.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from classifiers import metrics
from classifiers.learn import Outcomes, read_outcomes
from classifiers.promotion import Difference, judge, paired_difference, resampled_apgr, worse
from classifiers.scorer import DEFAULT_MODEL
from tests.test_learn_features_only import _features_only, _messages, _rows, _write


def _noisy(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        wins = rng.random() < (0.55 if (i * 7) % 60 < 30 else 0.45)
        rows.append(_features_only({"id": f"n{i}", "messages": _messages(i), "weak_score": 0.0 if wins else 1.0,
                                    "strong_score": 1.0}))
    return rows


def _data(tmp_path: Path, rows: list[dict]) -> Outcomes:
    return read_outcomes(_write(tmp_path / "rows.jsonl", rows))


def test_resampled_apgr_is_evaluate_on_the_expanded_rows() -> None:
    """The closed form the bootstrap uses equals ``metrics.evaluate(...).apgr`` of each resample, ties (equal scores
    and a row's own copies) and undefined PGR included."""
    rng = np.random.default_rng(5)
    checked = undefined = 0
    for trial in range(300):
        n = int(rng.integers(2, 40))
        score = rng.integers(0, 4, n).astype(float) if trial % 2 else rng.normal(size=n)
        weak, strong = rng.choice([0.0, 0.5, 1.0], n), rng.choice([0.0, 0.5, 1.0], n)
        drawn = rng.integers(0, n, (3, n))
        counts = np.stack([np.bincount(d, minlength=n) for d in drawn]).astype(float)
        got = resampled_apgr(score, weak, strong, counts)
        for b in range(3):
            want = metrics.evaluate(score[drawn[b]], weak[drawn[b]], strong[drawn[b]]).apgr
            if np.isnan(want):
                assert np.isnan(got[b])
                undefined += 1
            else:
                assert got[b] == pytest.approx(want, abs=1e-12)
                checked += 1
    assert checked > 300 and undefined > 20  # both branches exercised


def test_a_hair_win_on_50_noisy_rows_is_refused(tmp_path: Path) -> None:
    data = _data(tmp_path, _noisy(200, seed=1))
    prior = DEFAULT_MODEL.read_bytes()
    margin_only = judge(data, prior, seed=0, margin=0.01, min_holdout=50, confidence=0)
    held = margin_only.metrics["holdout_apgr"]
    # the premise: on these 50 rows the candidate beats the prior by the margin and a hair, and the old gate promoted
    assert margin_only.promote and 0.01 <= held["candidate"] - held["current"] < 0.03, held
    verdict = judge(data, prior, seed=0, margin=0.01, min_holdout=50)
    assert not verdict.promote
    assert "not beyond noise" in verdict.reason and "80% bootstrap interval" in verdict.reason, verdict.reason
    boot = verdict.metrics["bootstrap"]
    assert verdict.metrics["n_holdout"] == 50 and boot["n"] == 50 and boot["confidence"] == 0.8
    low, high = boot["interval"]
    assert low <= 0 < boot["difference"] < high
    assert boot["resamples"] > 200 and boot["drawn"] == 400


def test_a_clearly_better_candidate_is_promoted_on_50_rows(tmp_path: Path) -> None:
    data = _data(tmp_path, [_features_only(r) for r in _rows(200)])
    verdict = judge(data, DEFAULT_MODEL.read_bytes(), seed=0, margin=0.01, min_holdout=50)
    assert verdict.promote, verdict.reason
    low, high = verdict.metrics["bootstrap"]["interval"]
    assert 0.05 < low < verdict.metrics["bootstrap"]["difference"] < high
    assert "80% bootstrap interval" in verdict.reason


def test_same_rows_and_seed_give_the_same_verdict_and_bytes(tmp_path: Path) -> None:
    prior = DEFAULT_MODEL.read_bytes()
    rows = _noisy(200, seed=1)
    a = judge(_data(tmp_path, rows), prior, seed=3, min_holdout=50)
    b = judge(_data(tmp_path, rows), prior, seed=3, min_holdout=50)  # the same rows read again
    assert (a.promote, a.reason, a.model, a.model_id, a.metrics) == (b.promote, b.reason, b.model, b.model_id,
                                                                      b.metrics)
    # the bootstrap alone: the seed decides the draw, so another seed moves the bounds a little, not the verdict
    new, old = np.linspace(0, 1, 80), np.linspace(0, 1, 80)[::-1] ** 2
    weak = (np.arange(80) % 3 == 0).astype(float)
    first, again = paired_difference(new, old, weak, np.ones(80), seed=7), paired_difference(
        new, old, weak, np.ones(80), seed=7)
    other = paired_difference(new, old, weak, np.ones(80), seed=8)
    assert first == again and first.low != other.low and first.observed == other.observed


def test_confidence_zero_is_the_margin_alone_and_undefined_pgr_never_promotes(tmp_path: Path) -> None:
    off = paired_difference(np.arange(60.0), np.zeros(60), np.zeros(60), np.ones(60), confidence=0)
    assert off.low is None and off.high is None and off.resamples == 0
    # every row a tie between the tiers: PGR undefined everywhere, so there is nothing to judge
    rows = [_features_only(r) for r in _rows(200)]
    for r in rows[150:]:
        r["weak_score"] = r["strong_score"] = 1.0
    verdict = judge(_data(tmp_path, rows), DEFAULT_MODEL.read_bytes(), min_holdout=50)
    assert not verdict.promote and "undefined" in verdict.reason
    assert verdict.metrics["bootstrap"]["interval"] is None


def test_the_watch_rule_mirrors_the_gate() -> None:
    def diff(observed: float, low: float | None, high: float | None, confidence: float = 0.8) -> Difference:
        return Difference(0.5 + observed, 0.5, 100, confidence, 400, 400, low, high)

    assert worse(diff(-0.05, -0.09, -0.01))  # worse beyond noise
    assert worse(diff(-0.004, -0.008, -0.001))  # by less than the margin, still worse beyond noise
    assert not worse(diff(-0.05, -0.12, 0.02))  # could be noise: kept
    assert not worse(diff(-0.05, None, None))  # no interval: kept
    assert worse(diff(-0.02, None, None, confidence=0), margin=0.01)  # bootstrap off: the margin mirrored
    assert not worse(diff(-0.005, None, None, confidence=0), margin=0.01)
    assert not worse(Difference(float("nan"), 0.5, 100, 0.8, 0, 400, None, None))
