"""Every day and month budget cap (team, key, tag) with the spend it counts, from the ledger: what
``GET /v1/spend/budgets`` serves and the dashboard draws as budget bars.

Spend is the ledger's (the bill's), not the budget store's counters: those also hold reservations of requests
still under way, and a bar must agree with the spend report to the nano-dollar. Experiments' lifetime caps are
``metering.finops.experiments`` (``/v1/spend/experiments``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any, Literal

from metering.budgets.policy import BudgetLimits, BudgetPolicy
from metering.ledger.base import Ledger
from metering.money import format_usd, usd_to_nanos

CapScope = Literal["team", "key", "tag"]
Period = Literal["day", "month"]
# report dimension(s) that name a cap of each scope
_GROUPING: dict[CapScope, tuple[str, ...]] = {"team": ("team", "day"), "key": ("team", "key", "day"),
                                              "tag": ("team", "tag", "day")}


@dataclass(frozen=True, slots=True)
class CapSpend:
    scope: CapScope
    team: str
    name: str  # the team's name, a key id, or "k=v"
    period: Period
    period_start: date
    limit_nanos: int
    spent_nanos: int

    def to_dict(self) -> dict[str, Any]:
        return {"scope": self.scope, "team": self.team, "name": self.name, "period": self.period,
                "period_start": self.period_start.isoformat(), "limit_usd": format_usd(self.limit_nanos),
                "spent_usd": format_usd(self.spent_nanos),
                "spent_share": round(self.spent_nanos / self.limit_nanos, 4) if self.limit_nanos else None}


def _scoped(policy: BudgetPolicy, team: str) -> list[tuple[CapScope, str, BudgetLimits]]:
    out: list[tuple[CapScope, str, BudgetLimits]] = [("team", team, policy.team)]
    out += [("key", key_id, limits) for key_id, limits in sorted(policy.keys.items())]
    out += [("tag", tag, limits) for tag, limits in sorted(policy.tags.items())]
    return out


def _name(scope: CapScope, keys: Mapping[str, str | None]) -> str:
    if scope == "team":
        return str(keys["team"])
    if scope == "key":
        return str(keys["key_id"])
    return f"{keys['tag_key']}={keys['tag_value']}"


async def cap_spend(ledger: Ledger, policies: Mapping[str, BudgetPolicy], today: date,
                    team: str | None = None) -> list[CapSpend]:
    """Each cap of ``policies`` (one team's, or every team's) for ``today`` and its month, in policy order."""
    month_start = today.replace(day=1)
    end = today + timedelta(days=1)
    capped = {(team_name, scope, name): limits for team_name, policy in sorted(policies.items())
              if team is None or team_name == team for scope, name, limits in _scoped(policy, team_name)
              if limits.daily_usd is not None or limits.monthly_usd is not None}
    spent: dict[tuple[str, CapScope, str, str], int] = {}  # (team, scope, name, period) -> nanos
    for scope, group_by in _GROUPING.items():
        if not any(s == scope for _, s, _ in capped):
            continue
        report = await ledger.report(month_start, end, team=team, group_by=group_by)
        for row in report.rows:
            if scope == "tag" and row.keys["tag_value"] is None:
                continue  # the untagged rows: no cap counts them
            at = (str(row.keys["team"]), scope, _name(scope, row.keys))
            cost = row.totals.cost_nanos
            spent[(*at, "month")] = spent.get((*at, "month"), 0) + cost
            if str(row.keys["day"])[:10] == today.isoformat():
                spent[(*at, "day")] = spent.get((*at, "day"), 0) + cost
    out = []
    for (team_name, scope, name), limits in capped.items():
        periods: tuple[tuple[Period, date, Decimal | None], ...] = (("day", today, limits.daily_usd),
                                                                   ("month", month_start, limits.monthly_usd))
        for period, start, limit in periods:
            if limit is not None:
                out.append(CapSpend(scope, team_name, name, period, start, usd_to_nanos(limit),
                                    spent.get((team_name, scope, name, period), 0)))
    return out
