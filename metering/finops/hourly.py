"""Per-request rows of a time range, read from the ledger's ``records`` table through ``Ledger.query``.

The rollups are per day, but anomalies are per hour and need percentiles and the costliest request ids, so the
scan reads the few columns it needs of the records that started in ``[start, end)`` (the ``started_at`` index
bounds the read). Also the hourly profile of spend, which tells a forecast how much of a day is usually spent by
a given hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Mapping, Sequence

import orjson

from metering.ledger.base import Ledger
from metering.ledger.insights import Insights


@dataclass(frozen=True, slots=True)
class RequestRow:
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


_COLUMNS = "started_at, request_id, team, key_id, tags, model, tier, completion_tokens, cost_nanos, status"


def _utc(value: Any) -> datetime:
    # SQLite stores ISO text with its offset; PostgreSQL returns an aware datetime in the session's zone.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(timezone.utc)


def _row(values: Sequence[Any]) -> RequestRow:
    started, request_id, team, key_id, tags, model, tier, completion, cost, status = values
    if isinstance(tags, (str, bytes)):
        tags = orjson.loads(tags)
    return RequestRow(_utc(started), request_id, team, key_id, tags or {}, model or "", tier or "",
                      int(completion or 0), int(cost or 0), int(status or 0))


async def request_rows(ledger: Ledger, start: datetime, end: datetime, team: str | None = None) -> list[RequestRow]:
    """Records that started in ``[start, end)``, oldest first."""
    sqlite = getattr(ledger, "placeholder", "?") == "?"
    params: list[Any] = [start.isoformat() if sqlite else start, end.isoformat() if sqlite else end]
    where = "started_at >= ? AND started_at < ?"
    if team is not None:
        where += " AND team = ?"
        params.append(team)
    rows = await ledger.query(f"SELECT {_COLUMNS} FROM records WHERE {where} ORDER BY started_at", params)  # type: ignore[attr-defined]
    return [_row(r) for r in rows]


async def hourly_profile(ledger: Ledger, end: date, days: int = 7, team: str | None = None) -> list[float] | None:
    """Cumulative share of a day's spend done by the end of each UTC hour, over the ``days`` days before ``end``
    (24 values ending at 1.0); None when those days spent nothing."""
    insights = Insights(ledger)
    per_hour = [0] * 24
    for back in range(1, days + 1):
        for h, spend in enumerate(await insights.hourly(end - timedelta(days=back), team=team)):
            per_hour[h] += spend.cost_nanos
    total = sum(per_hour)
    if total <= 0:
        return None
    out, running = [], 0
    for value in per_hour:
        running += value
        out.append(running / total)
    return out


def elapsed_share(profile: Sequence[float] | None, now: datetime) -> float:
    """The share of a usual day's spend done by ``now``: the profile up to the last full hour plus the current
    hour pro rata (uniform over the day without a profile)."""
    day_fraction = (now.hour * 3600 + now.minute * 60 + now.second) / 86400
    if profile is None:
        return day_fraction
    before = profile[now.hour - 1] if now.hour else 0.0
    return before + (profile[now.hour] - before) * (now.minute * 60 + now.second) / 3600
