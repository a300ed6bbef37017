"""What the FinOps commands need from a policy file: the ledger, the teams, their budgets, the frontier tier and
the alert webhook.

metering does not parse policies; the router's loader does (with file/line/field errors), and the proxy maps a
team's budget settings onto ``BudgetPolicy`` (``pipeline.budget.budget_policy``). Both are imported here, lazily and
only by the offline commands, so the request path never loads them through metering.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from metering.budgets.policy import BudgetPolicy


@dataclass(frozen=True, slots=True)
class FinopsView:
    ledger_url: str
    ledger_schema: str
    teams: tuple[str, ...]
    budgets: Mapping[str, BudgetPolicy]  # per team
    frontier_tiers: frozenset[str]  # the most capable tier: the "frontier share" of anomalies
    alert_webhook: str | None


def load_view(path: str) -> FinopsView:
    """Raises ValueError naming the file, line and field of an invalid config."""
    from pipeline.budget import budget_policy
    from router.config_loader import ConfigError, load_policy

    try:
        policy = load_policy(path)
    except ConfigError as exc:
        raise ValueError(f"{path}: invalid config\n{exc}") from None
    metering = policy.config.metering
    return FinopsView(
        ledger_url=metering.ledger,
        ledger_schema=metering.ledger_schema,
        teams=tuple(policy.teams),
        budgets={name: budget_policy(team) for name, team in policy.teams.items()},
        frontier_tiers=frozenset({policy.tiers[-1].name}),
        alert_webhook=metering.alert_webhook,
    )
