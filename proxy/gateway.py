"""The request pipeline, free of HTTP: trim -> decide -> reserve -> call upstream (with fallbacks) -> meter.

Endpoints hand it a parsed body and a ``CallContext``; it returns a ``Completed`` answer or a ``Streamed`` one
(payloads only: SSE framing belongs to ``proxy.streaming``). Every request that reaches this point, whatever
its outcome, produces exactly one usage record.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Coroutine

import orjson
from opentelemetry.trace import Span

from kvcache.store import KeyValueCache
from metering.budgets.base import BudgetExceeded
from metering.money import format_usd
from metering.record import UsageRecord
from metering.service import Reservation
from proxy.accounting import Accounting, Outcome
from pipeline.errors import ErrorCode, Rejection, TiergateError
from proxy.errors import status_of
from proxy.meter import budget_error
from proxy.metrics import Metrics
from proxy.relay import StreamRelay, StreamState
from proxy.response_cache import cache_key, cacheable
from proxy.telemetry import Tracing, finish_request
from proxy.trimming import Trimmed, apply_plan
from router.context import plan_context
from router.decide import Decision, RefusalKind, RouteRequest, RoutingRefused, decide
from router.features import (RequestFeatures, chat_features, completion_features, embedding_features,
                             system_prompt_tokens)
from router.policy import DeploymentSpec, Policy, Principal, TeamPolicy
from router.prefix import conversation_key, prefix_key, provider_caching
from router.scoring import Scorer
from upstream.base import Endpoint
from upstream.dispatch import AllAttemptsFailed, Dispatcher
from upstream.health import HealthBook

log = logging.getLogger("tiergate.gateway")

_REFUSED: dict[RefusalKind, ErrorCode] = {
    "model_not_found": "routing_refused.model_not_found",
    "pin_forbidden": "routing_refused.pin_forbidden",
    "tier_forbidden": "routing_refused.tier_forbidden",
    "no_capable_tier": "routing_refused.no_capable_tier",
    "max_tokens_exceeded": "routing_refused.max_tokens_exceeded",
}
# Providers cache prompts of 1,024+ tokens only; shorter conversations gain nothing from staying on a tier.
_STICKY_MIN_TOKENS = 1024
_STICKY_TTL_S = 300.0  # provider caches go cold after ~5 minutes idle


@dataclass(frozen=True, slots=True)
class CallContext:
    request_id: str
    principal: Principal
    policy: Policy
    tier_header: str | None = None
    header_tags: dict[str, str] = field(default_factory=dict)
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    t0: float = field(default_factory=time.perf_counter)
    span: Span | None = None  # the request's trace span when tracing is on


@dataclass(slots=True)
class Completed:
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass(slots=True)
class Streamed:
    headers: dict[str, str]
    relay: StreamRelay  # payloads() to send; trailer once they are sent; abandon() if they never will be
    lead: dict[str, str] = field(default_factory=dict)  # sent as SSE comments before the first payload


@dataclass(frozen=True, slots=True)
class Prefix:
    """The request's static-prefix identity: provider caching hints and deployment affinity."""

    key: str | None
    hint_provider: bool  # the team wants provider caching hints (prompt_cache_key / cache_control)


def _upstream_error(exc: AllAttemptsFailed) -> TiergateError:
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


