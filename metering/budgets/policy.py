"""A team's budget settings as the meter needs them; the proxy maps its YAML policy onto these."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Literal, Mapping

from metering.budgets.base import Cap, Kind
from metering.money import usd_to_nanos


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    daily_usd: Decimal | None = None
    monthly_usd: Decimal | None = None


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """Caps for one team. ``keys`` maps key ids, ``tags`` maps ``"key=value"`` (an experiment) to their limits.

    ``on_exceeded`` tells the proxy what to do with ``BudgetExceeded`` (429, or serve the cheapest tier and reserve
    again with ``enforce=False``); ``redis_failure`` chooses 503 (closed) or local accounting (open) in an outage.
    It has no default here: the one default is the YAML policy's (``router.config.Budgets``), which the proxy
    always passes, so the two can no longer disagree.
    """

    team: BudgetLimits = field(default_factory=BudgetLimits)
    keys: Mapping[str, BudgetLimits] = field(default_factory=dict)
    tags: Mapping[str, BudgetLimits] = field(default_factory=dict)
    on_exceeded: Literal["reject", "downgrade"] = "reject"
    redis_failure: Literal["closed", "open"] = field(kw_only=True)


def _caps(kind: Kind, team: str, name: str, limits: BudgetLimits, day: date) -> list[Cap]:
    out = []
    if limits.daily_usd is not None:
        out.append(Cap(kind, team, name, "day", day, usd_to_nanos(limits.daily_usd)))
    if limits.monthly_usd is not None:
        out.append(Cap(kind, team, name, "month", day.replace(day=1), usd_to_nanos(limits.monthly_usd)))
    return out


def caps_for(policy: BudgetPolicy, team: str, key_id: str, tags: Mapping[str, str], day: date) -> tuple[Cap, ...]:
    """Every cap a request of ``team``/``key_id`` with ``tags`` counts against on UTC ``day``."""
    caps = _caps("team", team, "", policy.team, day)
    if key_id in policy.keys:
        caps += _caps("key", team, key_id, policy.keys[key_id], day)
    for k, v in sorted(tags.items()):
        limits = policy.tags.get(f"{k}={v}")
        if limits is not None:
            caps += _caps("tag", team, f"{k}={v}", limits, day)
    return tuple(caps)
