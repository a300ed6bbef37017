"""A request's usage record, built from its state when it ends: served, answered from the cache, or failed.

Cost is always computed from the provider's usage (normalised by ``metering.usage``) at the serving deployment's
prices; the counterfactual is the same usage at the team's most capable tier, so savings are measured, not guessed.
Usage missing from the provider is estimated with tiktoken and flagged. ``status`` is the one the client got, which
the ingress chooses (``Pipeline`` is handed its mapping).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from metering.record import UsageRecord
from metering.usage import Usage, cost_nanos, estimate_usage, normalize_usage
from pipeline.request import RequestState
from router.policy import DeploymentSpec
from upstream.dispatch import Attempt


def normalize(raw: dict[str, Any], dep: DeploymentSpec) -> Usage:
    return normalize_usage(raw, "litellm" if dep.provider == "litellm" else "openai")


def usage_of(body: dict[str, Any], dep: DeploymentSpec, prompt_tokens: int) -> Usage:
    """The provider's usage, or an estimate from the answer's text when it sent none. Raises on a body that is not
    a completion's shape (the caller treats that as an unusable answer)."""
    raw = body.get("usage")
    if isinstance(raw, dict) and raw:
        return normalize(raw, dep)
    text = "".join(
        (c.get("message") or {}).get("content") or c.get("text") or "" for c in body.get("choices") or ()
    )
    return estimate_usage(prompt_tokens, text, dep.upstream_model)


# Records whose answer the client gets: only they carry its id (a summary or shadow call inherits the client's
# request, minted id included, but its answer goes nowhere).
_ANSWERED = frozenset({"chat", "embedding"})


def _fields(state: RequestState, status: int, error: str | None) -> dict[str, Any]:
    request = state.request
    now = datetime.now(UTC)
    return dict(
        api=request.api,
        router_model=state.decision.router_model,
        response_id=request.response_id if state.purpose in _ANSWERED else None,
        request_id=request.request_id,
        started_at=request.started_at,
        ended_at=now,
        team=state.team.name,
        key_id=request.principal.key_id,
        tags=state.tags,
        requested_model=str(state.body.get("model", "")),
        tier=state.decision.tier.name,
        score=state.decision.score,
        purpose=state.purpose,
        status=status,
        error=error,
        latency_ms=int((now - request.started_at).total_seconds() * 1000),
        system_tokens=state.features.system_tokens,
        context_saved_tokens=state.trimmed.saved_tokens if state.trimmed is not None else 0,
    )


def response_id_of(body: dict[str, Any]) -> str | None:
    """The answer's own id (``chatcmpl-...``, ``resp_...``, ``msg_...``), which clients quote (feedback finds the
    request by it), from an answer or a stream's first payload; None when the provider sent none."""
    found = body.get("id")
    if found is None:  # the first event of a Responses or Messages stream carries it one level down
        inner = body.get("response") or body.get("message")
        found = inner.get("id") if isinstance(inner, dict) else None
    return found if isinstance(found, str) and found else None


def _answered(state: RequestState, status: int, error: str | None, answer_id: str | None) -> dict[str, Any]:
    """``_fields`` of a request that got an answer: the id the ingress minted, else the answer's own."""
    fields = _fields(state, status, error)
    if fields["response_id"] is None and state.purpose in _ANSWERED:
        fields["response_id"] = answer_id
    return fields


def served(state: RequestState, dep: DeploymentSpec, usage: Usage, *, ttft_ms: float | None, status: int,
           error: str | None = None, response_id: str | None = None) -> UsageRecord:
    baseline = state.decision.counterfactual_tier.deployments[0].price
    fields = _answered(state, status, error, response_id)
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


def cached(state: RequestState, usage: Usage, model: str, status: int, response_id: str | None = None
           ) -> UsageRecord:
    """Answered from the response cache: no provider was paid, so the whole baseline is saved. ``response_id`` is
    the stored answer's, which the client gets again."""
    baseline = state.decision.counterfactual_tier.deployments[0].price
    return UsageRecord.with_usage(usage, **_answered(state, status, None, response_id), model=model,
                                  deployment="response-cache", counterfactual_cost_nanos=cost_nanos(usage, baseline),
                                  ttft_ms=None)


def failed(state: RequestState, attempts: list[Attempt], status: int, message: str) -> UsageRecord:
    """No provider answered usably: nothing was billed to us, so nothing is charged."""
    last = attempts[-1].deployment if attempts else ""
    return UsageRecord(**_fields(state, status, message), model="", deployment=last)
