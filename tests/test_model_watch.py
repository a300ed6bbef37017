"""The watch (``pipeline.team_models.watch``): a promoted routing model that judged rows arriving after its promotion
show worse than the version it replaced is rolled back, once, on record; a good one stays.

Real SQLite and PostgreSQL ledgers (a schema of its own). Two real learned models: ``good`` fitted on the planted
rows of ``test_learn_features_only`` (the strong tier helps on short requests), ``bad`` on the same rows with the
structure reversed; the judged rows that arrive after the promotion carry the planted structure, as the outcome
store receives them (with the prompt text, so the log line can be checked for it). The schedule test injects the
clock as ``test_retrain_schedule`` does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from classifiers.learn import learn, read_outcomes
from classifiers.scorer import ComplexityScorer
from metering.ledger import Ledger, open_ledger
from metering.outcomes import Outcome
from metering.routing_models import RoutingModel
from pipeline.retrain_schedule import RetrainSchedule
from pipeline.team_model_admin import TeamModelAdmin
from pipeline.team_models import watch
from proxy.metrics import rollback_counters
from router.scoring import TeamScorers
from tests.metering_fixtures import pg_schema  # noqa: F401  (fixture of ledger_url)
from tests.test_learn_features_only import _features_only, _rows
from tests.test_retrain_schedule import HOUR, Clock, _policy
from tests.test_team_models import ledger_url  # noqa: F401  (fixture: SQLite and PostgreSQL)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("watch-models")
    planted = [_features_only(r) for r in _rows(300)]
    reversed_ = [{**r, "weak_score": 1.0 - r["weak_score"]} for r in planted]  # strong helps on LONG requests
    out = {}
    for name, rows in (("good", planted), ("bad", reversed_)):
        src = tmp / f"{name}.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        learn(read_outcomes(src), tmp / f"{name}.onnx", seed=0)
        out[name] = (tmp / f"{name}.onnx").read_bytes()
    return out


async def _open(url: tuple[str, str], spool: Path) -> Ledger:
    ledger = open_ledger(url[0], spool_dir=spool, schema=url[1])
    await ledger.start()
    return ledger


async def _promote(ledger: Ledger, model: bytes, parent: int | None, reason: str) -> RoutingModel:
    registered = await ledger.add_routing_model("t", model, ComplexityScorer(model).model_id, {}, parent, reason)
    assert await ledger.activate_routing_model("t", registered.version)
    return registered


async def _judged(ledger: Ledger, rows: list[dict[str, Any]], start: datetime, tag: str) -> None:
    """Store judged rows (with their prompt text) as the shadow path does, one microsecond apart from ``start``."""
    for i, row in enumerate(rows):
        meta = _features_only(row)["meta"]
        await ledger.add_outcome(Outcome(
            request_id=f"{tag}-{row['id']}", team="t", created_at=start + timedelta(microseconds=i + 1),
            features=tuple(meta["features"]), feature_names=tuple(meta["feature_names"]), prior_score=0.0,
            model_id="prior", weak_tier="small", strong_tier="frontier", routed_tier="small",
            ceiling_tier="frontier", weak_score=row["weak_score"], strong_score=row["strong_score"],
            judge="frontier-sim", messages=row["messages"]))


def test_watch_reverts_a_worse_promoted_model_and_keeps_a_good_one(
        ledger_url: tuple[str, str], tmp_path: Path, models: dict[str, bytes]) -> None:
    rows = _rows(300)

    async def go() -> None:
        ledger = await _open(ledger_url, tmp_path / "spool")
        try:
            assert await watch(ledger, "t") is None  # the default prior serves: nothing to watch or roll back
            v1 = await _promote(ledger, models["good"], None, "good over the prior")
            v2 = await _promote(ledger, models["bad"], 1, "held-out APGR 0.6 beats 0.5 (the gate's reason)")
            await _judged(ledger, rows[:40], v2.created_at, "a")
            few = await watch(ledger, "t", min_holdout=50)
            assert few is not None and not few.rolled_back and few.n_rows == 40 and few.difference is None
            assert "40 judged rows since v2" in few.reason
            assert (await ledger.active_routing_models())["t"][0] == 2

            await _judged(ledger, rows[40:120], v2.created_at + timedelta(milliseconds=1), "b")
            done = await watch(ledger, "t", min_holdout=50)
            assert done is not None and done.rolled_back and (done.version, done.replaced, done.n_rows) == (2, 1, 120)
            assert done.difference is not None and done.difference["interval"][1] < 0
            listed = {m.version: m for m in await ledger.routing_models("t")}
            assert (listed[1].status, listed[2].status) == ("active", "retired")
            assert listed[1].reason == "restored by rollback of v2 (watch)"
            reason = listed[2].reason  # what GET /v1/routing/models/{team} shows
            assert reason.startswith("rolled back at ") and " by the watch: on 120 judged rows" in reason
            assert "80% bootstrap interval" in reason and reason.endswith("it was: held-out APGR 0.6 beats 0.5 "
                                                                          "(the gate's reason)")
            rolled = listed[2].rollback
            assert rolled is not None and rolled[1] == "watch" and rolled[0] is not None
            assert v2.created_at < rolled[0] <= datetime.now(UTC)

            # v1 now serves again; it is judged against the prior it replaced, on the rows after v1, and holds up
            kept = await watch(ledger, "t", min_holdout=50)
            assert kept is not None and not kept.rolled_back and (kept.version, kept.replaced) == (1, None)
            assert kept.reason.startswith("kept:") and kept.difference is not None
            assert kept.difference["difference"] > 0
            assert [m.status for m in await ledger.routing_models("t")] == ["retired", "active"]
            assert v1.version == 1

            admin = TeamModelAdmin(ledger, TeamScorers(ComplexityScorer.load()))
            assert await admin.rollbacks(["t", "other"]) == {("t", "watch"): 1}
            listing = (await admin.state("t")).to_dict()["models"]
            assert listing[0]["reason"] == reason
        finally:
            await ledger.close()

    asyncio.run(go())


def test_schedule_rolls_back_once_logs_one_line_and_does_not_refit_the_same_rows(
        tmp_path: Path, models: dict[str, bytes], caplog: pytest.LogCaptureFixture) -> None:
    policy = _policy(tmp_path)  # team t: retrain every 6 h, margin 0.01, min_holdout 100, confidence 0.8
    rows = _rows(500)
    clock = Clock(1_000 * 6 * HOUR + 60)

    async def go() -> None:
        ledger = await _open((f"sqlite:///{tmp_path / 'l.db'}", "public"), tmp_path / "spool")
        try:
            scorers = TeamScorers(ComplexityScorer.load())
            schedule = RetrainSchedule(ledger, lambda: policy, scorers, clock)
            await _promote(ledger, models["good"], None, "good over the prior")
            v2 = await _promote(ledger, models["bad"], 1, "a hair above the margin")
            await scorers.refresh(ledger)
            assert scorers.for_team("t").model_id == ComplexityScorer(models["bad"]).model_id
            await _judged(ledger, rows[:150], v2.created_at, "a")

            [rolled] = await schedule.run_once()
            assert (rolled.action, rolled.version) == ("rolled_back", 2), rolled
            assert [m.version for m in await ledger.routing_models("t")] == [2, 1]  # no fit in that slot
            assert scorers.for_team("t").model_id == ComplexityScorer(models["good"]).model_id  # swapped at once
            clock.now += 6 * HOUR  # the next slot: the only new rows are the ones that condemned v2
            assert [p.action for p in await schedule.run_once()] == ["no_new_rows"]

            await _judged(ledger, rows[150:500], datetime.now(UTC), "b")
            clock.now += 6 * HOUR
            [fitted] = await schedule.run_once()
            assert fitted.action == "retrained" and fitted.version == 3, fitted
            listed = {m.version: m for m in await ledger.routing_models("t")}
            assert listed[2].status == "retired" and listed[2].rollback is not None  # never re-promoted
            assert listed[3].parent_version == 1  # judged against the restored v1, not the rolled-back v2
            assert listed[3].metrics["confidence"] == 0.8 and listed[3].metrics["bootstrap"]["interval"] is not None
            admin = TeamModelAdmin(ledger, scorers)
            [family] = rollback_counters(await admin.rollbacks(["t", "u"]))
            assert [(s.name, s.labels, s.value) for s in family.samples] == [
                ("tiergate_routing_model_rollbacks_total", {"team": "t", "by": "watch"}, 1)]
        finally:
            await ledger.close()

    with caplog.at_level(logging.INFO, logger="tiergate.retrain"):
        asyncio.run(go())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("team t: routing model v2 rolled back to v1 by the watch")
    assert "Please summarise" not in warnings[0] and "detail" not in warnings[0]  # numbers, never prompt text
    assert "\n" not in warnings[0]
