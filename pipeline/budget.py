"""The budget gate: hold a request's worst case against its team's, key's, tags' and experiment's caps before the
upstream call.

A team's YAML budgets become ``metering``'s ``BudgetPolicy`` here, once per policy version. Over a cap the request is
refused (``budget_exceeded``) or, with ``on_exceeded: downgrade``, served by the team's cheapest tier and still
metered; a budget store that is down refuses the request only for teams that fail closed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from metering.budgets.base import BudgetStoreUnavailable
from metering.budgets.policy import BudgetLimits, BudgetPolicy
from metering.service import Meter, Reservation
from pipeline.errors import TiergateError
from pipeline.request import RequestState
from router.config import BudgetLimit
from router.experiments import Experiments
from router.policy import Policy, TeamPolicy

log = logging.getLogger("tiergate.budgets")


def _limits(limit: BudgetLimit) -> BudgetLimits:
    return BudgetLimits(daily_usd=limit.daily_usd, monthly_usd=limit.monthly_usd)


def budget_policy(team: TeamPolicy, experiments: Experiments | None = None) -> BudgetPolicy:
    """The team's caps; with ``experiments``, also the lifetime cap of each of its experiments."""
    budgets = team.settings.budgets
    per_key = _limits(budgets.per_key) if budgets.per_key is not None else None
    return BudgetPolicy(
        team=_limits(budgets.team),
        keys={key.id: per_key for key in team.settings.keys} if per_key is not None else {},
        tags={tag: _limits(limit) for tag, limit in budgets.per_tag.items()},
        experiments={m.name: m.budget for m in experiments.of_team(team.name)} if experiments is not None else {},
        on_exceeded=budgets.on_exceeded,
        redis_failure=budgets.redis_failure,
    )


class BudgetPolicies:
    """Every team's ``BudgetPolicy``, derived once per policy version (a reload brings a new one)."""

    def __init__(self) -> None:
        self._policy: Policy | None = None
        self._derived: dict[str, BudgetPolicy] = {}

    def of(self, policy: Policy) -> Mapping[str, BudgetPolicy]:
        if policy is not self._policy:  # requests hold the store's one policy object until a reload swaps it
            self._derived = {name: budget_policy(team, policy.experiments) for name, team in policy.teams.items()}
            self._policy = policy
        return self._derived


async def hold(meter: Meter, policies: BudgetPolicies, state: RequestState, enforce: bool = True) -> Reservation:
    """Reserve the decision's worst case. Raises ``BudgetExceeded`` (the caller applies the team's
    ``on_exceeded``) or ``TiergateError`` ``budget_store_unavailable`` (fail-closed teams only)."""
    request = state.request
    team = state.team.name
    try:
        return await meter.reserve(team, request.principal.key_id, state.tags, state.decision.reserve_nanos,
                                   policies.of(request.policy)[team], request_id=request.request_id,
                                   started_at=request.started_at, enforce=enforce)
    except BudgetStoreUnavailable as exc:
        # The store's own words name its host and port: the log keeps them, the client gets the reason.
        log.warning("budget store unavailable, team %s fails closed: %s", team, exc)
        raise TiergateError("budget_store_unavailable", f"budget store unavailable and team {team!r} fails closed "
                            "(budgets.redis_failure: closed)") from None
