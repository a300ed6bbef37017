"""The worker's ``metering.service.Meter``, opened from the policy's metering settings, with every team's budget
policy (``pipeline.budget``) for the spend and metrics endpoints."""

from __future__ import annotations

from typing import Mapping

from metering.budgets.policy import BudgetPolicy
from metering.service import Meter as _Meter
from pipeline.budget import BudgetPolicies, budget_policy
from router.policy import Policy

__all__ = ["Meter", "budget_policy"]


class Meter:
    def __init__(self, inner: _Meter) -> None:
        self.inner = inner
        self.budgets = BudgetPolicies()

    @classmethod
    async def open(cls, policy: Policy) -> "Meter":
        settings = policy.config.metering
        return cls(await _Meter.open(settings.ledger, settings.redis, webhook_url=settings.alert_webhook,
                                     spool_dir=settings.spool_dir or "", ledger_schema=settings.ledger_schema,
                                     lease_share=settings.budget_lease_share))

    def policies(self, policy: Policy) -> Mapping[str, BudgetPolicy]:
        return self.budgets.of(policy)

    async def close(self) -> None:
        await self.inner.close()
