"""One anomaly scan of the ledger: read the window and its baseline, detect, keep the episodes that started in it.

An episode already under way when the window opens belongs to an earlier scan; the detector starts a day early so
it knows. Scanning every N hours with ``since=N hours`` therefore reports each episode exactly once.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from metering.finops.anomaly import Episode, Rules, detect
from metering.finops.hourly import request_rows
from metering.ledger.base import Ledger

_LOOKBACK = timedelta(days=1)


async def scan(ledger: Ledger, since: datetime, until: datetime, frontier_tiers: frozenset[str],
               team: str | None = None, rules: Rules = Rules()) -> list[Episode]:
    """Episodes that started in the whole hours of ``[since, until)``, oldest first. Both ends are cut to the
    hour: the hour under way is incomplete (a scan at 10:30 judges 09:00-10:00, the next one 10:00-11:00)."""
    since, until = (t.replace(minute=0, second=0, microsecond=0) for t in (since, until))
    first = since - _LOOKBACK
    rows = await request_rows(ledger, first - timedelta(days=rules.baseline_days), until, team=team)
    return [e for e in detect(rows, first, until, frontier_tiers, rules) if e.started_at >= since]
