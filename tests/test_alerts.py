"""Budget alerts fire when settled spend crosses a threshold, once per scope and period, naming the crossing
request; refusals are recorded. In process, with real SQLite and PostgreSQL ledgers, real Redis and a real local
webhook server (``tests/test_alerts_e2e.py`` drives the same through two served workers)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from metering.alerts import Alerter, crossings
from metering.budgets.base import BudgetExceeded, Cap, CapState
from metering.budgets.memory_store import MemoryBudgetStore
from metering.budgets.policy import BudgetLimits, BudgetPolicy
from metering.ledger import Ledger, open_ledger
from metering.ledger.alert_log import AlertEvent, AlertQuery
from metering.service import Meter
from tests.metering_fixtures import PG_URL, REDIS_URL, make_record, pg_schema, redis_prefix  # noqa: F401  (fixtures)
from tests.webhook_receiver import Webhook

NOW = datetime.now(UTC)
DAY = NOW.date()
EVER = AlertQuery(NOW - timedelta(days=1), NOW + timedelta(days=1), limit=1000)


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(fn())


def _cap(limit: int = 1_000, kind: str = "team", name: str = "") -> Cap:
    return Cap(kind, "t", name, "day", DAY, limit)  # type: ignore[arg-type]


# -- the crossing arithmetic -----------------------------------------------------------------------------------------

def test_each_threshold_is_crossed_by_exactly_one_request_of_a_settle() -> None:
    cap = _cap(1_000)
    # A lease closing with four requests: spend goes 300 -> 450 -> 500 -> 790 -> 1 200.
    found, passed = crossings(CapState(cap, 1_200, 0), [("a", 150), ("b", 50), ("c", 290), ("d", 410)], (50, 80, 100))
    assert [(e.threshold_pct, e.request_id, e.previous_nanos, e.spent_nanos, e.amount_nanos) for e in found] == [
        (50, "b", 450, 500, 50), (80, "d", 790, 1_200, 410), (100, "d", 790, 1_200, 410)]
    assert passed == []
    # After the crossings: nothing new, and every threshold is already behind.
    found, passed = crossings(CapState(cap, 1_300, 0), [("e", 100)], (50, 80, 100))
    assert found == [] and passed == [50, 80, 100]
    # Exactly at the line counts as crossed (spend * 100 >= pct * limit, integers).
    found, _ = crossings(CapState(cap, 800, 0), [("f", 1)], (80,))
    assert [(e.request_id, e.previous_nanos, e.spent_nanos) for e in found] == [("f", 799, 800)]


def test_a_counter_that_jumped_reports_thresholds_passed_unseen() -> None:
    cap = _cap(1_000)
    # The settle added 10 but the counter reads 900: it was re-filled from the ledger in between.
    found, passed = crossings(CapState(cap, 900, 0), [("a", 10)], (50, 80, 100))
    assert found == [] and passed == [50, 80]
    assert crossings(CapState(_cap(0), 900, 0), [("a", 10)], (50,)) == ([], [])  # no cap, no alert


# -- the alerts table ------------------------------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}", "public"
    return PG_URL, request.getfixturevalue("pg_schema")


async def _open(url: tuple[str, str], spool: Path | None = None) -> Ledger:
    ledger = open_ledger(url[0], spool_dir=spool, schema=url[1])
    await ledger.start()
    return ledger


def _threshold(pct: int, team: str = "t", at: datetime = NOW, **kw: Any) -> AlertEvent:
    return AlertEvent(kind="threshold", at=at, team=team, scope="tag", scope_name="exp=e1", period="day",
                      period_start=DAY, limit_nanos=5_000_000, spent_nanos=pct * 50_000, threshold_pct=pct,
                      previous_nanos=pct * 50_000 - 7, amount_nanos=7, request_id=f"r{pct}", **kw)


def test_alerts_table_stores_a_threshold_once_and_filters(ledger_url: tuple[str, str], tmp_path: Path) -> None:
    async def go() -> None:
        ledger = await _open(ledger_url, tmp_path / "spool")
        try:
            first = _threshold(80)
            assert await ledger.add_alerts([first, _threshold(50, at=NOW - timedelta(hours=2))]) == [True, True]
            # another process's copy of the same crossing (new id, same scope, period, threshold) is refused
            assert await ledger.add_alerts([_threshold(80), first]) == [False, False]
            refusal = AlertEvent(kind="refusal", at=NOW - timedelta(hours=1), team="u", scope="key",
                                 scope_name="k1", period="month", period_start=DAY.replace(day=1),
                                 limit_nanos=9, spent_nanos=8, amount_nanos=3, request_id="x", key_id="k1",
                                 tags={"exp": "e1", "a": "b"})
            assert await ledger.add_alerts([refusal, replace(refusal, id="other")]) == [True, True]
            everything = await ledger.alerts(EVER)
            assert [(e.kind, e.team, e.threshold_pct) for e in everything] == [  # newest first
                ("threshold", "t", 80), ("refusal", "u", None), ("refusal", "u", None), ("threshold", "t", 50)]
            assert everything[0] == first
            stored = everything[1] if everything[1].id == refusal.id else everything[2]
            assert stored == refusal and stored.tags == {"a": "b", "exp": "e1"}
            assert [e.team for e in await ledger.alerts(AlertQuery(EVER.since, EVER.until, team="u"))] == ["u", "u"]
            assert [e.threshold_pct for e in await ledger.alerts(
                AlertQuery(EVER.since, EVER.until, kind="threshold"))] == [80, 50]
            assert len(await ledger.alerts(AlertQuery(EVER.since, EVER.until, limit=1))) == 1
            window = AlertQuery(NOW - timedelta(hours=1, seconds=1), NOW)  # [since, until): NOW itself is out
            assert {e.kind for e in await ledger.alerts(window)} == {"refusal"}
        finally:
            await ledger.close()

    run(go)


def test_known_teams_come_from_the_ledger(ledger_url: tuple[str, str], tmp_path: Path) -> None:
    async def go() -> list[str]:
        ledger = await _open(ledger_url, tmp_path / "spool")
        for i, team in enumerate(["b", "a", "b"]):
            await ledger.write(make_record(i, team=team))
        await ledger.flush()
        teams = await ledger.teams()
        await ledger.close()
        return teams

    assert run(go) == ["a", "b"]


# -- the alerter -----------------------------------------------------------------------------------------------------

def test_thresholds_fire_once_at_the_crossing_request_and_are_stored(tmp_path: Path) -> None:
    cap = _cap(1_000)

    async def go() -> tuple[Webhook, list[AlertEvent]]:
        async with Webhook(failures=2) as hook:
            ledger = await _open((f"sqlite:///{tmp_path / 'l.db'}", "public"))
            alerter = Alerter(hook.url, ledger=ledger, base_delay_s=0.02)
            await alerter.start()
            spent = 0
            for i, cost in enumerate([400, 99, 1, 299, 1, 200, 1_000, 500]):
                spent += cost
                alerter.observe([CapState(cap, spent, 0)], [(f"req-{i}", cost)])
            await alerter.close()
            stored = await ledger.alerts(EVER)
            await ledger.close()
        return hook, stored

    hook, stored = run(go)
    by_pct = {b["alert"]["threshold_pct"]: b["alert"] for b in hook.bodies}
    assert sorted(by_pct) == [50, 80, 100] and len(hook.bodies) == 3
    assert hook.attempts == 5  # two 500s retried
    # 400, 499, 500 (req-2 crosses 50 %), 799, 800 (req-4 crosses 80 %), 1 000 (req-5 crosses 100 %)
    assert [(p, a["request_id"], a["previous_spent_usd"], a["spent_usd"]) for p, a in sorted(by_pct.items())] == [
        (50, "req-2", "0.000000499", "0.000000500"), (80, "req-4", "0.000000799", "0.000000800"),
        (100, "req-5", "0.000000800", "0.000001000")]
    assert by_pct[100]["limit_usd"] == "0.000001000" and by_pct[100]["scope"] == "team"
    assert hook.bodies[0]["text"].startswith(":warning: tiergate: daily budget of team t")
    assert sorted((e.threshold_pct, e.request_id, e.spent_nanos) for e in stored) == [
        (50, "req-2", 500), (80, "req-4", 800), (100, "req-5", 1_000)]


def test_webhook_down_never_blocks_and_gives_up() -> None:
    async def go() -> int:
        async with Webhook(failures=100) as hook:
            alerter = Alerter(hook.url, base_delay_s=0.01, max_attempts=3)
            await alerter.start()
            alerter.observe([CapState(_cap(1_000), 1_000, 0)], [("r", 1_000)])
            # observe() handed the crossings over without waiting on the webhook: it has not been called yet (the
            # receiver runs on this loop, which observe() never yielded to), the deliveries happen in the background.
            assert hook.attempts == 0
            await alerter.close()
            return hook.attempts

    assert run(go) == 3 * 3  # three thresholds, three attempts each


def _replicas(n: int, hook: Webhook, ledger: Ledger | None, prefix: str | None = None) -> list[Alerter]:
    """``n`` workers' alerters: on one Redis (under ``prefix``) if given, on the ledger alone otherwise."""
    import redis.asyncio as aioredis

    return [Alerter(hook.url, redis=aioredis.Redis.from_url(REDIS_URL) if prefix else None, prefix=prefix or "tg",
                    ledger=ledger, catch_up_delay_s=0.2) for _ in range(n)]


