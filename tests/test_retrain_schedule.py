"""Scheduled retraining (``pipeline.retrain_schedule``): two workers, one ledger, one retrain per slot.

Real SQLite and PostgreSQL ledgers (a schema of its own), each opened twice as two workers would; the clock is
injected, so the test moves between slots without sleeping. Judged rows are the features-only rows with planted
structure of ``test_learn_features_only`` (a fitted model clearly beats the prior on the later rows), written into
the outcome store as the shadow path writes them.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from classifiers.gate import DEFAULT_MARGIN, DEFAULT_MIN_HOLDOUT
from classifiers.scorer import ComplexityScorer
from metering.ledger import Ledger, open_ledger
from metering.outcomes import Outcome
from pipeline.retrain_schedule import RetrainSchedule, slot_of, training_path
from router.config import LearningSettings
from router.config_loader import ConfigError, load_policy
from router.policy import Policy
from router.scoring import TeamScorers
from tests.metering_fixtures import pg_schema  # noqa: F401  (fixture of ledger_url)
from tests.test_learn_features_only import _features_only, _rows
from tests.test_team_models import ledger_url  # noqa: F401  (fixture: SQLite and PostgreSQL)

HOUR = 3600.0


def _policy(tmp_path: Path, every_h: str | None = "6", margin: str = "0.01") -> Policy:
    learning = "{judge: frontier" + (f", retrain_every_h: {every_h}" if every_h else "") + \
        f", promote_margin: {margin}" + "}"
    path = tmp_path / "policy.yaml"
    path.write_text("\n".join([
        f"metering: {{ledger: 'sqlite:///{tmp_path}/unused.db'}}",
        "tiers:",
        "  - {name: small, deployments: [{id: small-sim, model: simulated/gpt-4o-mini}]}",
        "  - {name: frontier, deployments: [{id: frontier-sim, model: simulated/gpt-4o}]}",
        "teams:",
        "  t:",
        "    keys: [{id: t-key, sha256: " + "a" * 64 + "}]",
        f"    learning: {learning}",
        "  u:",  # no schedule: never retrained by the loop
        "    keys: [{id: u-key, sha256: " + "b" * 64 + "}]",
        "    learning: {judge: frontier}",
    ]) + "\n")
    return load_policy(path)


async def _open(url: tuple[str, str], spool: Path) -> Ledger:
    ledger = open_ledger(url[0], spool_dir=spool, schema=url[1])
    await ledger.start()
    return ledger


async def _judged(ledger: Ledger, rows: list[dict[str, Any]], team: str = "t") -> None:
    """Store rows as the shadow path does: oldest first, a distinct instant each (the gate holds out by time)."""
    start = datetime.now(UTC) - timedelta(milliseconds=len(rows))
    for i, row in enumerate(rows):
        meta = row["meta"]
        await ledger.add_outcome(Outcome(
            request_id=f"{team}-{row['id']}-{start.timestamp()}", team=team,
            created_at=start + timedelta(milliseconds=i), features=tuple(meta["features"]),
            feature_names=tuple(meta["feature_names"]), prior_score=0.0, model_id="prior", weak_tier="small",
            strong_tier="frontier", routed_tier="small", ceiling_tier="frontier", weak_score=row["weak_score"],
            strong_score=row["strong_score"], judge="frontier-sim"))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_settings_default_to_the_gate_and_reject_nonsense(tmp_path: Path) -> None:
    s = LearningSettings(judge="frontier")
    assert (s.retrain_every_h, s.promote_margin, s.min_holdout) == (None, DEFAULT_MARGIN, DEFAULT_MIN_HOLDOUT)
    assert _policy(tmp_path, "0.5").teams["t"].settings.learning.retrain_every_h == 0.5
    for bad in ("0", "-1"):
        with pytest.raises(ConfigError, match="retrain_every_h"):
            _policy(tmp_path, bad)
    assert slot_of(6 * HOUR - 1, 6) == 0 and slot_of(6 * HOUR, 6) == 1 and slot_of(90 * 60, 0.5) == 3


def test_two_workers_one_retrain_per_slot_only_with_new_rows(ledger_url: tuple[str, str], tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    rows = [_features_only(r) for r in _rows(480)]
    clock = Clock(1_000 * 6 * HOUR + 60)  # one minute into slot 1000

    async def go() -> None:
        a = await _open(ledger_url, tmp_path / "spool-a")
        b = await _open(ledger_url, tmp_path / "spool-b")
        try:
            scorers_b = TeamScorers(ComplexityScorer.load())
            worker_a = RetrainSchedule(a, lambda: policy, TeamScorers(ComplexityScorer.load()), clock)
            worker_b = RetrainSchedule(b, lambda: policy, scorers_b, clock)

            # nothing judged yet: no claim, no model
            assert [p.action for p in await worker_a.run_once()] == ["no_new_rows"]
            assert await a.routing_models("t") == []
            await _judged(a, rows[:400])
            clock.now += 60  # same slot: a process deals with a slot once
            assert await worker_a.run_once() == []

            clock.now += 6 * HOUR  # slot 1001: both workers at once
            first = [p for pair in await asyncio.gather(worker_a.run_once(), worker_b.run_once()) for p in pair]
            assert sorted(p.action for p in first) in (["claimed_elsewhere", "retrained"],
                                                       ["no_new_rows", "retrained"])
            won = next(p for p in first if p.action == "retrained")
            assert won.team == "t" and won.slot == 1001 and won.promoted, won.reason
            models = await a.routing_models("t")
            assert [(m.version, m.status) for m in models] == [(1, "active")]
            assert models[0].metrics["margin"] == 0.01 and models[0].metrics["min_holdout"] == 100
            assert await b.routing_models("u") == []  # no schedule: untouched
            # the promoted model serves: this worker's scorers now, the other's at its next poll
            await scorers_b.refresh(b)
            assert scorers_b.for_team("t").model_id == models[0].model_id != scorers_b.default.model_id
            # a third worker that starts late in the same slot loses the claim even with rows to learn from
            late = RetrainSchedule(b, lambda: policy, None, clock)
            await _judged(b, rows[400:480])
            assert [p.action for p in await late.run_once()] == ["claimed_elsewhere"]

            clock.now += 6 * HOUR  # slot 1002: the new rows are retrained on by exactly one worker
            second = [p for pair in await asyncio.gather(worker_b.run_once(), worker_a.run_once()) for p in pair]
            assert sorted(p.action for p in second) in (["claimed_elsewhere", "retrained"],
                                                        ["no_new_rows", "retrained"])
            assert [m.version for m in await a.routing_models("t")] == [2, 1]

            clock.now += 6 * HOUR  # slot 1003: no new rows since v2: neither claims nor fits
            third = [p for pair in await asyncio.gather(worker_a.run_once(), worker_b.run_once()) for p in pair]
            assert [p.action for p in third] == ["no_new_rows", "no_new_rows"]
            assert [m.version for m in await a.routing_models("t")] == [2, 1]
        finally:
            await a.close()
            await b.close()

    asyncio.run(go())


def test_a_runtime_only_install_warns_once_per_team_and_keeps_going(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # what a runtime-only install looks like to an import
    monkeypatch.delitem(sys.modules, "classifiers.export", raising=False)
    assert training_path() == "onnx"
    policy = _policy(tmp_path, "1")
    clock = Clock(10 * HOUR)

    async def go() -> None:
        ledger = await _open((f"sqlite:///{tmp_path / 'l.db'}", "public"), tmp_path / "spool")
        try:
            await _judged(ledger, [_features_only(r) for r in _rows(200)])
            schedule = RetrainSchedule(ledger, lambda: policy, None, clock)
            for _ in range(3):
                assert [p.action for p in await schedule.run_once()] == ["no_training"]
                clock.now += HOUR
            assert await ledger.routing_models("t") == []
        finally:
            await ledger.close()

    with caplog.at_level(logging.INFO, logger="tiergate.retrain"):
        asyncio.run(go())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "bash scripts/install.sh train" in warnings[0].getMessage()
    assert "team t" in warnings[0].getMessage() and "onnx" in warnings[0].getMessage()


def test_no_new_rows_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    policy = _policy(tmp_path, "1")
    clock = Clock(10 * HOUR)

    async def go() -> None:
        ledger = await _open((f"sqlite:///{tmp_path / 'l.db'}", "public"), tmp_path / "spool")
        try:
            schedule = RetrainSchedule(ledger, lambda: policy, None, clock)
            for _ in range(4):
                assert [p.action for p in await schedule.run_once()] == ["no_new_rows"]
                clock.now += HOUR
        finally:
            await ledger.close()

    with caplog.at_level(logging.INFO, logger="tiergate.retrain"):
        asyncio.run(go())
    skipped = [r.getMessage() for r in caplog.records if "no judged rows" in r.getMessage()]
    assert skipped == ["team t: no judged rows since the epoch; scheduled retraining skipped until there are"]
