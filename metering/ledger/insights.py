"""Read-only queries over the raw records that the rollups cannot answer, for the live dashboard.

The spend report reads rollups (sums per day, team, key, model, tier, purpose, tag). Percentiles, single requests
and hours are not in them, so these queries read the ``records`` table, always bounded by ``started_at``; the
first use adds an index on it (idempotent), so a dashboard refreshing every few seconds reads one time range
instead of scanning the whole ledger. The ledger runs them (its public reads); callers never see the SQL.

A record's billing day is the UTC date of ``started_at``, so hours of a day add up to that day of the report.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import orjson

from metering.ledger.report import midnight
from metering.money import format_usd
from metering.percentile import rank_sql

Order = Literal["cost", "recent"]
Dialect = Literal["sqlite", "postgresql"]


@dataclass(frozen=True, slots=True)
class OutputPercentiles:
    team: str
    model: str
    requests: int
    p50: int
    p95: int

    def to_dict(self) -> dict[str, Any]:
        return {"team": self.team, "model": self.model, "requests": self.requests,
                "p50_output_tokens": self.p50, "p95_output_tokens": self.p95}


@dataclass(frozen=True, slots=True)
class RequestCost:
    request_id: str
    started_at: str
    team: str
    key_id: str
    model: str
    tier: str
    purpose: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_nanos: int
    counterfactual_cost_nanos: int
    latency_ms: int
    status: int
    api: str
    response_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id, "started_at": self.started_at, "team": self.team, "key_id": self.key_id,
            "model": self.model, "tier": self.tier, "purpose": self.purpose, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "cached_tokens": self.cached_tokens,
            "cost_usd": format_usd(self.cost_nanos),
            "counterfactual_cost_usd": format_usd(self.counterfactual_cost_nanos),
            "latency_ms": self.latency_ms, "status": self.status, "api": self.api, "response_id": self.response_id,
        }


@dataclass(frozen=True, slots=True)
class RequestRow:
    """The few fields of one record that the hourly anomaly scan reads (``metering.finops.anomaly``)."""

    started_at: datetime
    request_id: str
    team: str
    key_id: str
    tags: Mapping[str, str]
    model: str
    tier: str
    completion_tokens: int
    cost_nanos: int
    status: int

    @property
    def hour(self) -> datetime:
        return self.started_at.replace(minute=0, second=0, microsecond=0)


_ROW_COLUMNS = "started_at, request_id, team, key_id, tags, model, tier, completion_tokens, cost_nanos, status"


def _utc(value: str | datetime) -> datetime:
    # SQLite stores ISO text with its offset; PostgreSQL returns an aware datetime in the session's zone.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC)


def _request_row(values: Sequence[Any]) -> RequestRow:
    started, request_id, team, key_id, tags, model, tier, completion, cost, status = values
    if isinstance(tags, (str, bytes)):
        tags = orjson.loads(tags)
    return RequestRow(_utc(started), request_id, team, key_id, tags or {}, model or "", tier or "",
                      int(completion or 0), int(cost or 0), int(status or 0))


@dataclass(frozen=True, slots=True)
class HourSpend:
    hour: datetime
    requests: int
    cost_nanos: int
    counterfactual_cost_nanos: int

    def to_dict(self) -> dict[str, Any]:
        return {"hour": self.hour.isoformat(), "requests": self.requests, "cost_usd": format_usd(self.cost_nanos),
                "counterfactual_cost_usd": format_usd(self.counterfactual_cost_nanos),
                "savings_usd": format_usd(self.counterfactual_cost_nanos - self.cost_nanos)}


Fetch = Callable[[str, Sequence[Any]], Awaitable[list[tuple[Any, ...]]]]


class RecordQueries:
    """The SQL of the raw-record reads, for one backend: the ledger runs it (``Ledger.output_percentiles``,
    ``request_costs``, ``hourly_spend``); nothing outside the ledger package sees SQL or a dialect."""

    def __init__(self, fetch: Fetch, ts_param: Callable[[datetime], Any], dialect: Dialect) -> None:
        """``fetch`` runs a read with ``?`` placeholders; ``ts_param`` is how the backend binds an instant."""
        self._fetch = fetch
        self._ts = ts_param
        self._dialect = dialect

    @property
    def _hour_sql(self) -> str:
        if self._dialect == "sqlite":  # ISO text: the hour is characters 12-13
            return "CAST(substr(started_at, 12, 2) AS INTEGER)"
        return "CAST(EXTRACT(HOUR FROM started_at AT TIME ZONE 'UTC') AS INTEGER)"

    @staticmethod
    def _team_filter(team: str | None, params: list[Any]) -> str:
        if team is None:
            return ""
        params.append(team)
        return " AND team = ?"

    # -- queries -------------------------------------------------------------------------------------------------
    async def output_percentiles(self, start: date, end: date, team: str | None = None) -> list[OutputPercentiles]:
        """P50/P95 of completion tokens per (team, model) over successful requests of UTC days ``[start, end)``,
        computed in SQL by ``metering.percentile``'s nearest rank (the same values its Python function gives)."""
        params: list[Any] = [self._ts(midnight(start)), self._ts(midnight(end))]
        where = "started_at >= ? AND started_at < ? AND status < 400" + self._team_filter(team, params)
        sql = (
            "WITH ranked AS (SELECT team, model, completion_tokens AS v, "
            "ROW_NUMBER() OVER (PARTITION BY team, model ORDER BY completion_tokens) AS rn, "
            f"COUNT(*) OVER (PARTITION BY team, model) AS n FROM records WHERE {where}) "
            f"SELECT team, model, MAX(n), MAX(CASE WHEN rn = {rank_sql(50, 'n')} THEN v END), "
            f"MAX(CASE WHEN rn = {rank_sql(95, 'n')} THEN v END) FROM ranked GROUP BY team, model ORDER BY team, model"
        )
        return [OutputPercentiles(t, m, int(n), int(p50), int(p95)) for t, m, n, p50, p95 in
                await self._fetch(sql, params)]

    async def request_costs(self, since: datetime, limit: int, team: str | None = None,
                            order: Order = "cost") -> list[RequestCost]:
        """Requests started at or after ``since``: the most expensive first (``cost``) or the latest (``recent``)."""
        params: list[Any] = [self._ts(since)]
        where = "started_at >= ?" + self._team_filter(team, params)
        order_sql = "cost_nanos DESC, started_at DESC" if order == "cost" else "started_at DESC"
        params.append(limit)
        sql = ("SELECT request_id, started_at, team, key_id, model, tier, purpose, prompt_tokens, completion_tokens, "
               "cached_tokens, cost_nanos, counterfactual_cost_nanos, latency_ms, status, api, response_id "
               f"FROM records WHERE {where} ORDER BY {order_sql} LIMIT ?")
        out = []
        for row in await self._fetch(sql, params):
            started = row[1] if isinstance(row[1], str) else row[1].astimezone(UTC).isoformat()
            out.append(RequestCost(row[0], started, *row[2:7], *(int(v or 0) for v in row[7:14]), *row[14:]))
        return out

    async def request_rows(self, start: datetime, end: datetime, team: str | None = None) -> list[RequestRow]:
        """Records that started in ``[start, end)``, oldest first: ten columns in one query (``Ledger.records``
        builds whole records in pages, about 4x slower over 100 000 rows, and the scan reads weeks of them)."""
        params: list[Any] = [self._ts(start), self._ts(end)]
        where = "started_at >= ? AND started_at < ?" + self._team_filter(team, params)
        sql = f"SELECT {_ROW_COLUMNS} FROM records WHERE {where} ORDER BY started_at"
        return [_request_row(r) for r in await self._fetch(sql, params)]

    async def hourly_spend(self, day: date, team: str | None = None) -> list[HourSpend]:
        """The 24 UTC hours of ``day`` (empty hours included), from the records that started in each."""
        start = midnight(day)
        params: list[Any] = [self._ts(start), self._ts(start + timedelta(days=1))]
        where = "started_at >= ? AND started_at < ?" + self._team_filter(team, params)
        sql = (f"SELECT {self._hour_sql} AS h, COUNT(*), SUM(cost_nanos), SUM(counterfactual_cost_nanos) "
               f"FROM records WHERE {where} GROUP BY h")
        found = {int(h): (int(n), int(c or 0), int(cf or 0)) for h, n, c, cf in await self._fetch(sql, params)}
        return [HourSpend(start + timedelta(hours=h), *found.get(h, (0, 0, 0))) for h in range(24)]
