"""``Spend``: what the finance and ops endpoints ask of the ledger, each answer including every request that
completed before the question (the runtime's ``spend``; the HTTP handlers call it and know no ledger).

Why one service: each read first waits for the records written so far to be committed ("flush then read"), with
one timeout, and a ledger that does not commit in time is the taxonomy's ``ledger_unavailable`` (a 503 at the
edge), never a hung request. The reads themselves are the ledger's named reads and the FinOps modules over them;
this module adds no rule of its own and knows no HTTP (parsing dates and checking who may see a team stay at the
edge, ``proxy.query_params``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from metering.budgets.policy import BudgetPolicy
from metering.evidence import Evidence, team_evidence
from metering.feedback import Feedback, ValueReport
from metering.finops.caps import CapSpend, cap_spend
from metering.finops.experiments import (
    ExperimentReport,
    ExperimentRow,
    experiment_report,
    experiment_rows,
    wants_experiments,
)
from metering.finops.manifest import Manifest
from metering.finops.outlook import Outlook, outlook
from metering.finops.scopes import Dimension
from metering.ledger.alert_log import AlertEvent, AlertQuery
from metering.ledger.base import Ledger, TeamSpend
from metering.ledger.insights import HourSpend, Order, OutputPercentiles, RequestCost
from metering.ledger.report import Report
from metering.service import Meter
from pipeline.errors import TiergateError
from pipeline.plan_report import Plan, plan
from router.policy import Policy

FLUSH_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class SpendReport:
    """The spend report; grouped by team and model (in either order), each group's P50/P95 output tokens too."""

    report: Report | ExperimentReport
    percentiles: Mapping[tuple[str, str], OutputPercentiles] | None


class Spend:
    def __init__(self, meter: Meter, flush_timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        self._meter = meter
        self._ledger: Ledger = meter.ledger
        self.flush_timeout_s = flush_timeout_s

    async def _settled(self, flush: Callable[[], Awaitable[None]], what: str) -> None:
        try:
            await asyncio.wait_for(flush(), self.flush_timeout_s)
        except TimeoutError:
            raise TiergateError("ledger_unavailable", f"{what} within {self.flush_timeout_s:.0f}s; see the proxy "
                                "log") from None

    async def flushed(self) -> Ledger:
        """The ledger once every record written so far is committed (queryable); ``ledger_unavailable`` when a
        stuck database does not commit within the timeout."""
        await self._settled(self._ledger.flush, "the ledger did not commit")
        return self._ledger

    # -- the spend endpoints ------------------------------------------------------------------------------------
    async def report(self, start: date, end: date, team: str | None, group_by: Sequence[str]) -> SpendReport:
        """ValueError on a bad ``group_by``. ``experiment`` among it: the experiments' view of the tag rows."""
        ledger = await self.flushed()
        result: Report | ExperimentReport
        if wants_experiments(group_by):
            result = await experiment_report(ledger, start, end, team, group_by)
        else:
            result = await ledger.report(start, end, team=team, group_by=group_by)
        percentiles = None
        if sorted(group_by) == ["model", "team"]:  # so ops can set max_tokens caps from what is really used
            percentiles = {(p.team, p.model): p for p in await ledger.output_percentiles(start, end, team)}
        return SpendReport(result, percentiles)

    async def teams_status(self, policies: Mapping[str, BudgetPolicy]) -> list[dict[str, Any]]:
        await self.flushed()
        return await self._meter.teams_status(policies)

    async def output_percentiles(self, start: date, end: date, team: str | None) -> list[OutputPercentiles]:
        return await (await self.flushed()).output_percentiles(start, end, team)

    async def request_costs(self, since: datetime, limit: int, team: str | None, order: Order) -> list[RequestCost]:
        return await (await self.flushed()).request_costs(since, limit, team, order)

    async def hourly_spend(self, day: date, team: str | None) -> list[HourSpend]:
        return await (await self.flushed()).hourly_spend(day, team)

    async def caps(self, policies: Mapping[str, BudgetPolicy], today: date, team: str | None) -> list[CapSpend]:
        return await cap_spend(await self.flushed(), policies, today, team)

    async def forecast(self, dimension: Dimension, policies: Mapping[str, BudgetPolicy], team: str | None,
                       as_of: date | None) -> Outlook:
        return await outlook(await self.flushed(), dimension, policies, team=team, as_of=as_of)

    async def experiments(self, manifests: Sequence[Manifest], now: datetime) -> list[ExperimentRow]:
        return await experiment_rows(await self.flushed(), manifests, now)

    async def evidence(self, team: str, start: date, end: date, ceiling: str | None) -> Evidence:
        return await team_evidence(await self.flushed(), team, start, end, ceiling)

    async def value(self, start: date, end: date, team: str | None, group_by: Sequence[str]) -> ValueReport:
        """ValueError on a bad ``group_by``."""
        return await (await self.flushed()).value(start, end, team=team, group_by=group_by)

    async def plan(self, candidate: Policy, since: datetime, until: datetime, team: str | None,
                   policy_sha256: str) -> Plan:
        return await plan(await self.flushed(), candidate, since, until, team=team, policy_sha256=policy_sha256)

    async def known_teams(self) -> list[str]:
        """Every team with a record (this worker's last ones too): a team that left the policy is known by them."""
        return await (await self.flushed()).teams()

    async def alerts(self, query: AlertQuery) -> list[AlertEvent]:
        """Stored alerts; what this worker's alerter saw so far is stored first."""
        alerter = self._meter.alerter
        if alerter is not None:
            await self._settled(alerter.flush, "alerts were not stored")
        return await self._ledger.alerts(query)

    async def committed_by_team(self, day: date) -> list[TeamSpend]:
        """Each team's committed spend of ``day`` and its month, without waiting for a commit (``/metrics`` is
        scraped often and must not queue behind the writer)."""
        return await self._ledger.spend_by_team(day)

    # -- feedback on answers ------------------------------------------------------------------------------------
    async def answered(self, team: str, request_id: str | None,
                       response_id: str | None) -> tuple[str, str | None] | None:
        """(request id, answer id) of ``team``'s answered request with this id, None when there is none (unknown,
        or another team's). Looked up before flushing: a flush (a commit) is paid only for an answer given moments
        ago."""
        found = [row for row in await self._ledger.answered(request_id, response_id) if row[0] == team]
        if not found:
            found = [row for row in await (await self.flushed()).answered(request_id, response_id) if row[0] == team]
        return (found[0][1], found[0][2]) if found else None

    async def add_feedback(self, feedback: Feedback) -> None:
        await self._ledger.add_feedback(feedback)
