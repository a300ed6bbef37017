"""What the dispatch step sends and what its failures mean: the upstream body (output limit, usage for streams,
provider caching hints, or the client's own body for a deployment that speaks its format: ``pipeline.native``) and
an exhausted plan as the taxonomy's ``upstream_failed.*`` error."""

from __future__ import annotations

from typing import Any

from pipeline.errors import Rejection, TiergateError
from pipeline.native import Native
from router.decide import Decision
from router.policy import DeploymentSpec
from router.prefix import provider_caching
from upstream.base import Endpoint, UpstreamError
from upstream.dispatch import AllAttemptsFailed, Attempt, BodyFor, Outgoing, public_reason


def apply_max_tokens(body: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """The output limit the decision set (the team's default or cap), in every limit field the client sent: a
    body with both ``max_tokens`` and ``max_completion_tokens`` has both clamped."""
    if decision.max_tokens is None or decision.max_tokens_note is None:
        return body
    limit = decision.max_tokens
    if "max_completion_tokens" not in body:
        return {**body, "max_tokens": limit}
    if "max_tokens" not in body:
        return {**body, "max_completion_tokens": limit}
    return {**body, "max_tokens": limit, "max_completion_tokens": limit}


def upstream_body(body: dict[str, Any], decision: Decision, stream: bool) -> dict[str, Any]:
    upstream = apply_max_tokens(body, decision)
    if stream:  # always ask for usage: a stream metered at $0 is the incumbent's costliest bug
        upstream = {**upstream, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
    return upstream


def body_for(upstream: dict[str, Any], kind: Endpoint, team: str, prefix: str | None, hint_provider: bool,
             native: Native | None = None) -> BodyFor:
    """The call as each deployment of the plan receives it: its model name, and provider caching hints when the
    team wants them; with ``native``, a deployment that speaks the client's format gets the client's own body."""
    if hint_provider:
        def chat(dep: DeploymentSpec) -> Outgoing:
            return kind, provider_caching({**upstream, "model": dep.upstream_model}, dep, team, prefix), None
    else:
        def chat(dep: DeploymentSpec) -> Outgoing:
            return kind, {**upstream, "model": dep.upstream_model}, None
    if native is None:
        return chat

    def own(dep: DeploymentSpec) -> Outgoing:
        endpoint, body, headers = native.outgoing(dep)
        if hint_provider and native.api == "responses":  # the same prompt_cache_key a chat call would carry
            body = provider_caching(body, dep, team, prefix)
        return endpoint, body, headers

    return lambda dep: own(dep) if native.api in dep.native_apis else chat(dep)


def unusable_answer(dep: DeploymentSpec, attempts: list[Attempt], why: str) -> AllAttemptsFailed:
    """An answer that came back but cannot be served or metered (not a completion's shape): a failed attempt."""
    exc = UpstreamError("server", f"deployment {dep.id} sent an unusable answer: {why}")
    failed = Attempt(dep.id, "server", public_reason(exc), attempts[-1].elapsed_ms if attempts else 0.0)
    return AllAttemptsFailed(exc, [*attempts[:-1], failed])


def upstream_failure(exc: AllAttemptsFailed) -> TiergateError:
    """What the client is told: deployments by id with a generic reason each (``upstream.dispatch.public_reason``);
    upstream URLs and their raw messages stay in the log."""
    last = exc.last
    tried = "; ".join(f"{a.deployment} {a.detail}" for a in exc.attempts)
    if last.kind == "client":
        # The request's own fault: a provider's structured explanation is what the client needs to fix it.
        error = (last.body or {}).get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            code, param = error.get("code"), error.get("param")
            return TiergateError("upstream_failed.rejected", error["message"],
                                 param=param if isinstance(param, str) else None,
                                 rejection=Rejection(last.status, True, code if isinstance(code, str) else None))
        return TiergateError("upstream_failed.rejected", f"upstream rejected the request ({tried})",
                             rejection=Rejection(last.status, False))
    if last.kind == "rate_limit":
        return TiergateError("upstream_failed.rate_limited", f"upstream rate limit ({tried}); retry later",
                             retry_after=last.retry_after)
    if last.kind == "timeout":
        return TiergateError("upstream_failed.timeout", f"upstream timed out ({tried})")
    return TiergateError("upstream_failed.error", f"upstream failed ({tried})")