class Gateway:
    def __init__(self, dispatcher: Dispatcher, health: HealthBook, scorer: Scorer, accounting: Accounting,
                 cache: KeyValueCache, tracing: Tracing, metrics: Metrics) -> None:
        self._dispatcher = dispatcher
        self._health = health
        self._rng = random.Random()  # one per process: a new Random per request showed in the profile
        self._scorer = scorer
        self._accounting = accounting
        self._cache = cache
        self._tracing = tracing
        self._metrics = metrics
        self._background: set[asyncio.Task[int]] = set()

    # ---- shared steps -------------------------------------------------------------------------------------------

    def _team(self, ctx: CallContext) -> TeamPolicy:
        team = ctx.principal.team
        if team is None:
            raise TiergateError("team_key_required", "admin keys cannot make model calls; use a team key")
        return ctx.policy.teams[team]

    def _tags(self, ctx: CallContext, team: TeamPolicy, body: dict[str, Any]) -> dict[str, str]:
        tags = dict(ctx.principal.tags)
        tags.update(body.get("metadata") or {})  # checked at the edge (proxy.body): string values, sane sizes
        tags.update(ctx.header_tags)
        missing = [t for t in team.settings.required_tags if t not in tags]
        if missing:
            raise TiergateError(
                "invalid_request.missing_tags",
                f"team {team.name!r} requires tags {missing}: send them in 'metadata' or as x-tiergate-tag-<name> headers",
                param="metadata",
            )
        return tags

    def _decide(self, ctx: CallContext, team: TeamPolicy, body: dict[str, Any], features: RequestFeatures,
                messages: list[Any] | None, affinity: str | None = None, sticky_tier: int | None = None) -> Decision:
        model = body["model"]
        score = None
        if model == "auto" and messages is not None and not ctx.tier_header:
            with self._tracing.span("tiergate.classify") as span:
                score = self._scorer.score(messages)
                if span is not None:
                    span.set_attribute("tiergate.score", score)
        with self._tracing.span("tiergate.route") as span:
            try:
                route = RouteRequest(features, model, score, ctx.tier_header, affinity, sticky_tier)
                decision = decide(ctx.policy, team, route, self._health.snapshot(), self._rng)
            except RoutingRefused as exc:
                raise TiergateError(_REFUSED[exc.kind], exc.message, param=exc.param) from None
            if span is not None:
                span.set_attributes({"tiergate.tier": decision.tier.name, "tiergate.reasons": list(decision.reasons)})
            return decision

    @staticmethod
    def _headers(outcome: Outcome, dep: DeploymentSpec | None) -> dict[str, str]:
        decision = outcome.decision
        headers = {"x-tiergate-tier": dep.tier if dep is not None else decision.tier.name}
        if dep is not None:
            headers["x-tiergate-model"] = dep.upstream_model
            headers["x-tiergate-deployment"] = dep.id
        if decision.score is not None:
            headers["x-tiergate-score"] = f"{decision.score:.4f}"
        if decision.max_tokens_note is not None:
            headers["x-tiergate-max-tokens"] = f"{decision.max_tokens};{decision.max_tokens_note}"
        if decision.sticky_held:
            headers["x-tiergate-sticky"] = "held"
        if outcome.budget_downgraded:
            headers["x-tiergate-budget"] = "downgraded"
        return headers

    @staticmethod
    def _apply_max_tokens(body: dict[str, Any], decision: Decision) -> dict[str, Any]:
        if decision.max_tokens is None or decision.max_tokens_note is None:
            return body
        key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        return {**body, key: decision.max_tokens}

    async def _settle(self, outcome: Outcome, reservation: Reservation | None, record: UsageRecord,
                      provider: str | None = None) -> int:
        """The one place a request is settled: ledger and budget, metrics, then the request span is completed."""
        span = outcome.ctx.span
        with self._tracing.span("tiergate.metering", parent=span):
            cost = await self._accounting.settle(reservation, record)
        self._metrics.observe(record, outcome.decision.sticky_held)
        finish_request(span, record, provider)
        return cost

    def _spawn(self, work: Coroutine[Any, Any, int]) -> asyncio.Task[int]:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def drain(self) -> None:
        """Wait for background settlements (shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # ---- endpoints ----------------------------------------------------------------------------------------------

    def preview(self, ctx: CallContext, body: dict[str, Any]) -> dict[str, Any]:
        """``/v1/route``: what a chat request would get, without calling anything."""
        team = self._team(ctx)
        features = chat_features(body)
        decision = self._decide(ctx, team, body, features, body.get("messages"), affinity=prefix_key(body))
        dep = decision.plan[0]
        return {
            "score": decision.score,
            "tier": decision.tier.name,
            "model": dep.upstream_model,
            "deployment": dep.id,
            "fallbacks": [d.id for d in decision.plan[1:]],
            "reasons": list(decision.reasons),
            "prompt_tokens": features.prompt_tokens,
            "max_tokens": decision.max_tokens,
            "estimated_max_cost_usd": format_usd(decision.reserve_nanos),
            "classifier": self._scorer.model_id,
        }

    async def _traced(self, ctx: CallContext, endpoint: Endpoint, body: dict[str, Any],
                      work: Callable[[CallContext], Awaitable[Completed | Streamed]]) -> Completed | Streamed:
        """Run one endpoint's work under its request span; the span ends when the request is settled."""
        span = self._tracing.start_request(endpoint, body, ctx.request_id, ctx.principal.team)
        if span is None:
            return await work(ctx)
        with self._tracing.active(span):
            try:
                return await work(replace(ctx, span=span))
            except BaseException as exc:
                if span.is_recording():  # not yet ended by a settlement
                    finish_request(span, None, error=exc)
                raise

    async def chat(self, ctx: CallContext, body: dict[str, Any]) -> Completed | Streamed:
        return await self._traced(ctx, "chat/completions", body, lambda c: self._chat(c, body))

    async def completions(self, ctx: CallContext, body: dict[str, Any]) -> Completed | Streamed:
        return await self._traced(ctx, "completions", body, lambda c: self._completions(c, body))

    async def embeddings(self, ctx: CallContext, body: dict[str, Any]) -> Completed:
        result = await self._traced(ctx, "embeddings", body, lambda c: self._embeddings(c, body))
        assert isinstance(result, Completed)
        return result

    async def _chat(self, ctx: CallContext, body: dict[str, Any]) -> Completed | Streamed:
        team = self._team(ctx)
        tags = self._tags(ctx, team, body)
        settings = team.settings.context
        original = body["messages"]
        # Keys come from the client's messages, not the trimmed ones: the summary that trimming puts after the
        # system prompt changes whenever turns age out, and keying by it would move the conversation to a cold
        # provider cache (prompt_cache_key), deployment and tier each time.
        prefix = Prefix(key=prefix_key(body), hint_provider=settings.provider_prefix_caching)
        request = body
        trimmed = await self._trim(ctx, team, tags, original)
        if trimmed is not None:
            body = {**body, "messages": trimmed.messages}
        features = chat_features(body)
        if trimmed is not None:  # the summary sits after the system prompt; the audit wants the client's prompt
            features = replace(features, system_tokens=system_prompt_tokens(original))
        sticky_key = None
        sticky_tier = None
        if body["model"] == "auto" and features.prompt_tokens >= _STICKY_MIN_TOKENS and settings.stickiness_margin > 0:
            sticky_key = "sticky:" + conversation_key(team.name, request)
            cached = await self._cache.get(sticky_key)
            sticky_tier = int(cached) if cached is not None else None
        decision = self._decide(ctx, team, body, features, original, affinity=prefix.key, sticky_tier=sticky_tier)
        result = await self._call(ctx, team, tags, "chat/completions", body, features, decision, prefix=prefix,
                                  context_saved=trimmed.saved_tokens if trimmed is not None else 0)
        if sticky_key is not None:
            await self._cache.set(sticky_key, str(decision.tier.index).encode(), _STICKY_TTL_S)
        if trimmed is not None:
            result.headers["x-tiergate-context"] = trimmed.header()
            if isinstance(result, Streamed):
                result.lead["x-tiergate-context"] = trimmed.header()
        return result

    async def _completions(self, ctx: CallContext, body: dict[str, Any]) -> Completed | Streamed:
        team = self._team(ctx)
        tags = self._tags(ctx, team, body)
        features = completion_features(body)
        decision = self._decide(ctx, team, body, features, None)
        return await self._call(ctx, team, tags, "completions", body, features, decision)

    async def _embeddings(self, ctx: CallContext, body: dict[str, Any]) -> Completed | Streamed:
        team = self._team(ctx)
        tags = self._tags(ctx, team, body)
        features = embedding_features(body)
        decision = self._decide(ctx, team, body, features, None)
        return await self._call(ctx, team, tags, "embeddings", body, features, decision, purpose="embedding")

    # ---- context trimming ---------------------------------------------------------------------------------------

    async def _trim(self, ctx: CallContext, team: TeamPolicy, tags: dict[str, str],
                    messages: list[Any]) -> Trimmed | None:
        """Rolling summaries when the conversation exceeds the team's history budget."""
        settings = team.settings.context
        if settings.history_budget_tokens is None:
            return None
        plan = plan_context(team.name, messages, settings.history_budget_tokens, settings.keep_last_turns)
        if plan is None:
            return None
        calls = 0

        async def complete(summary_messages: list[dict[str, Any]], max_tokens: int) -> str:
            nonlocal calls
            calls += 1
            # The cheapest tier writes summaries, metered to the team under its own request id and purpose.
            sub = replace(ctx, request_id=f"{ctx.request_id}.summary{calls}", tier_header=None, span=None)
            body = {"model": ctx.policy.tiers[team.floor].name, "messages": summary_messages,
                    "max_tokens": max_tokens, "temperature": 0}
            features = chat_features(body)
            decision = self._decide(sub, team, body, features, None)
            result = await self._call(sub, team, tags, "chat/completions", body, features, decision,
                                      purpose="summarization")
            assert isinstance(result, Completed)
            return str(result.body["choices"][0]["message"].get("content") or "")

        with self._tracing.span("tiergate.context") as span:
            trimmed = await apply_plan(plan, self._cache, complete, settings.summary_timeout_s, "gpt-4o")
            if span is not None:
                span.set_attributes({"tiergate.context.saved_tokens": trimmed.saved_tokens,
                                     "tiergate.context.summaries_written": trimmed.computed})
            return trimmed

    # ---- the call -----------------------------------------------------------------------------------------------

    async def _reserve(self, outcome: Outcome) -> tuple[Outcome, Reservation]:
        """Reserve the worst case. Over a cap: 429, or with ``on_exceeded: downgrade`` every request is served
        by the team's cheapest tier (spend goes on, at the lowest price the team allows) and still metered."""
        try:
            return outcome, await self._accounting.reserve(outcome)
        except BudgetExceeded as exc:
            if outcome.team.settings.budgets.on_exceeded != "downgrade":
                error = budget_error(exc)
                await self._settle(outcome, None, outcome.failed([], status_of(error), error.message))
                raise error from None
        if outcome.decision.tier.index > outcome.team.floor:
            floor = outcome.ctx.policy.tiers[outcome.team.floor].name
            decision = self._decide(outcome.ctx, outcome.team, {**outcome.body, "model": floor}, outcome.features, None)
            outcome = replace(outcome, decision=decision)
        downgraded = replace(outcome, budget_downgraded=True)
        return downgraded, await self._accounting.reserve(downgraded, enforce=False)

    async def _call(self, ctx: CallContext, team: TeamPolicy, tags: dict[str, str], endpoint: Endpoint,
                    body: dict[str, Any], features: RequestFeatures, decision: Decision, purpose: str = "chat",
                    prefix: Prefix | None = None, context_saved: int = 0) -> Completed | Streamed:
        outcome = Outcome(ctx=ctx, team=team, tags=tags, body=body, features=features, decision=decision,
                          purpose=purpose, context_saved_tokens=context_saved)
        response_key = None
        if team.settings.context.response_cache and endpoint == "chat/completions" and cacheable(body):
            response_key = cache_key(team.name, body)
            with self._tracing.span("tiergate.cache") as span:
                hit = await self._cache.get(response_key)
                if span is not None:
                    span.set_attribute("tiergate.cache.hit", hit is not None)
            if hit is not None:
                return await self._from_cache(outcome, orjson.loads(hit))
        outcome, reservation = await self._reserve(outcome)
        upstream = self._apply_max_tokens(body, outcome.decision)
        stream = bool(body.get("stream")) and endpoint != "embeddings"
        if stream:  # always ask for usage: a stream metered at $0 is the incumbent's costliest bug
            upstream = {**upstream, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
        hint = prefix is not None and prefix.hint_provider

        def body_for(dep: DeploymentSpec) -> dict[str, Any]:
            out = {**upstream, "model": dep.upstream_model}
            return provider_caching(out, dep, team.name, prefix.key) if hint and prefix is not None else out

        try:
            if stream:
                return await self._stream(outcome, reservation, endpoint, body_for)
            dep, reply, attempts = await self._dispatcher.send(outcome.decision.plan, endpoint, body_for)
        except AllAttemptsFailed as exc:
            error = _upstream_error(exc)
            await self._settle(outcome, reservation, outcome.failed(exc.attempts, status_of(error), error.message))
            raise error from None
        except BaseException as exc:  # the reservation must still be settled, with the status the client gets
            status, why = ((status_of("client_disconnected"), "client disconnected")
                           if isinstance(exc, asyncio.CancelledError)  # the app answers any other with a 500
                           else (status_of("internal_error"), f"internal error: {type(exc).__name__}"))
            self._spawn(self._settle(outcome, reservation, outcome.failed([], status, why)))
            raise
        usage = self._accounting.usage_of(reply.body, dep, features)
        record = outcome.succeeded(dep, attempts, usage, ttft_ms=None)
        cost = await self._settle(outcome, reservation, record, dep.provider)
        if response_key is not None:
            await self._cache.set(response_key, orjson.dumps(reply.body), team.settings.context.response_cache_ttl_s)
        headers = self._headers(outcome, dep)
        headers["x-tiergate-cost-usd"] = format_usd(cost)
        if len(attempts) > 1:
            headers["x-tiergate-attempts"] = str(len(attempts))
        return Completed(body=reply.body, headers=headers)

    async def _from_cache(self, outcome: Outcome, body: dict[str, Any]) -> Completed:
        usage = self._accounting.usage_of(body, outcome.decision.plan[0], outcome.features)
        await self._settle(outcome, None, outcome.cached(usage, str(body.get("model", ""))))
        headers = self._headers(outcome, None)
        headers.update({"x-tiergate-cache": "hit", "x-tiergate-cost-usd": format_usd(0)})
        return Completed(body=body, headers=headers)

    async def _stream(self, outcome: Outcome, reservation: Reservation, endpoint: Endpoint,
                      body_for: Any) -> Streamed:
        client_wants_usage = bool((outcome.body.get("stream_options") or {}).get("include_usage"))
        dep, first, rest, attempts = await self._dispatcher.open_stream(outcome.decision.plan, endpoint, body_for)
        ttft_ms = (time.perf_counter() - outcome.ctx.t0) * 1000

        def record_for(state: StreamState, status: int, error: str | None) -> Any:
            usage = (self._accounting.normalize(state.usage, dep) if state.usage is not None
                     else state.estimated_usage(outcome.features.prompt_tokens, dep))
            return outcome.succeeded(dep, attempts, usage, ttft_ms=ttft_ms, status=status, error=error)

        async def settle(record: Any) -> int:
            return await self._settle(outcome, reservation, record, dep.provider)

        relay = StreamRelay(first, rest, dep, client_wants_usage, record_for, settle, self._spawn)
        return Streamed(headers=self._headers(outcome, dep), relay=relay)