@pytest.mark.parametrize("shared", ["redis", "ledger"])
def test_replicas_fire_once_between_them(shared: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Two workers see the same settle result (the crossing) and a later one: one alert per threshold, from Redis
    SET NX or, without Redis, from the ledger's unique key."""
    prefix = request.getfixturevalue("redis_prefix") if shared == "redis" else None
    cap = _cap(1_000)

    async def go() -> tuple[list[dict[str, Any]], list[AlertEvent]]:
        async with Webhook() as hook:
            ledger = await _open((f"sqlite:///{tmp_path / 'l.db'}", "public"))
            alerters = _replicas(2, hook, ledger, prefix)
            for a in alerters:
                await a.start()
            for a in alerters:
                a.observe([CapState(cap, 850, 0)], [("crossing", 400)])
                a.observe([CapState(cap, 900, 0)], [("later", 50)])
            for a in alerters:
                await a.close()
            stored = await ledger.alerts(EVER)
            await ledger.close()
            return hook.bodies, stored

    bodies, stored = run(go)
    assert sorted((b["alert"]["threshold_pct"], b["alert"]["request_id"]) for b in bodies) == [
        (50, "crossing"), (80, "crossing")]
    assert sorted((e.threshold_pct, e.request_id) for e in stored) == [(50, "crossing"), (80, "crossing")]


def test_a_threshold_passed_unseen_fires_once_after_the_delay(tmp_path: Path) -> None:
    cap = _cap(1_000)

    async def go() -> tuple[list[dict[str, Any]], list[AlertEvent]]:
        async with Webhook() as hook:
            ledger = await _open((f"sqlite:///{tmp_path / 'l.db'}", "public"))
            alerters = _replicas(2, hook, ledger)
            for a in alerters:
                await a.start()
                a.observe([CapState(cap, 600, 0)], [("after-refill", 10)])  # 590 before: 50 % passed unseen
                a.observe([CapState(cap, 610, 0)], [("next", 10)])
            for a in alerters:
                await a.drain()  # waits for the catch-up (close() would leave it to another replica)
                await a.close()
            stored = await ledger.alerts(EVER)
            await ledger.close()
            return hook.bodies, stored

    bodies, stored = run(go)
    assert [(b["alert"]["threshold_pct"], b["alert"]["request_id"]) for b in bodies] == [(50, None)]
    assert "crossed while not observed" in bodies[0]["text"]
    assert [(e.threshold_pct, e.previous_nanos, e.spent_nanos) for e in stored] == [(50, None, 600)]


# -- through the meter: settle feeds the alerter, a refusal is recorded, not a 100 % alert ----------------------------

def test_meter_settles_cross_thresholds_and_refusals_are_recorded(tmp_path: Path) -> None:
    policy = BudgetPolicy(team=BudgetLimits(daily_usd=Decimal("0.000008")),  # 8 000 nano-dollars
                          tags={"exp=e1": BudgetLimits(daily_usd=Decimal("0.000004"))}, redis_failure="closed")
    heard: list[AlertEvent] = []

    async def go() -> tuple[list[dict[str, Any]], list[AlertEvent]]:
        async with Webhook() as hook:
            ledger = await _open((f"sqlite:///{tmp_path / 'l.db'}", "public"), tmp_path / "spool")
            alerter = Alerter(hook.url, ledger=ledger, base_delay_s=0.01)
            alerter.refusal_listeners.append(heard.append)
            await alerter.start()
            meter = Meter(ledger, MemoryBudgetStore(), alerter)
            tags = {"exp": "e1"}
            # tag: 1 500, 2 100 (50 %), 4 000 (80 % and 100 %); team: 4 000 is its 50 %
            for i, cost in enumerate([1_500, 600, 1_900]):
                res = await meter.reserve("t", "k", tags, cost, policy, request_id=f"r{i}", started_at=NOW)
                await meter.settle(res, make_record(i, request_id=f"r{i}", started_at=NOW, team="t", tags=tags,
                                                    cost_nanos=cost))
            with pytest.raises(BudgetExceeded):  # the tag's cap is full: refused, recorded, no alert
                await meter.reserve("t", "k", tags, 2_000, policy, request_id="refused", started_at=NOW)
            await alerter.flush()
            stored = await ledger.alerts(EVER)
            await meter.close()
            return hook.bodies, stored

    bodies, stored = run(go)
    got = sorted((b["alert"]["scope"], b["alert"]["threshold_pct"], b["alert"]["request_id"],
                  b["alert"]["spent_usd"]) for b in bodies)
    assert got == [("tag", 50, "r1", "0.000002100"), ("tag", 80, "r2", "0.000004000"),
                   ("tag", 100, "r2", "0.000004000"), ("team", 50, "r2", "0.000004000")]
    refusals = [e for e in stored if e.kind == "refusal"]
    assert [(e.scope, e.scope_name, e.team, e.key_id, e.tags, e.amount_nanos, e.spent_nanos, e.request_id)
            for e in refusals] == [("tag", "exp=e1", "t", "k", {"exp": "e1"}, 2_000, 4_000, "refused")]
    assert [e.id for e in heard] == [refusals[0].id]
    assert sorted(e.threshold_pct for e in stored if e.kind == "threshold" and e.scope == "tag") == [50, 80, 100]


def test_any_budget_scope_alerts_an_experiment_too(tmp_path: Path) -> None:
    """Scopes are data (the cap's kind and name): a later scope kind needs no change here or in the table."""
    cap = Cap("experiment", "t", "churn-v2", "month", DAY.replace(day=1), 1_000)  # type: ignore[arg-type]

    async def go() -> tuple[list[dict[str, Any]], list[AlertEvent]]:
        async with Webhook() as hook:
            ledger = await _open((f"sqlite:///{tmp_path / 'l.db'}", "public"))
            alerter = Alerter(hook.url, ledger=ledger, thresholds=(80,))
            await alerter.start()
            alerter.observe([CapState(cap, 900, 0)], [("r1", 700), ("r2", 200)])
            await alerter.close()
            stored = await ledger.alerts(EVER)
            await ledger.close()
            return hook.bodies, stored

    bodies, stored = run(go)
    assert [(e.scope, e.scope_name, e.period, e.threshold_pct, e.request_id) for e in stored] == [
        ("experiment", "churn-v2", "month", 80, "r2")]
    assert bodies[0]["text"].startswith(":warning: tiergate: monthly budget of experiment churn-v2 of team t")
