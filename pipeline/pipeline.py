"""The request pipeline: admit -> trim -> score and decide (sticky or prefix-warm tier) -> response cache ->
budget gate -> dispatch with fallbacks -> settle.

An ingress hands ``run()`` a ``Request``; it returns a ``Served`` answer or a ``Streaming`` one (payloads only:
framing belongs to the ingress), or raises a ``TiergateError``. Every request that gets a routing decision produces
exactly one usage record, whatever its outcome; ``status_of`` (the ingress's error table) gives the status the
client got, which the record carries.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import orjson

from kvcache.store import KeyValueCache
from metering.budgets.base import BudgetExceeded
from metering.record import UsageRecord
from metering.service import Meter, Reservation
from pipeline import records
from pipeline.budget import BudgetPolicies, hold
from pipeline.errors import Ending, TiergateError
from pipeline.judge import answer_text
from pipeline.native import answered_natively, native_answer_usage, native_call, native_text, native_usage
from pipeline.prefix_affinity import HeldCosts, affinity_key, held_costs, routed, warm_tier
from pipeline.prefix_affinity import remember_tier as remember_prefix_tier
from pipeline.relay import StreamRelay, StreamState
from pipeline.request import Request, RequestState, admitted_tags, admitted_team
from pipeline.response_cache import cache_key, cacheable
from pipeline.result import Notes, Preview, Served, Streaming
from pipeline.routing import Routing
from pipeline.shadow import Shadowing
from pipeline.sticky import remember_tier, sticky_key, sticky_tier
from pipeline.telemetry import Tracing, finish_request
from pipeline.trimming import Trimmed, apply_plan
from pipeline.upstream_call import body_for, unusable_answer, upstream_body, upstream_failure
from router.context import plan_context
from router.features import chat_features, completion_features, embedding_features, system_prompt_tokens
from router.policy import DeploymentSpec
from router.prefix import prefix_key
from text.tokens import DEFAULT_MODEL
from upstream.dispatch import AllAttemptsFailed, BodyFor, Dispatcher

log = logging.getLogger("tiergate.pipeline")

StatusOf = Callable[[Ending | TiergateError], int]
# metrics: a settled record, whether stickiness held its tier, and (prefix affinity held it) its cost on the
# score's tier (``prefix_affinity.held_costs``)
Observe = Callable[[UsageRecord, bool, HeldCosts | None], None]


class Pipeline:
    def __init__(self, dispatcher: Dispatcher, routing: Routing, meter: Meter, budgets: BudgetPolicies,
                 cache: KeyValueCache, tracing: Tracing, observe: Observe, status_of: StatusOf,
                 shadow_rng: random.Random | None = None) -> None:
        self._dispatcher = dispatcher
        self._routing = routing
        self._meter = meter
        self._budgets = budgets
        self._cache = cache
        self._tracing = tracing
        self._observe = observe
        self._status_of = status_of
        self._ok = status_of("ok")
        self._background: set[asyncio.Task[int]] = set()
        self._shadowing = Shadowing(dispatcher, routing, meter, budgets, self._settle, status_of, shadow_rng)

    # ---- entry points -------------------------------------------------------------------------------------------

    async def run(self, request: Request) -> Served | Streaming:
        """Serve one request under its trace span; the span ends when the request is settled."""
        span = self._tracing.start_request(request.kind, request.body, request.request_id, request.principal.team)
        if span is None:
            return await self._run(request)
        with self._tracing.active(span):
            try:
                return await self._run(replace(request, span=span))
            except BaseException as exc:
                if span.is_recording():  # not yet ended by a settlement
                    finish_request(span, None, error=exc)
                raise

    def preview(self, request: Request) -> Preview:
        """What a chat request would get, without calling anything."""
        team = admitted_team(request)
        features = chat_features(request.body)
        decision = self._routing.decide(request, team, features, request.body["model"], request.body.get("messages"),
                                        affinity=prefix_key(request.body))
        return Preview(decision=decision, features=features, classifier=self._routing.classifier)

    async def drain(self) -> None:
        """Wait for background settlements, then export the spans still batched (shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._tracing.close()

    # ---- admit, trim, decide ------------------------------------------------------------------------------------

    async def _run(self, request: Request) -> Served | Streaming:
        team = admitted_team(request)
        tags = admitted_tags(request, team)
        if request.kind == "chat/completions":
            return await self._chat(RequestState(request, team, tags, "chat", request.body))
        body = request.body
        if request.kind == "completions":
            state = RequestState(request, team, tags, "chat", body)
            state.features = completion_features(body)
            state.decision = self._routing.decide(request, team, state.features, body["model"], None)
        else:  # embeddings: their own deployments, never the classifier or a chat tier (router.embeddings)
            state = RequestState(request, team, tags, "embedding", body)
            state.features = embedding_features(body)
            state.decision = self._routing.embedding(request, team, state.features, body["model"])
        return await self._call(state)

    async def _chat(self, state: RequestState) -> Served | Streaming:
        client = state.request.body
        settings = state.team.settings.context
        # Keys come from the client's messages, not the trimmed ones: the summary that trimming puts after the
        # system prompt changes whenever turns age out, and keying by it would move the conversation to a cold
        # provider cache (prompt_cache_key), deployment and tier each time.
        prefix = prefix_key(client)
        trimmed = await self._trim(state)
        if trimmed is None:
            state.features = chat_features(client)
        else:
            state.trimmed = trimmed
            state.body = {**client, "messages": trimmed.messages}
            # the summary sits after the system prompt; the audit wants the client's prompt
            state.features = replace(chat_features(state.body), system_tokens=system_prompt_tokens(client["messages"]))
        sticky = sticky_key(state, client)
        tier = await sticky_tier(self._cache, sticky) if sticky is not None else None
        shared = affinity_key(state, prefix)  # None (one comparison) unless the prefix is long enough to cache
        warm = await warm_tier(self._cache, shared) if shared is not None and tier is None and routed(state) else None
        state.decision = self._routing.decide(state.request, state.team, state.features, client["model"],
                                              client["messages"], affinity=prefix, sticky_tier=tier, prefix_tier=warm)
        result = await self._call(state, prefix, settings.provider_prefix_caching)
        if sticky is not None:
            await remember_tier(self._cache, sticky, state.decision.tier.index)
        if shared is not None:
            await remember_prefix_tier(self._cache, shared, state.decision.tier.index)
        return result

    async def _trim(self, state: RequestState) -> Trimmed | None:
        """Rolling summaries when the conversation exceeds the team's history budget."""
        team, request = state.team, state.request
        settings = team.settings.context
        if settings.history_budget_tokens is None:
            return None
        plan = plan_context(team.name, request.body["messages"], settings.history_budget_tokens,
                            settings.keep_last_turns)
        if plan is None:
            return None
        calls = 0

        async def complete(summary_messages: list[dict[str, Any]], max_tokens: int) -> str:
            nonlocal calls
            calls += 1
            # The cheapest tier writes summaries, metered to the team under its own request id and purpose.
            model = request.policy.tiers[team.floor].name
            body = {"model": model, "messages": summary_messages, "max_tokens": max_tokens, "temperature": 0}
            # The pipeline, not the client, takes the summary: it is delivered whether or not the client stays.
            sub = replace(request, body=body, request_id=f"{request.request_id}.summary{calls}", tier_header=None,
                          span=None, client_gone=None)
            summary = RequestState(sub, team, state.tags, "summarization", body)
            summary.features = chat_features(body)
            summary.decision = self._routing.decide(sub, team, summary.features, model, None)
            result = await self._call(summary)
            assert isinstance(result, Served)
            return str(result.body["choices"][0]["message"].get("content") or "")

        with self._tracing.span("tiergate.context") as span:
            trimmed = await apply_plan(plan, self._cache, complete, settings.summary_timeout_s, DEFAULT_MODEL)
            if span is not None:
                span.set_attributes({"tiergate.context.saved_tokens": trimmed.saved_tokens,
                                     "tiergate.context.summaries_written": trimmed.computed})
            return trimmed

    # ---- response cache, budget gate, dispatch ------------------------------------------------------------------

    async def _call(self, state: RequestState, prefix: str | None = None,
                    hint_provider: bool = False) -> Served | Streaming:
        team, kind = state.team, state.request.kind
        response_key = None
        if team.settings.context.response_cache and kind == "chat/completions" and cacheable(state.body):
            response_key = cache_key(team.name, state.body)
            with self._tracing.span("tiergate.cache") as span:
                hit = await self._cache.get(response_key)
                if span is not None:
                    span.set_attribute("tiergate.cache.hit", hit is not None)
            if hit is not None:
                return await self._from_cache(state, orjson.loads(hit))
        reservation = await self._reserve(state)
        stream = bool(state.body.get("stream")) and kind != "embeddings"
        send_as = body_for(upstream_body(state.body, state.decision, stream), kind, team.name, prefix,
                           hint_provider and prefix is not None, native_call(state.request, state.decision))
        try:
            if stream:
                return await self._stream(state, reservation, send_as)
            dep, reply, attempts = await self._dispatcher.send(state.decision.plan, send_as)
            api = state.request.api if answered_natively(state.request, dep) else "chat"
            try:
                usage = (records.usage_of(reply.body, dep, state.features.prompt_tokens) if api == "chat"
                         else native_answer_usage(reply.body, api, dep, state.features.prompt_tokens))
            except Exception as exc:  # a 200 whose body is not a completion (a JSON array, say): unusable
                log.warning("upstream answer unusable deployment=%s: %s", dep.id, type(exc).__name__)
                raise unusable_answer(dep, attempts, type(exc).__name__) from None
        except AllAttemptsFailed as exc:
            error = upstream_failure(exc)
            await self._settle(state, reservation, records.failed(state, exc.attempts, self._status_of(error),
                                                                  error.message))
            raise error from None
        except BaseException as exc:  # the reservation must still be settled, with the status the client gets
            ending: Ending
            ending, why = (("client_disconnected", "client disconnected") if isinstance(exc, asyncio.CancelledError)
                           else ("internal_error", f"internal error: {type(exc).__name__}"))  # the edge's 500
            self._spawn(self._settle(state, reservation, records.failed(state, [], self._status_of(ending), why)))
            raise
        record = await self._delivered(state, records.served(state, dep, usage, ttft_ms=None, status=self._ok,
                                                             response_id=records.response_id_of(reply.body)))
        cost = await self._settle(state, reservation, record, dep.provider)
        if record.status == self._ok and state.team.settings.learning is not None:  # text only when it may be shadowed
            text = answer_text(reply.body) if api == "chat" else native_text(reply.body, api) or None
            self._shadowing.observe(state, record, text, self._spawn)  # background, per policy
        if response_key is not None and api == "chat":  # the cache holds chat answers, which every format renders
            await self._cache.set(response_key, orjson.dumps(reply.body), team.settings.context.response_cache_ttl_s)
        return Served(self._notes(state, dep, len(attempts), cost), reply.body, api)

    async def _reserve(self, state: RequestState) -> Reservation:
        """Reserve the worst case. A refusal (over a cap, or a fail-closed team's budget store down) is recorded
        at $0, once, with the status the client gets."""
        try:
            return await self._hold(state)
        except TiergateError as error:
            await self._settle(state, None, records.failed(state, [], self._status_of(error), error.message))
            raise

    async def _hold(self, state: RequestState) -> Reservation:
        """Over a cap: refused, or with ``on_exceeded: downgrade`` every request is served by the team's cheapest
        tier (spend goes on, at the lowest price the team allows) and still metered."""
        try:
            return await hold(self._meter, self._budgets, state)
        except BudgetExceeded as exc:
            if state.team.settings.budgets.on_exceeded != "downgrade":
                raise TiergateError("budget_exceeded", str(exc)) from None
        team = state.team
        if state.decision.tier.index > team.floor:
            floor = state.request.policy.tiers[team.floor].name
            state.decision = self._routing.decide(state.request, team, state.features, floor, None)
        state.budget_downgraded = True
        return await hold(self._meter, self._budgets, state, enforce=False)

    async def _from_cache(self, state: RequestState, body: dict[str, Any]) -> Served:
        usage = records.usage_of(body, state.decision.plan[0], state.features.prompt_tokens)
        await self._settle(state, None, records.cached(state, usage, str(body.get("model", "")), self._ok,
                                                       records.response_id_of(body)))
        return Served(self._notes(state, None, 0, 0), body)

    async def _stream(self, state: RequestState, reservation: Reservation, send_as: BodyFor) -> Streaming:
        client_wants_usage = bool((state.body.get("stream_options") or {}).get("include_usage"))
        dep, first, rest, attempts = await self._dispatcher.open_stream(state.decision.plan, send_as)
        ttft_ms = (time.perf_counter() - state.request.t0) * 1000
        api = state.request.api if answered_natively(state.request, dep) else "chat"

        answer: list[str] = []  # the relayed text, for shadow sampling once the stream is settled

        def record_for(stream: StreamState, ending: Ending, error: str | None) -> UsageRecord:
            if stream.usage is None:
                usage = stream.estimated_usage(state.features.prompt_tokens, dep)
            else:
                usage = records.normalize(stream.usage, dep) if api == "chat" else native_usage(stream.usage, api)
            answer.extend(stream.text)
            return records.served(state, dep, usage, ttft_ms=ttft_ms, status=self._status_of(ending), error=error,
                                  response_id=stream.response_id)

        async def settle(record: UsageRecord) -> int:
            cost = await self._settle(state, reservation, record, dep.provider)
            if record.status == self._ok and state.team.settings.learning is not None:
                self._shadowing.observe(state, record, "".join(answer) or None, self._spawn)
            return cost

        relay = StreamRelay(first, rest, dep, client_wants_usage, record_for, settle, self._spawn, api,
                            x_tiergate_of(state, dep) if api == "chat" and client_wants_usage else None)
        return Streaming(self._notes(state, dep, len(attempts), None), relay, api)

    # ---- settle -------------------------------------------------------------------------------------------------

    async def _delivered(self, state: RequestState, record: UsageRecord) -> UsageRecord:
        """``record`` as the client will see it: 499 with the billed tokens when it hung up while the call ran
        (the call was paid, so it ran to the end and its cost goes in the ledger; the answer goes nowhere)."""
        gone = state.request.client_gone
        if gone is None or not await gone():
            return record
        return replace(record, status=self._status_of("client_disconnected"), error="client disconnected")

    async def _settle(self, state: RequestState, reservation: Reservation | None, record: UsageRecord,
                      provider: str | None = None) -> int:
        """The one place a request is settled: ledger and budget, metrics, then the request span is completed."""
        span = state.request.span
        with self._tracing.span("tiergate.metering", parent=span):
            await self._meter.settle(reservation, record, budget_in_background=True)
        self._observe(record, state.decision.sticky_held, held_costs(state.decision, record))
        finish_request(span, record, provider, failed=record.status != self._ok)
        return record.cost_nanos

    def _spawn(self, work: Coroutine[Any, Any, int]) -> asyncio.Task[int]:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    @staticmethod
    def _notes(state: RequestState, dep: DeploymentSpec | None, attempts: int, cost_nanos: int | None) -> Notes:
        """``dep`` is None when the response cache answered."""
        decision = state.decision
        return Notes(
            tier=dep.tier if dep is not None else decision.tier.name,
            model=dep.upstream_model if dep is not None else None,
            deployment=dep.id if dep is not None else None,
            score=decision.score,
            max_tokens=decision.max_tokens,
            max_tokens_note=decision.max_tokens_note,
            context=state.trimmed.note() if state.trimmed is not None else None,
            cache_hit=dep is None,
            sticky_held=decision.sticky_held,
            prefix_held=decision.prefix_held,
            budget_downgraded=state.budget_downgraded,
            attempts=attempts,
            cost_nanos=cost_nanos,
        )


def x_tiergate_of(state: RequestState, dep: DeploymentSpec) -> dict[str, Any]:
    """What a chat stream's usage chunk tells SDK users besides the cost (``x_tiergate``; the relay adds
    ``cost_usd`` once the stream is settled)."""
    return {"tier": dep.tier, "score": state.decision.score, "model": dep.upstream_model}
