"""Daily spend per scope, read from the ledger's rollups through ``Ledger.report`` (no new SQL, exact integers).

A forecast needs one number per UTC day per team, key, tag or model; the daily and tag rollups already hold them,
so this is a ``report(group_by=(..., "day"))`` reshaped into ``{scope: {day: nanos}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

from metering.finops.scopes import Dimension, Scope
from metering.ledger.base import Ledger
from metering.ledger.report import ReportRow

DailySeries = Mapping[date, int]

_GROUP_BY: dict[Dimension, tuple[str, ...]] = {
    "team": ("team", "day"),
    "key": ("team", "key", "day"),
    "tag": ("team", "tag", "day"),
    "model": ("model", "day"),
}


def _scope(dimension: Dimension, row: ReportRow) -> Scope:
    if dimension == "team":
        return Scope.of_team(row.key("team"))
    if dimension == "key":
        return Scope("key", row.key("team"), row.key("key_id"))
    if dimension == "tag":
        return Scope("tag", row.key("team"), f"{row.key('tag_key')}={row.key('tag_value')}")
    return Scope("model", "", row.key("model"))


async def daily_spend(ledger: Ledger, dimension: Dimension, start: date, end: date,
                      team: str | None = None) -> dict[Scope, dict[date, int]]:
    """Cost in nano-dollars per scope and UTC day over ``[start, end)``; days without spend are absent."""
    report = await ledger.report(start, end, team=team, group_by=_GROUP_BY[dimension])
    out: dict[Scope, dict[date, int]] = {}
    for row in report.rows:
        if dimension == "tag" and row.keys["tag_value"] is None:
            continue  # the report's untagged row: records without that tag, no tag's series
        day = date.fromisoformat(row.key("day")[:10])  # PostgreSQL DATE and SQLite text both start YYYY-MM-DD
        series = out.setdefault(_scope(dimension, row), {})
        series[day] = series.get(day, 0) + row.totals.cost_nanos
    return out


async def total_daily(ledger: Ledger, start: date, end: date, team: str | None = None) -> dict[date, int]:
    """Cost per UTC day over ``[start, end)`` of every record (or one team's): the total a forecast sums to."""
    report = await ledger.report(start, end, team=team, group_by=("day",))
    return {date.fromisoformat(r.key("day")[:10]): r.totals.cost_nanos for r in report.rows}


async def known_teams(ledger: Ledger, start: date, end: date) -> list[str]:
    """Teams with records in ``[start, end)``, for naming the known ones when asked about an unknown team."""
    report = await ledger.report(start, end, group_by=("team",))
    return [row.key("team") for row in report.rows]


async def day_model_totals(ledger: Ledger, start: date, end: date) -> dict[tuple[date, str], tuple[int, int, int, int]]:
    """(cost nanos, prompt tokens, completion tokens, requests) per (UTC day, model) over ``[start, end)``, for
    comparing with provider exports. Records with no model (no provider answered) are left out."""
    report = await ledger.report(start, end, group_by=("day", "model"))
    return {(date.fromisoformat(r.key("day")[:10]), model):
            (r.totals.cost_nanos, r.totals.prompt_tokens, r.totals.completion_tokens, r.totals.requests)
            for r in report.rows if (model := r.keys["model"])}
