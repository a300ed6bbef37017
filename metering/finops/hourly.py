"""Per-request rows of a time range, read from the ledger's records (``Ledger.records``).

The rollups are per day, but anomalies are per hour and need percentiles and the costliest request ids, so the
scan keeps the few fields it needs of the records that started in ``[start, end)`` (the ``started_at`` index
bounds the read, in pages). Also the hourly profile of spend, which tells a forecast how much of a day is usually
spent by a given hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Mapping, Sequence

from metering.ledger.base import Ledger
from metering.record import UsageRecord


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


def _row(record: UsageRecord) -> RequestRow:
    return RequestRow(record.started_at, record.request_id, record.team, record.key_id, record.tags,
                      record.model or "", record.tier or "", record.completion_tokens, record.cost_nanos, record.status)


async def request_rows(ledger: Ledger, start: datetime, end: datetime, team: str | None = None) -> list[RequestRow]:
    """Records that started in ``[start, end)``, oldest first (``Ledger.records``, read in pages)."""
    return [_row(record) async for record in ledger.records(start, end, team)]


async def hourly_profile(ledger: Ledger, end: date, days: int = 7, team: str | None = None) -> list[float] | None:
    """Cumulative share of a day's spend done by the end of each UTC hour, over the ``days`` days before ``end``
    (24 values ending at 1.0); None when those days spent nothing."""
    per_hour = [0] * 24
    for back in range(1, days + 1):
        for h, spend in enumerate(await ledger.hourly_spend(end - timedelta(days=back), team=team)):
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
