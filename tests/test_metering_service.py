"""Meter facade: settle writes the record and releases the hold (failures and cancellations too) and feeds the
alerter (whose own tests are tests/test_alerts.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from metering.alerts import Alerter
from metering.budgets.base import BudgetExceeded
from metering.budgets.memory_store import MemoryBudgetStore
from metering.budgets.policy import BudgetLimits, BudgetPolicy
from metering.ledger.sqlite import SqliteLedger
from metering.service import Meter
from tests.metering_fixtures import make_record
from tests.webhook_receiver import Webhook

NOW = datetime.now(UTC)
DAY = NOW.date()


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(fn())


def test_settle_writes_record_releases_hold_and_alerts(tmp_path: Path) -> None:
    # 10 000 nano-dollars
    policy = BudgetPolicy(team=BudgetLimits(daily_usd=Decimal("0.000010")), redis_failure="closed")

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
            # 50 % from settled spend (6 000 of 10 000), crossed by request "cut"; the refusal of "x" while 8 000
            # were held is a refusal, not a threshold (tests/test_alerts.py)
            assert [(b["alert"]["threshold_pct"], b["alert"]["spent_usd"], b["alert"]["request_id"])
                    for b in hook.bodies] == [(50, "0.000006000", "cut")]

    run(go)
