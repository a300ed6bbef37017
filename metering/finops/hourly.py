"""Per-request rows of a time range, read from the ledger (``Ledger.request_rows``).

The rollups are per day, but anomalies are per hour and need percentiles and the costliest request ids, so the
scan reads the few columns it needs of the records that started in ``[start, end)`` (the ``started_at`` index
bounds the read). Also the hourly profile of spend, which tells a forecast how much of a day is usually
spent by a given hour.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta

from metering.ledger.base import Ledger
from metering.ledger.insights import RequestRow

__all__ = ["RequestRow", "elapsed_share", "hourly_profile", "request_rows"]


async def request_rows(ledger: Ledger, start: datetime, end: datetime, team: str | None = None) -> list[RequestRow]:
    """Records that started in ``[start, end)``, oldest first (``Ledger.request_rows``)."""
    return await ledger.request_rows(start, end, team)


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
