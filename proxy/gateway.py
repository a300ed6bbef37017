"""The request pipeline, free of HTTP: decide -> reserve -> call upstream (with fallbacks) -> meter.

Endpoints hand it a parsed body and a ``CallContext``; it returns a ``Completed`` answer or a ``Streamed`` one
(payloads only: SSE framing belongs to ``proxy.streaming``). Every request that reaches this point, whatever
its outcome, produces exactly one usage record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Coroutine

import orjson

from metering.money import format_usd
from metering.tokens import count_text
from metering.usage import Usage
from proxy.accounting import Accounting, Outcome
from proxy.errors import ApiError, bad_request
from router.decide import Decision, RoutingRefused, decide
from router.dispatch import AllAttemptsFailed, Dispatcher
from router.features import RequestFeatures, chat_features, prompt_features
from router.health import HealthBook
from router.policy import DeploymentSpec, Policy, Principal, TeamPolicy
from router.scoring import Scorer
from router.upstream.base import Endpoint

log = logging.getLogger("tiergate.gateway")

_REFUSAL_STATUS = {
    "model_not_found": 404,
    "pin_forbidden": 403,
    "tier_forbidden": 403,
    "no_capable_tier": 400,
    "max_tokens_exceeded": 400,
}


@dataclass(frozen=True, slots=True)
class CallContext:
    request_id: str
    principal: Principal
    policy: Policy
    tier_header: str | None = None
    header_tags: dict[str, str] = field(default_factory=dict)
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    t0: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class Completed:
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass(slots=True)
class Streamed:
    headers: dict[str, str]
    payloads: AsyncIterator[bytes]
    trailer: dict[str, str] = field(default_factory=dict)  # filled when the stream ends: cost, or error


def _upstream_error(exc: AllAttemptsFailed) -> ApiError:
    last = exc.last
    tried = ", ".join(f"{a.deployment}: {a.outcome}" for a in exc.attempts)
    if last.kind == "client":
        status = last.status or 400
        message = last.message
        return ApiError(status, message, code=(last.body or {}).get("error", {}).get("code") if last.body else None)
    if last.kind == "rate_limit":
        retry = str(int(last.retry_after or 1))
        return ApiError(429, f"upstream rate limit ({tried}); retry later", code="upstream_rate_limited",
                        headers={"retry-after": retry})
    if last.kind == "timeout":
        return ApiError(504, f"upstream timed out ({tried})", code="upstream_timeout")
    return ApiError(502, f"upstream failed ({tried}): {last.message}", code="upstream_error")


class Gateway:
    def __init__(self, dispatcher: Dispatcher, health: HealthBook, scorer: Scorer, accounting: Accounting) -> None:
        self._dispatcher = dispatcher
        self._health = health
        self._scorer = scorer
        self._accounting = accounting
        self._background: set[asyncio.Task[int]] = set()

    # ---- shared steps -------------------------------------------------------------------------------------------

    def _team(self, ctx: CallContext) -> TeamPolicy:
        team = ctx.principal.team
        if team is None:
            raise ApiError(403, "admin keys cannot make model calls; use a team key", code="team_key_required")
        return ctx.policy.teams[team]

    def _tags(self, ctx: CallContext, team: TeamPolicy, body: dict[str, Any]) -> dict[str, str]:
        tags = dict(ctx.principal.tags)
        metadata = body.get("metadata")
        if isinstance(metadata, dict):
            tags.update({k: v for k, v in metadata.items() if isinstance(v, str)})
        tags.update(ctx.header_tags)
        missing = [t for t in team.settings.required_tags if t not in tags]
        if missing:
            raise bad_request(
                f"team {team.name!r} requires tags {missing}: send them in 'metadata' or as x-tiergate-tag-<name> headers",
                param="metadata", code="missing_tags",
            )
        return tags

    def _decide(self, ctx: CallContext, team: TeamPolicy, body: dict[str, Any], features: RequestFeatures,
                messages: list[Any] | None) -> Decision:
        model = body["model"]
        score = None
        if model == "auto" and messages is not None and not ctx.tier_header:
            score = self._scorer.score(messages)
        try:
            return decide(ctx.policy, team, features, score, model, ctx.tier_header, self._health)
        except RoutingRefused as exc:
            raise ApiError(_REFUSAL_STATUS[exc.kind], exc.message, code=exc.kind, param=exc.param) from None

    @staticmethod
    def _headers(ctx: CallContext, decision: Decision, dep: DeploymentSpec) -> dict[str, str]:
        headers = {
            "x-tiergate-tier": dep.tier,
            "x-tiergate-model": dep.upstream_model,
            "x-tiergate-deployment": dep.id,
        }
        if decision.score is not None:
            headers["x-tiergate-score"] = f"{decision.score:.4f}"
        if decision.max_tokens_note is not None:
            headers["x-tiergate-max-tokens"] = f"{decision.max_tokens};{decision.max_tokens_note}"
        return headers

    @staticmethod
    def _apply_max_tokens(body: dict[str, Any], decision: Decision) -> dict[str, Any]:
        if decision.max_tokens is None or decision.max_tokens_note is None:
            return body
        out = dict(body)
        key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        out[key] = decision.max_tokens
        return out

    # ---- endpoints ----------------------------------------------------------------------------------------------

    def preview(self, ctx: CallContext, body: dict[str, Any]) -> dict[str, Any]:
        """``/v1/route``: what a chat request would get, without calling anything."""
        team = self._team(ctx)
        features = chat_features(body)
        decision = self._decide(ctx, team, body, features, body.get("messages"))
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

    async def chat(self, ctx: CallContext, body: dict[str, Any]) -> Completed | Streamed:
        team = self._team(ctx)
        tags = self._tags(ctx, team, body)
        features = chat_features(body)
        decision = self._decide(ctx, team, body, features, body["messages"])
        return await self._call(ctx, team, tags, "chat/completions", body, features, decision)

    async def completions(self, ctx: CallContext, body: dict[str, Any], text: str) -> Completed | Streamed:
        team = self._team(ctx)
        tags = self._tags(ctx, team, body)
        features = prompt_features(text, body.get("max_tokens"))
        decision = self._decide(ctx, team, body, features, None)
        return await self._call(ctx, team, tags, "completions", body, features, decision)

    async def embeddings(self, ctx: CallContext, body: dict[str, Any], text: str) -> Completed:
        team = self._team(ctx)
        tags = self._tags(ctx, team, body)
        features = prompt_features(text, None)
        decision = self._decide(ctx, team, body, features, None)
        result = await self._call(ctx, team, tags, "embeddings", body, features, decision)
        assert isinstance(result, Completed)
        return result

    # ---- the call -----------------------------------------------------------------------------------------------

    async def _call(self, ctx: CallContext, team: TeamPolicy, tags: dict[str, str], endpoint: Endpoint,
                    body: dict[str, Any], features: RequestFeatures, decision: Decision) -> Completed | Streamed:
        outcome = Outcome(ctx=ctx, team=team, tags=tags, body=body, features=features, decision=decision,
                          purpose="embedding" if endpoint == "embeddings" else "chat")
        reservation = await self._accounting.reserve(outcome)
        upstream = self._apply_max_tokens(body, decision)
        if body.get("stream") and endpoint != "embeddings":
            return await self._stream(outcome, reservation, endpoint, upstream)
        try:
            dep, reply, attempts = await self._dispatcher.send(decision.plan, endpoint, upstream)
        except AllAttemptsFailed as exc:
            error = _upstream_error(exc)
            await self._accounting.settle(reservation, outcome.failed(exc.attempts, error.status, error.message))
            raise error from None
        except BaseException:  # cancelled (client gone): the reservation must still be settled
            self._spawn(self._accounting.settle(reservation, outcome.failed([], 499, "client disconnected")))
            raise
        usage = self._accounting.usage_of(reply.body, dep, features)
        record = outcome.succeeded(dep, attempts, usage, ttft_ms=None)
        cost = await self._accounting.settle(reservation, record)
        headers = self._headers(ctx, decision, dep)
        headers["x-tiergate-cost-usd"] = format_usd(cost)
        if len(attempts) > 1:
            headers["x-tiergate-attempts"] = str(len(attempts))
        return Completed(body=reply.body, headers=headers)

    async def _stream(self, outcome: Outcome, reservation: Any, endpoint: Endpoint,
                      body: dict[str, Any]) -> Streamed:
        client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        upstream = dict(body)
        upstream["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        try:
            dep, first, rest, attempts = await self._dispatcher.open_stream(outcome.decision.plan, endpoint, upstream)
        except AllAttemptsFailed as exc:
            error = _upstream_error(exc)
            await self._accounting.settle(reservation, outcome.failed(exc.attempts, error.status, error.message))
            raise error from None
        except BaseException:
            self._spawn(self._accounting.settle(reservation, outcome.failed([], 499, "client disconnected")))
            raise
        ttft_ms = (time.perf_counter() - outcome.ctx.t0) * 1000
        trailer: dict[str, str] = {}
        payloads = self._relay(outcome, reservation, dep, attempts, first, rest, client_wants_usage, ttft_ms, trailer)
        return Streamed(headers=self._headers(outcome.ctx, outcome.decision, dep), payloads=payloads, trailer=trailer)

    async def _relay(self, outcome: Outcome, reservation: Any, dep: DeploymentSpec, attempts: list[Any],
                     first: bytes, rest: AsyncIterator[bytes], client_wants_usage: bool, ttft_ms: float,
                     trailer: dict[str, str]) -> AsyncIterator[bytes]:
        """Forward payloads, take the usage chunk for metering (hidden unless the client asked for it), and
        settle exactly once, however the stream ends: completed, upstream cut, or client gone."""
        usage_raw: dict[str, Any] | None = None
        text: list[str] = []
        completed = False
        error: str | None = None
        try:
            payload: bytes | None = first
            while payload is not None:
                chunk = orjson.loads(payload)
                if chunk.get("usage"):
                    usage_raw = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    piece = delta.get("content") if "delta" in choice else choice.get("text")
                    if isinstance(piece, str):
                        text.append(piece)
                    for call in delta.get("tool_calls") or ():
                        fn = call.get("function") or {}
                        text.append(fn.get("name") or "")
                        text.append(fn.get("arguments") or "")
                if client_wants_usage or chunk.get("choices") or not chunk.get("usage"):
                    yield payload
                payload = await anext(rest, None)
            completed = True
        except Exception as exc:  # upstream cut mid-stream: the client already has bytes, so no retry
            error = str(exc) or type(exc).__name__
            log.warning("stream from %s ended early: %s", dep.id, error)
        finally:
            usage = self._stream_usage(usage_raw, dep, outcome.features, text)
            status = 200 if completed else (502 if error is not None else 499)
            record = outcome.succeeded(dep, attempts, usage, ttft_ms=ttft_ms, status=status, error=error)
            # Settle in its own task: if the client went away this task is being cancelled, and the
            # settlement (and the upstream close) must still complete.
            task = self._spawn(self._finish_stream(rest, reservation, record))
            if completed:
                trailer["x-tiergate-cost-usd"] = format_usd(await asyncio.shield(task))
            elif error is not None:
                trailer["error"] = f"upstream stream ended early: {error}"

    def _stream_usage(self, raw: dict[str, Any] | None, dep: DeploymentSpec, features: RequestFeatures,
                      text: list[str]) -> Usage:
        if raw is not None:
            return self._accounting.normalize(raw, dep)
        return Usage(prompt_tokens=features.prompt_tokens,
                     completion_tokens=count_text("".join(text), dep.upstream_model), estimated=True)

    async def _finish_stream(self, rest: AsyncIterator[bytes], reservation: Any, record: Any) -> int:
        try:
            await rest.aclose()  # cancels the upstream call if it is still running
        except Exception:
            log.warning("closing the upstream stream of %s failed", record.request_id, exc_info=True)
        return await self._accounting.settle(reservation, record)

    def _spawn(self, work: Coroutine[Any, Any, int]) -> asyncio.Task[int]:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def drain(self) -> None:
        """Wait for background settlements (shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

