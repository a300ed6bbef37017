"""Per-team routing models: the registry in the ledger's database, the promotion gate, rollback, per-team scorers.

Real SQLite and PostgreSQL (a schema of its own); judged rows are synthetic with planted structure the prior gets
backwards (the strong tier helps on short requests), so a model fitted on them is clearly better on later rows,
and rows whose grades are coin flips give the gate nothing to promote.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from classifiers.learn import LearnError, Outcomes
from classifiers.promotion import subset
from classifiers.scorer import DEFAULT_MODEL, ComplexityScorer
from metering.ledger import Ledger, open_ledger
from pipeline.team_models import retrain, rollback, team_outcomes
from router.scoring import TeamScorers
from tests.metering_fixtures import PG_URL, pg_schema  # noqa: F401  (fixture)
from tests.test_learn_features_only import _features_only, _rows, _write


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(fn())


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}", "public"
    return PG_URL, request.getfixturevalue("pg_schema")


async def _open(url: tuple[str, str], tmp_path: Path) -> Ledger:
    ledger = open_ledger(url[0], spool_dir=tmp_path / "spool", schema=url[1])
    await ledger.start()
    return ledger


def _coin_flips(n: int, seed: int = 11) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = [_features_only(r) for r in _rows(n)]
    for r in rows:
        r["weak_score"] = float(rng.random() < 0.5)
        r["strong_score"] = 1.0
    return rows


def test_registry_round_trip(ledger_url: tuple[str, str], tmp_path: Path) -> None:
    model = DEFAULT_MODEL.read_bytes()

    async def go() -> None:
        ledger = await _open(ledger_url, tmp_path)
        try:
            assert await ledger.routing_models("a") == [] and await ledger.active_routing_models() == {}
            v1 = await ledger.add_routing_model("a", model, "m1", {"n_rows": 5, "apgr": 0.6}, None, "first")
            v2 = await ledger.add_routing_model("a", b"\x00\x01rest", "m2", {}, 1, "second")
            other = await ledger.add_routing_model("b", model, "m3", {}, None, "other team")
            assert (v1.version, v2.version, other.version) == (1, 2, 1)
            listed = await ledger.routing_models("a")
            assert [(m.version, m.status, m.model_id, m.parent_version) for m in listed] == [
                (2, "candidate", "m2", 1), (1, "candidate", "m1", None)]
            assert listed[1].metrics == {"n_rows": 5, "apgr": 0.6} and listed[1].reason == "first"
            assert await ledger.routing_model_bytes("a", 1) == model
            assert await ledger.routing_model_bytes("a", 2) == b"\x00\x01rest"
            assert await ledger.routing_model_bytes("a", 3) is None
            assert await ledger.activate_routing_model("a", 1) and await ledger.activate_routing_model("a", 2)
            assert not await ledger.activate_routing_model("a", 9)  # no such version: nothing changes
            assert await ledger.active_routing_models() == {"a": (2, "m2")}
            assert [m.status for m in await ledger.routing_models("a")] == ["active", "retired"]
            await ledger.activate_routing_model("a", None)  # back to the default prior
            assert await ledger.active_routing_models() == {}
        finally:
            await ledger.close()

    run(go)


def test_gate_promotes_a_better_model_refuses_a_worse_one_and_rollback_restores(
        ledger_url: tuple[str, str], tmp_path: Path) -> None:
    structured = _write(tmp_path / "structured.jsonl", [_features_only(r) for r in _rows(480)])
    noise = _write(tmp_path / "noise.jsonl", _coin_flips(480))

    async def go() -> None:
        ledger = await _open(ledger_url, tmp_path)
        try:
            scorers = TeamScorers(ComplexityScorer.load())
            first = await retrain(ledger, "t", await team_outcomes(ledger, "t", structured))
            assert first.promoted, first.reason
            assert first.model.metrics["n_holdout"] == 120
            held = first.model.metrics["holdout_apgr"]
            assert held["candidate"] >= held["current"] + 0.01
            await scorers.refresh(ledger)
            assert scorers.for_team("t").model_id == first.model.model_id != scorers.default.model_id
            assert scorers.for_team("other").model_id == scorers.default.model_id

            second = await retrain(ledger, "t", await team_outcomes(ledger, "t", noise))
            assert not second.promoted and "does not beat" in second.reason
            listed = {m.version: m for m in await ledger.routing_models("t")}
            assert listed[2].status == "candidate" and listed[2].reason == second.reason
            assert listed[2].parent_version == 1
            assert (await ledger.active_routing_models())["t"][0] == 1

            few = await retrain(ledger, "t", await team_outcomes(ledger, "t", structured), min_holdout=200)
            assert not few.promoted and few.reason == "only 120 held-out rows; the gate needs 200"

            assert await rollback(ledger, "t") is None  # v1 replaced the default prior
            assert await ledger.active_routing_models() == {}
            await scorers.refresh(ledger)
            assert scorers.for_team("t") is scorers.default
            with pytest.raises(LookupError):
                await rollback(ledger, "t")
        finally:
            await ledger.close()

    run(go)


def test_a_team_without_rows_or_with_too_few_is_a_one_line_error(tmp_path: Path) -> None:
    async def go() -> None:
        ledger = await _open((f"sqlite:///{tmp_path / 'l.db'}", "public"), tmp_path)
        try:
            with pytest.raises(LearnError, match="no judged rows for team 'x'"):
                await team_outcomes(ledger, "x")
            few_rows = [_features_only(r) for r in _rows(40)]
            few = await team_outcomes(ledger, "t", _write(tmp_path / "few.jsonl", few_rows))
            with pytest.raises(LearnError, match="at least 50"):
                await retrain(ledger, "t", few)
            assert await ledger.routing_models("t") == []
        finally:
            await ledger.close()

    run(go)


def test_subset_keeps_row_kinds() -> None:
    data = Outcomes(["a", "b"], [None, [{"role": "user", "content": "x"}]], np.zeros(2), np.ones(2),
                    (np.zeros(3), None))
    part = subset(data, np.array([1]))
    assert part.ids == ["b"] and part.features == (None,) and not part.features_only
