"""A team's budget settings as the meter needs them; the proxy maps its YAML policy onto these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Literal

from metering.budgets.base import Cap, Kind
from metering.money import usd_to_nanos


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    daily_usd: Decimal | None = None
    monthly_usd: Decimal | None = None


# A production experiment that never expires still needs an end for its counter (Redis EXPIREAT, the seed's range).
NO_EXPIRY_END = date(9000, 1, 1)


@dataclass(frozen=True, slots=True)
class ExperimentBudget:
    """An experiment's one cap over its life: spend attributed to it from ``starts_at`` on, whatever the day or
    month. The counter spans whole UTC days (the ledger's rollups are daily): from ``starts_at``'s day to the day
    after ``expires_at``; a request outside ``[starts_at, expires_at)`` is refused before it reaches a budget, so
    nothing outside the window is ever attributed."""

    name: str
    team: str
    limit_nanos: int
    starts_at: datetime | None  # None: counted since the ledger began
    expires_at: datetime | None  # None: a production experiment without an expiry
    cap: Cap = field(init=False, compare=False, repr=False)  # built once: the request path only looks it up

    def __post_init__(self) -> None:
        start = self.starts_at.date() if self.starts_at is not None else date(2000, 1, 1)
        until = self.expires_at.date() + timedelta(days=1) if self.expires_at is not None else NO_EXPIRY_END
        object.__setattr__(self, "cap", Cap("experiment", self.team, self.name, "life", start, self.limit_nanos,
                                            until=until))


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
    # experiment name -> its cap; a request counts against the one its ``experiment`` tag names (set by attribution)
    experiments: Mapping[str, ExperimentBudget] = field(default_factory=dict)
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
    if policy.experiments:
        experiment = policy.experiments.get(tags.get("experiment", ""))
        if experiment is not None:
            caps.append(experiment.cap)
    return tuple(caps)
