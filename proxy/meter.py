"""The proxy's side of metering: maps the YAML policy onto ``metering``'s budget policy and its errors onto the
error taxonomy. One ``metering.service.Meter`` per worker process."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Mapping

from metering.budgets.base import BudgetExceeded, BudgetStoreUnavailable
from metering.budgets.policy import BudgetLimits, BudgetPolicy
from metering.record import UsageRecord
from metering.service import Meter as _Meter
from metering.service import Reservation
from pipeline.errors import TiergateError
from router.config import BudgetLimit
from router.policy import Policy, TeamPolicy

log = logging.getLogger("tiergate.budgets")


def _limits(limit: BudgetLimit) -> BudgetLimits:
    return BudgetLimits(daily_usd=limit.daily_usd, monthly_usd=limit.monthly_usd)


def budget_policy(team: TeamPolicy) -> BudgetPolicy:
    budgets = team.settings.budgets
    per_key = _limits(budgets.per_key) if budgets.per_key is not None else None
    return BudgetPolicy(
        team=_limits(budgets.team),
        keys={key.id: per_key for key in team.settings.keys} if per_key is not None else {},
        tags={tag: _limits(limit) for tag, limit in budgets.per_tag.items()},
        on_exceeded=budgets.on_exceeded,
        redis_failure=budgets.redis_failure,
    )


class Meter:
    def __init__(self, inner: _Meter) -> None:
        self.inner = inner
        self._policies: tuple[str, dict[str, BudgetPolicy]] = ("", {})

    @classmethod
    async def open(cls, policy: Policy) -> "Meter":
        settings = policy.config.metering
        return cls(await _Meter.open(settings.ledger, settings.redis, webhook_url=settings.alert_webhook,
                                     spool_dir=settings.spool_dir or "", ledger_schema=settings.ledger_schema,
                                     lease_share=settings.budget_lease_share))

    def policies(self, policy: Policy) -> Mapping[str, BudgetPolicy]:
        """Budget policies of every team, derived once per policy version."""
        if self._policies[0] != policy.sha256:
            self._policies = (policy.sha256, {name: budget_policy(team) for name, team in policy.teams.items()})
        return self._policies[1]

    async def reserve(self, policy: Policy, team: TeamPolicy, key_id: str, tags: Mapping[str, str], amount: int,
                      request_id: str, started_at: datetime, enforce: bool = True) -> Reservation:
        """Raises ``BudgetExceeded`` (the caller decides: reject or downgrade) or ``TiergateError``
        ``budget_store_unavailable``."""
        try:
            return await self.inner.reserve(team.name, key_id, tags, amount, self.policies(policy)[team.name],
                                            request_id=request_id, started_at=started_at, enforce=enforce)
        except BudgetStoreUnavailable as exc:
            # The store's own words name its host and port: the log has them, the client a generic reason.
            log.warning("budget store unavailable for team %s (fails closed): %s", team.name, exc)
            raise TiergateError("budget_store_unavailable", f"budget store unavailable and team {team.name!r} fails "
                                "closed (budgets.redis_failure: closed)") from None

    async def settle(self, reservation: Reservation | None, record: UsageRecord) -> None:
        await self.inner.settle(reservation, record, budget_in_background=True)

    async def close(self) -> None:
        await self.inner.close()


def budget_error(exc: BudgetExceeded) -> TiergateError:
    return TiergateError("budget_exceeded", str(exc))
