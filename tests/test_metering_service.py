"""Meter facade and alerts: settle writes the record and releases the hold (failures and cancellations too), alerts
fire once per threshold (also across replicas through Redis) and the webhook is retried with backoff."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from aiohttp import web

from metering_fixtures import REDIS_URL, make_record, redis_prefix  # noqa: F401  (fixture)
from metering.alerts import Alerter
from metering.budgets.base import BudgetExceeded, Cap, CapState
from metering.budgets.memory_store import MemoryBudgetStore
from metering.budgets.policy import BudgetLimits, BudgetPolicy
from metering.ledger.sqlite import SqliteLedger
from metering.service import Meter

NOW = datetime.now(timezone.utc)
DAY = NOW.date()


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(fn())


class Webhook:
    """A real local HTTP server that fails the first ``failures`` posts with 500."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.attempts = 0
        self.bodies: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.attempts <= self.failures:
            return web.Response(status=500)
        self.bodies.append(await request.json())
        return web.Response(text="ok")

    async def __aenter__(self) -> "Webhook":
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def test_settle_writes_record_releases_hold_and_alerts(tmp_path: Path) -> None:
    policy = BudgetPolicy(team=BudgetLimits(daily_usd=Decimal("0.000010")), redis_failure="closed")  # 10 000 nano-dollars

    async def go() -> None:
        async with Webhook() as hook:
            ledger = SqliteLedger(tmp_path / "l.db")
            await ledger.start()
            alerter = Alerter(hook.url, base_delay_s=0.01)
            await alerter.start()
            meter = Meter(ledger, MemoryBudgetStore(), alerter)
            # A request that failed before the provider: settles to 0, its record is still written.
            res = await meter.reserve("t", "k", {}, 8_000, policy, request_id="failed", started_at=NOW)
            with pytest.raises(BudgetExceeded) as info:
                await meter.reserve("t", "k", {}, 3_000, policy, request_id="x", started_at=NOW)
            assert info.value.limit_nanos == 10_000 and info.value.reserved_nanos == 8_000
            await meter.settle(res, make_record(1, request_id="failed", started_at=NOW, ended_at=NOW, team="t",
                                                status=502, error="upstream connect failed", cost_nanos=0,
                                                prompt_tokens=0, completion_tokens=0))
            states = await meter.budget_states("t", policy, DAY)
            assert (states[0].spent_nanos, states[0].reserved_nanos) == (0, 0)
            # A client disconnect cancels the handler mid-settle: the shielded settle still completes.
            res2 = await meter.reserve("t", "k", {}, 9_000, policy, request_id="cut", started_at=NOW)
            task = asyncio.create_task(meter.settle(res2, make_record(
                2, request_id="cut", started_at=NOW, ended_at=NOW, team="t", cost_nanos=6_000, usage_estimated=True)))
            await asyncio.sleep(0)
            task.cancel()
            await asyncio.sleep(0.05)
            states = await meter.budget_states("t", policy, DAY)
            assert (states[0].spent_nanos, states[0].reserved_nanos) == (6_000, 0)
            await alerter.drain()
            await ledger.flush()
            report = await ledger.report(DAY, DAY + timedelta(days=1), team="t", group_by=())
            assert (report.totals.requests, report.totals.cost_nanos) == (2, 6_000)
            status = await meter.teams_status({"t": policy}, DAY)
            assert status == [{"team": "t", "day_usd": "0.000006000", "month_usd": "0.000006000",
                               "daily_budget_usd": "0.000010", "monthly_budget_usd": None}]
            await meter.close()
            # 50 % from settled spend (6 000 of 10 000); 100 % because the cap refused request "x" while 8 000
            # were held, although settled spend never reached the limit.
            by_pct = {b["alert"]["threshold_pct"]: b for b in hook.bodies}
            assert sorted(by_pct) == [50, 100] and len(hook.bodies) == 2
            assert by_pct[50]["alert"]["spent_usd"] == "0.000006000" and not by_pct[50]["alert"]["refusing"]
            assert by_pct[100]["alert"]["refusing"] and "requests are refused" in by_pct[100]["text"]

    run(go)


def states_at(c: Cap, *spent: int) -> list[list[CapState]]:
    return [[CapState(c, s, 0)] for s in spent]


def test_thresholds_fire_once_each_and_webhook_is_retried() -> None:
    c = Cap("team", "t", "", "day", DAY, 1_000)

    async def go() -> Webhook:
        async with Webhook(failures=2) as hook:
            alerter = Alerter(hook.url, base_delay_s=0.02)
            await alerter.start()
            for s in states_at(c, 400, 500, 550, 799, 800, 2_000, 2_500):
                alerter.observe(s)
            await alerter.close()
        return hook

    hook = run(go)
    # Sends run concurrently (a retrying one does not hold up the next), so arrival order may differ.
    by_pct = {b["alert"]["threshold_pct"]: b for b in hook.bodies}
    assert sorted(by_pct) == [50, 80, 100] and len(hook.bodies) == 3
    assert hook.attempts == 5  # two 500s retried
    assert by_pct[100]["alert"]["limit_usd"] == "0.000001000"
    assert by_pct[100]["text"].startswith(":warning: tiergate: daily budget of team t")


def test_webhook_down_never_blocks_and_gives_up() -> None:
    c = Cap("team", "t", "", "day", DAY, 1_000)

    async def go() -> int:
        async with Webhook(failures=100) as hook:
            alerter = Alerter(hook.url, base_delay_s=0.01, max_attempts=3)
            await alerter.start()
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            alerter.observe([CapState(c, 1_000, 0)])
            assert loop.time() - t0 < 0.01
            await alerter.close()
            return hook.attempts

    assert run(go) == 3 * 3  # three thresholds, three attempts each


def test_alert_dedupe_across_replicas_through_redis(redis_prefix: str) -> None:
    import redis.asyncio as aioredis

    c = Cap("team", "t", "", "day", DAY, 1_000)

    async def go() -> list[int]:
        async with Webhook() as hook:
            clients = [aioredis.Redis.from_url(REDIS_URL) for _ in range(2)]
            alerters = [Alerter(hook.url, redis=cl, prefix=redis_prefix) for cl in clients]
            for a in alerters:
                await a.start()
            for a in alerters:  # both replicas see the team cross 80 %
                a.observe([CapState(c, 850, 0)])
            for a in alerters:
                await a.close()
            for cl in clients:
                await cl.aclose()
            return sorted(b["alert"]["threshold_pct"] for b in hook.bodies)

    assert run(go) == [50, 80]
