"""The forecast report: every team, key, tag or model's month-end projection and budget run-out, from the ledger.

This is what ``tiergate forecast`` prints and what ``GET /v1/spend/forecast?group_by=`` should serve: reads go
through ``daily`` (rollups) and ``hourly`` (today's hourly profile), the maths through ``forecast``.

Two modes. ``as_of=None`` forecasts *now*: the days before today are history and today is under way (its spend so
far, plus what a usual day still spends after this hour). ``as_of=D`` forecasts as it would have been at 00:00
UTC of day D: only the days before D count, whatever the ledger holds since (a backtest, or an audit of a past
forecast).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from metering.budgets.policy import BudgetLimits, BudgetPolicy
from metering.finops.daily import daily_spend, total_daily
from metering.finops.forecast import (
    BACKTEST_ORIGINS,
    HISTORY_DAYS,
    BudgetOutlook,
    MonthForecast,
    Partial,
    budget_outlook,
    forecast_month,
    usd,
)
from metering.finops.hourly import elapsed_share, hourly_profile
from metering.finops.scopes import Dimension, Scope
from metering.ledger.base import Ledger
from metering.money import format_usd, usd_to_nanos

# Enough days for the fit's eight weeks, and for the replayed past forecasts that size the interval.
_READ_DAYS = HISTORY_DAYS + BACKTEST_ORIGINS + 31


@dataclass(frozen=True, slots=True)
class OutlookRow:
    scope: Scope | None  # None: the total of everything in view
    forecast: MonthForecast
    budgets: tuple[BudgetOutlook, ...]

    def to_dict(self) -> dict[str, Any]:
        f = self.forecast
        return {
            **(self.scope.labels() if self.scope else {}),
            "spent_usd": format_usd(f.spent_nanos),
            "projected_usd": usd(f.projected), "low_usd": usd(f.low), "high_usd": usd(f.high),
            "burn_rate_usd_per_day": usd(f.burn_rate),
            "budgets": [b.to_dict() for b in self.budgets],
        }


@dataclass(frozen=True, slots=True)
class Outlook:
    dimension: Dimension
    team: str | None
    as_of: date
    now: datetime | None  # set when today is under way
    rows: tuple[OutlookRow, ...]  # largest projection first
    total: OutlookRow

    def to_dict(self) -> dict[str, Any]:
        f = self.total.forecast
        return {
            "group_by": self.dimension, "team": self.team, "as_of": self.as_of.isoformat(),
            "now": self.now.isoformat() if self.now else None,
            "month_start": f.month_start.isoformat(), "month_end": f.month_end.isoformat(),
            "interval": "80%", "rows": [r.to_dict() for r in self.rows], "total": self.total.to_dict(),
        }

    def render_text(self) -> str:
        f = self.total.forecast
        when = f"now ({self.now:%Y-%m-%d %H:%M} UTC)" if self.now else f"00:00 UTC of {self.as_of}"
        lines = [f"Month-end forecast for {f.month_start:%Y-%m} [{f.month_start}, {f.month_end}) as of {when}, "
                 f"by {self.dimension}{f' (team {self.team})' if self.team else ''}; 80% interval", ""]
        width = max([len(_name(r.scope)) for r in self.rows] + [5])
        lines.append(f"{'':{width}}  {'spent':>12}  {'projected':>12}  {'interval':>25}  budget")
        for row in (*self.rows, self.total):
            d = row.to_dict()
            budget = "; ".join(_budget_text(b) for b in row.budgets) or "-"
            lines.append(f"{_name(row.scope):{width}}  {usd(row.forecast.spent_nanos):>12}  {d['projected_usd']:>12}  "
                         f"{d['low_usd'] + ' - ' + d['high_usd']:>25}  {budget}")
        return "\n".join(lines) + "\n"


def _name(scope: Scope | None) -> str:
    if scope is None:
        return "total"
    return scope.name if scope.dimension in ("team", "model") else f"{scope.team}/{scope.name}"


def _budget_text(b: BudgetOutlook) -> str:
    cap = f"{'monthly' if b.period == 'month' else 'daily'} ${usd(b.limit_nanos)}"
    return f"{cap}: runs out {b.runs_out_on}" if b.runs_out_on else f"{cap}: holds"


def limits_for(budgets: Mapping[str, BudgetPolicy], scope: Scope) -> BudgetLimits | None:
    """The caps that bind ``scope`` (models have none)."""
    policy = budgets.get(scope.team)
    if policy is None or scope.dimension == "model":
        return None
    if scope.dimension == "team":
        return policy.team
    return (policy.keys if scope.dimension == "key" else policy.tags).get(scope.name)


def _row(scope: Scope | None, history: Mapping[date, int], as_of: date, partial: Partial | None,
         limits: BudgetLimits | None) -> OutlookRow:
    f = forecast_month(history, as_of, partial)
    monthly = usd_to_nanos(limits.monthly_usd) if limits and limits.monthly_usd is not None else None
    daily = usd_to_nanos(limits.daily_usd) if limits and limits.daily_usd is not None else None
    past = {d: v for d, v in history.items() if d < as_of}
    return OutlookRow(scope, f, tuple(budget_outlook(f, past, monthly, daily)))


async def outlook(ledger: Ledger, dimension: Dimension, budgets: Mapping[str, BudgetPolicy],
                  team: str | None = None, as_of: date | None = None, now: datetime | None = None) -> Outlook:
    """The forecast report. ``as_of=None`` means now (``now`` defaults to the clock; tests pass it)."""
    live = as_of is None
    now = (now or datetime.now(UTC)) if live else None
    day = now.date() if now is not None else as_of
    assert day is not None
    start, end = day - timedelta(days=_READ_DAYS), day + timedelta(days=1 if live else 0)
    series = await daily_spend(ledger, dimension, start, end, team=team)
    totals = await total_daily(ledger, start, end, team=team)
    share = elapsed_share(await hourly_profile(ledger, day, team=team), now) if now is not None else 0.0

    def split(history: Mapping[date, int]) -> tuple[dict[date, int], Partial | None]:
        past = {d: v for d, v in history.items() if d < day}
        return past, (Partial(history.get(day, 0), share) if live else None)

    rows = []
    for scope, history in series.items():
        past, partial = split(history)
        rows.append(_row(scope, past, day, partial, limits_for(budgets, scope)))
    rows.sort(key=lambda r: (-r.forecast.projected, r.scope))
    past, partial = split(totals)
    total_limits = budgets[team].team if team is not None and team in budgets else None
    return Outlook(dimension, team, day, now, tuple(rows), _row(None, past, day, partial, total_limits))
