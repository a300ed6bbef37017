"""Turns one request's outcome into a usage record and settles it with the meter.

Cost is always computed from the provider's usage (normalised by ``metering.usage``) at the serving
deployment's prices; the counterfactual is the same usage at the team's most capable tier, so savings are
measured, not guessed. Usage missing from the provider is estimated with tiktoken and flagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from metering.record import UsageRecord
from metering.service import Reservation
from metering.usage import Usage, cost_nanos, estimate_usage, normalize_usage
from proxy.meter import Meter
from router.decide import Decision
from router.features import RequestFeatures
from router.policy import DeploymentSpec, TeamPolicy
from upstream.dispatch import Attempt


@dataclass(frozen=True, slots=True)
class Outcome:
    """Everything known about a request before the upstream answers; builds its record when it ends."""

    ctx: Any  # proxy.gateway.CallContext (kept untyped to avoid an import cycle)
    team: TeamPolicy
    tags: dict[str, str]
    body: dict[str, Any]
    features: RequestFeatures
    decision: Decision
    purpose: str
    budget_downgraded: bool = False
    context_saved_tokens: int = 0

    def _base(self, status: int, error: str | None) -> dict[str, Any]:
        now = datetime.now(timezone.utc)
        return dict(
            request_id=self.ctx.request_id,
            started_at=self.ctx.started_at,
            ended_at=now,
            team=self.team.name,
            key_id=self.ctx.principal.key_id,
            tags=self.tags,
            requested_model=str(self.body.get("model", "")),
            tier=self.decision.tier.name,
            score=self.decision.score,
            purpose=self.purpose,
            status=status,
            error=error,
            latency_ms=int((now - self.ctx.started_at).total_seconds() * 1000),
            system_tokens=self.features.system_tokens,
            context_saved_tokens=self.context_saved_tokens,
        )

    def succeeded(self, dep: DeploymentSpec, attempts: list[Attempt], usage: Usage, *, ttft_ms: float | None,
                  status: int = 200, error: str | None = None) -> UsageRecord:
        baseline = self.decision.counterfactual_tier.deployments[0].price
        fields = self._base(status, error)
        fields["tier"] = dep.tier  # after a fallback the serving tier, not the one first chosen
        return UsageRecord.with_usage(
            usage,
            **fields,
            model=dep.upstream_model,
            deployment=dep.id,
            cost_nanos=cost_nanos(usage, dep.price),
            counterfactual_cost_nanos=cost_nanos(usage, baseline),
            ttft_ms=int(ttft_ms) if ttft_ms is not None else None,
        )

    def cached(self, usage: Usage, model: str) -> UsageRecord:
        """Answered from the response cache: no provider was paid, so the whole baseline is saved."""
        baseline = self.decision.counterfactual_tier.deployments[0].price
        return UsageRecord.with_usage(usage, **self._base(200, None), model=model, deployment="response-cache",
                                      counterfactual_cost_nanos=cost_nanos(usage, baseline), ttft_ms=None)

    def failed(self, attempts: list[Attempt], status: int, message: str) -> UsageRecord:
        """No provider answered: nothing was billed to us, so nothing is charged."""
        last = attempts[-1].deployment if attempts else ""
        return UsageRecord(**self._base(status, message), model="", deployment=last)


class Accounting:
    def __init__(self, meter: Meter) -> None:
        self._meter = meter

    @staticmethod
    def normalize(raw: dict[str, Any], dep: DeploymentSpec) -> Usage:
        return normalize_usage(raw, "litellm" if dep.provider == "litellm" else "openai")

    def usage_of(self, body: dict[str, Any], dep: DeploymentSpec, features: RequestFeatures) -> Usage:
        raw = body.get("usage")
        if isinstance(raw, dict) and raw:
            return self.normalize(raw, dep)
        text = "".join(
            (c.get("message") or {}).get("content") or c.get("text") or "" for c in body.get("choices") or ()
        )
        return estimate_usage(features.prompt_tokens, text, dep.upstream_model)

    async def reserve(self, outcome: Outcome, enforce: bool = True) -> Reservation:
        """Hold the decision's worst case against the budgets; raises ``BudgetExceeded`` or ``TiergateError``."""
        ctx = outcome.ctx
        return await self._meter.reserve(ctx.policy, outcome.team, ctx.principal.key_id, outcome.tags,
                                         outcome.decision.reserve_nanos, ctx.request_id, ctx.started_at, enforce)

    async def settle(self, reservation: Reservation | None, record: UsageRecord) -> int:
        await self._meter.settle(reservation, record)
        return record.cost_nanos
