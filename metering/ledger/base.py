"""The ledger interface: where every billed record lives (Redis never holds the only copy).

Two implementations share one behaviour (``GroupCommitLedger``): SQLite for a single host, PostgreSQL for several
proxy hosts sharing one bill.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from metering.feedback import Feedback, ValueReport
from metering.ledger.alert_log import AlertEvent, AlertQuery
from metering.ledger.audit_reads import UsageAuditRows
from metering.ledger.insights import Dialect, HourSpend, Order, OutputPercentiles, RequestCost, RequestRow
from metering.ledger.report import Report
from metering.money import format_usd
from metering.outcomes import Outcome
from metering.record import UsageRecord
from metering.routing_models import RoutingModel


@dataclass(frozen=True, slots=True)
class TeamSpend:
    team: str
    day_nanos: int
    month_nanos: int

    def to_dict(self) -> dict[str, str]:
        return {"team": self.team, "day_usd": format_usd(self.day_nanos), "month_usd": format_usd(self.month_nanos)}


def month_bounds(day: date) -> tuple[date, date]:
    """[first day of ``day``'s month, first day of the next month)."""
    start = day.replace(day=1)
    end = date(start.year + (start.month == 12), start.month % 12 + 1, 1)
    return start, end


class Ledger(abc.ABC):
    """Writes, and every read anyone needs as a named method: readers (reports, the dashboard, the audit, FinOps)
    never write SQL against the ledger's tables; the SQL and its dialect stay inside ``metering.ledger``."""

    dialect: Dialect  # which database holds the tables (for messages and metrics; readers need not branch on it)

    @abc.abstractmethod
    async def start(self) -> None:
        """Create the schema if needed and replay records left by a process that died; then accept writes. Waits a
        bounded time for the replay: the database being down must not keep a proxy from serving."""

    @abc.abstractmethod
    async def write(self, record: UsageRecord) -> None:
        """Return once ``record`` survives ``kill -9`` of this process; the database commit may follow later."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Wait until every record written so far is committed to the database (reports see it)."""

    @abc.abstractmethod
    async def report(self, start: date, end: date, team: str | None = None,
                     group_by: Sequence[str] = ("team",)) -> Report:
        """Aggregates over UTC days ``[start, end)`` from the rollups. ValueError on a bad ``group_by``."""

    @abc.abstractmethod
    def records(self, start: datetime, end: datetime, team: str | None = None) -> AsyncIterator[UsageRecord]:
        """Every record that started in ``[start, end)`` (of ``team``, or of every team), oldest first. Read in
        pages, so a week of traffic never sits in memory at once (what-if plans re-price each record)."""

    @abc.abstractmethod
    async def output_percentiles(self, start: date, end: date, team: str | None = None) -> list[OutputPercentiles]:
        """P50/P95 completion tokens per (team, model) of the successful requests of UTC days ``[start, end)``:
        ``metering.percentile``'s nearest rank, computed by the database."""

    @abc.abstractmethod
    async def request_costs(self, since: datetime, limit: int, team: str | None = None,
                            order: Order = "cost") -> list[RequestCost]:
        """Single requests started at or after ``since``: the most expensive first (``cost``) or the latest."""

    @abc.abstractmethod
    async def request_rows(self, start: datetime, end: datetime, team: str | None = None) -> list[RequestRow]:
        """The fields of each record that started in ``[start, end)`` that the hourly anomaly scan reads, oldest
        first (a narrow read: ``records`` builds whole records)."""

    @abc.abstractmethod
    async def hourly_spend(self, day: date, team: str | None = None) -> list[HourSpend]:
        """Spend per UTC hour of ``day`` (all 24, empty ones included), from the records that started in each."""

    @abc.abstractmethod
    async def usage_audit(self, start: datetime, end: datetime,
                          simple_below: Mapping[str, float | None]) -> UsageAuditRows:
        """The grouped rows ``tiergate audit`` prices (``metering.ledger.audit_reads``) for records that started in
        ``[start, end)``; ``simple_below`` names the teams whose frontier share on simple requests is asked."""

    @abc.abstractmethod
    async def add_alerts(self, events: Sequence[AlertEvent]) -> list[bool]:
        """Store fired thresholds and refusals, committed when this returns. Per event: False when the database
        already holds it (its id, or a threshold's scope, period and threshold), which is how a threshold alert
        fires once however many processes see the crossing."""

    @abc.abstractmethod
    async def alerts(self, query: AlertQuery) -> list[AlertEvent]:
        """Stored alerts matching ``query``, newest first."""

    @abc.abstractmethod
    async def add_routing_model(self, team: str, model: bytes, model_id: str, metrics: Mapping[str, Any],
                                parent_version: int | None, reason: str) -> RoutingModel:
        """Register a team's model as a candidate under its next version (``routing_models`` table)."""

    @abc.abstractmethod
    async def routing_models(self, team: str) -> list[RoutingModel]:
        """A team's registered models, newest version first (without their bytes)."""

    @abc.abstractmethod
    async def routing_model_bytes(self, team: str, version: int) -> bytes | None:
        """The ONNX bytes of one version, None if there is no such version."""

    @abc.abstractmethod
    async def activate_routing_model(self, team: str, version: int | None, reason: str | None = None) -> bool:
        """Make ``version`` the team's one active model, retiring the one before (None: the default prior serves),
        in one transaction; False when ``version`` does not exist (nothing changed then)."""

    @abc.abstractmethod
    async def set_routing_model_reason(self, team: str, version: int, reason: str) -> None:
        """Record why a version has its status (the gate's verdict)."""

    @abc.abstractmethod
    async def active_routing_models(self) -> dict[str, tuple[int, str]]:
        """team -> (active version, model id): what every worker polls, one small query."""

    @abc.abstractmethod
    async def claim_retrain(self, team: str, slot: int) -> bool:
        """Claim the team's retraining slot (``retrain_claims`` table): True for the one process whose claim is
        stored, False for every other (committed when this returns)."""

    @abc.abstractmethod
    async def add_outcome(self, outcome: Outcome) -> None:
        """Store one judged request's outcome (the ``outcomes`` table), committed when this returns."""

    @abc.abstractmethod
    async def outcomes(self, since: datetime, team: str | None = None) -> list[Outcome]:
        """Stored outcomes created at or after ``since`` (of ``team``, or every team), oldest first."""

    @abc.abstractmethod
    async def add_feedback(self, feedback: Feedback) -> None:
        """Store one feedback row (the ``feedback`` table), committed when this returns."""

    @abc.abstractmethod
    async def answered(self, request_id: str | None = None,
                       response_id: str | None = None) -> list[tuple[str, str, str | None]]:
        """(team, request id, answer id) of the committed records of answered requests (``metering.feedback``)
        with this request id, or this answer id."""

    @abc.abstractmethod
    async def feedback(self, since: datetime, team: str | None = None) -> list[Feedback]:
        """Each request's latest feedback (of ``team``, or every team) given at or after ``since``, oldest first."""

    @abc.abstractmethod
    async def value(self, start: date, end: date, team: str | None = None,
                    group_by: Sequence[str] = ("team",)) -> ValueReport:
        """Requests, feedback, accepted outputs and cost per accepted output over UTC days ``[start, end)``
        (``metering.feedback``). ValueError on a bad ``group_by``."""

    @abc.abstractmethod
    async def teams(self) -> list[str]:
        """Every team with a record in the ledger, sorted (to name the known ones when asked about another)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Commit what is pending, waiting a bounded time, and release resources; anything not committed stays in
        the spool for replay."""

    async def spend_by_team(self, day: date, team: str | None = None) -> list[TeamSpend]:
        """Each team's committed spend on ``day`` and in its month up to the end of the month (for /v1/spend/teams)."""
        start, end = month_bounds(day)
        report = await self.report(start, end, team=team, group_by=("team", "day"))
        totals: dict[str, list[int]] = {}
        today = day.isoformat()
        for row in report.rows:
            acc = totals.setdefault(row.key("team"), [0, 0])
            acc[1] += row.totals.cost_nanos
            if row.keys["day"] == today:
                acc[0] += row.totals.cost_nanos
        return [TeamSpend(t, d, m) for t, (d, m) in sorted(totals.items())]
