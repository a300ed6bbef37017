"""Shadow sampling: a share of a team's routed requests is also answered by the tier it was not routed to, a judge
grades the two answers, and the outcome store keeps the grades (``metering.outcomes``).

Which tiers: the team's floor is always the ``weak`` side. A request routed above the floor is compared with the
floor (did it need to go up?); a request kept on the floor is compared with the team's ceiling (should it have gone
up?). Shadow and judge calls are the team's spend: metered with purposes ``shadow`` and ``judge`` through the same
reserve -> dispatch -> settle path as the client's calls, under the team's budget caps. A call the caps would refuse
is skipped (nothing recorded); a call that fails is settled as failed (its usage record is never lost).

Nothing here reaches the client: ``observe`` only spawns a background task (tracked by the pipeline and drained at
shutdown), and every failure inside it is logged and swallowed.

The daily cap (``shadow_daily_usd``) counts shadow and judge spend: seeded from the ledger's committed records the
first time a team is shadowed on a UTC day, then added to as this process settles its own. Several workers each
see the others' spend only through that seed, so concurrent workers can overshoot by their in-flight calls.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from classifiers.features import FEATURE_NAMES, featurize
from metering.budgets.base import BudgetExceeded
from metering.money import usd_to_nanos
from metering.outcomes import Outcome
from metering.record import UsageRecord
from metering.service import Meter, Reservation
from pipeline import records
from pipeline.budget import BudgetPolicies, hold
from pipeline.errors import Ending, TiergateError
from pipeline.judge import JUDGE_MAX_TOKENS, Pairing, answer_text, judge_messages, parse_verdict
from pipeline.request import Request, RequestState
from pipeline.routing import Routing
from pipeline.upstream_call import body_for, upstream_body, upstream_failure
from router.config import LearningSettings
from router.decide import Decision, worst_case
from router.features import chat_features
from router.policy import DeploymentSpec, Policy
from upstream.dispatch import AllAttemptsFailed, Dispatcher

log = logging.getLogger("tiergate.shadow")

Settle = Callable[[RequestState, Reservation | None, UsageRecord, str | None], Awaitable[int]]
StatusOf = Callable[[Ending | TiergateError], int]
Spawn = Callable[[Coroutine[Any, Any, int]], "asyncio.Task[int]"]
_LEARNING_PURPOSES = ("shadow", "judge")
_NOT_SENT = ("stream", "stream_options", "n")  # the shadow is one non-streamed answer


def _sub(request: Request, body: dict[str, Any], purpose: str) -> Request:
    """A background call of its own: its own id, clock and latency (it starts after the client's ended)."""
    return replace(request, body=body, request_id=f"{request.request_id}.{purpose}", tier_header=None, span=None,
                   started_at=datetime.now(UTC), t0=time.perf_counter())


def judge_plan(policy: Policy, judge: str) -> tuple[DeploymentSpec, ...]:
    """The judge's deployments: a tier's (in order), or the one deployment the id names (checked at load)."""
    index = policy.tier_by_name.get(judge)
    if index is not None:
        return policy.tiers[index].deployments
    return tuple(d for t in policy.tiers for d in t.deployments if d.id == judge)[:1]


class Shadowing:
    def __init__(self, dispatcher: Dispatcher, routing: Routing, meter: Meter, budgets: BudgetPolicies,
                 settle: Settle, status_of: StatusOf, rng: random.Random | None = None) -> None:
        self._dispatcher = dispatcher
        self._routing = routing
        self._meter = meter
        self._budgets = budgets
        self._settle = settle
        self._status_of = status_of
        self._rng = rng or random.Random()
        self._spent: dict[tuple[str, date], int] = {}  # (team, UTC day) -> shadow + judge nano-dollars

    def observe(self, state: RequestState, record: UsageRecord, answer: str | None, spawn: Spawn) -> None:
        """After a client's chat request was settled: maybe shadow it, in the background. Never raises."""
        settings = state.team.settings.learning
        if (settings is None or state.purpose != "chat" or state.request.kind != "chat/completions"
                or answer is None or state.decision.score is None or state.team.floor == state.team.ceiling):
            return
        if any(state.tags.get(k) != v for k, v in settings.tags.items()):
            return
        if self._rng.random() >= settings.shadow_share:
            return
        pairing = Pairing.draw(self._rng)  # drawn here, in request order, so a seeded RNG replays exactly
        spawn(self._shadow(state, record, answer, settings, pairing))

    async def _shadow(self, state: RequestState, record: UsageRecord, answer: str, settings: LearningSettings,
                      pairing: Pairing) -> int:
        try:
            return await self._shadow_and_judge(state, record, answer, settings, pairing)
        except Exception:  # noqa: BLE001 -- the client has its answer; a learning sample is never worth an error
            log.warning("shadow of request %s failed", state.request.request_id, exc_info=True)
            return 0

    async def _shadow_and_judge(self, state: RequestState, record: UsageRecord, answer: str,
                                settings: LearningSettings, pairing: Pairing) -> int:
        team, policy, request = state.team, state.request.policy, state.request
        day = request.started_at.date()
        if await self._spent_today(team.name, day) >= usd_to_nanos(settings.shadow_daily_usd):
            return 0
        routed = policy.tier_by_name[record.tier]
        other = team.floor if routed > team.floor else team.ceiling
        weak, strong = sorted((routed, other))
        body = {k: v for k, v in state.body.items() if k not in _NOT_SENT}
        body["model"] = policy.tiers[other].name
        shadow = RequestState(_sub(request, body, "shadow"), team, state.tags, "shadow", body)
        shadow.features = chat_features(body)
        try:
            shadow.decision = self._routing.decide(shadow.request, team, shadow.features, body["model"], None)
        except TiergateError as exc:  # the other tier cannot serve this request (capabilities, context window)
            log.info("request %s not shadowed: %s", request.request_id, exc.code)
            return 0
        shadow_reply = await self._metered(shadow, day)
        shadow_answer = answer_text(shadow_reply) if shadow_reply is not None else None
        if shadow_answer is None:
            return 0
        weak_answer, strong_answer = (answer, shadow_answer) if routed == weak else (shadow_answer, answer)
        judged = self._judge_state(state, shadow, settings.judge,
                                   judge_messages(request.body["messages"], weak_answer, strong_answer, pairing))
        verdict = parse_verdict(answer_text(await self._metered(judged, day) or {}))
        if verdict is None:
            log.info("judge gave no verdict for request %s", request.request_id)
            return 0
        weak_score, strong_score = pairing.grades(verdict)
        messages = request.body["messages"]
        await self._meter.ledger.add_outcome(Outcome(
            request_id=request.request_id, team=team.name, created_at=datetime.now(UTC),
            features=tuple(float(x) for x in featurize(messages)), feature_names=FEATURE_NAMES,
            prior_score=float(state.decision.score or 0.0),
            model_id=state.decision.router_model or self._routing.classifier,
            weak_tier=policy.tiers[weak].name, strong_tier=policy.tiers[strong].name,
            routed_tier=policy.tiers[routed].name, ceiling_tier=policy.tiers[team.ceiling].name,
            weak_score=weak_score, strong_score=strong_score, judge=judged.decision.plan[0].id,
            messages=messages if settings.store_prompts else None,
        ))
        return 0

    @staticmethod
    def _judge_state(state: RequestState, shadow: RequestState, judge: str,
                     messages: list[dict[str, str]]) -> RequestState:
        """The judge's call, metered to the team. Its decision is built, not routed: the judge is the operator's
        choice and may sit outside the team's tiers."""
        request = state.request
        plan = judge_plan(request.policy, judge)
        body = {"model": judge, "messages": messages, "max_tokens": JUDGE_MAX_TOKENS, "temperature": 0}
        judged = RequestState(_sub(request, body, "judge"), state.team, state.tags, "judge", body)
        judged.features = chat_features(body)
        decision: Decision = shadow.decision
        judged.decision = replace(decision, tier=request.policy.tiers[plan[0].tier_index], plan=plan,
                                  reasons=("judge",), score=None, max_tokens=None, max_tokens_note=None,
                                  reserve_nanos=worst_case(judged.features, JUDGE_MAX_TOKENS, plan),
                                  sticky_held=False)
        return judged

    async def _metered(self, state: RequestState, day: date) -> dict[str, Any] | None:
        """One background call through reserve -> dispatch -> settle; its answer's body, or None. Over a cap it is
        skipped (no record); a failure is settled as failed (the record is kept)."""
        try:
            reservation = await hold(self._meter, self._budgets, state)
        except (BudgetExceeded, TiergateError) as exc:
            log.info("%s call for %s skipped: %s", state.purpose, state.request.request_id, type(exc).__name__)
            return None
        send_as = body_for(upstream_body(state.body, state.decision, False), "chat/completions", state.team.name,
                           None, False)
        try:
            dep, reply, attempts = await self._dispatcher.send(state.decision.plan, send_as)
            usage = records.usage_of(reply.body, dep, state.features.prompt_tokens)
        except AllAttemptsFailed as exc:
            error = upstream_failure(exc)
            await self._settle(state, reservation, records.failed(state, exc.attempts, self._status_of(error),
                                                                  error.message), None)
            return None
        except Exception as exc:  # an unusable answer: settled as failed, never lost
            await self._settle(state, reservation, records.failed(state, [], self._status_of("internal_error"),
                                                                  f"internal error: {type(exc).__name__}"), None)
            return None
        cost = await self._settle(state, reservation, records.served(state, dep, usage, ttft_ms=None,
                                                                     status=self._status_of("ok")), dep.provider)
        self._spent[(state.team.name, day)] = self._spent.get((state.team.name, day), 0) + cost
        return reply.body

    async def _spent_today(self, team: str, day: date) -> int:
        key = (team, day)
        if key not in self._spent:
            report = await self._meter.ledger.report(day, day + timedelta(days=1), team=team, group_by=("purpose",))
            self._spent[key] = sum(r.totals.cost_nanos for r in report.rows if r.keys["purpose"] in _LEARNING_PURPOSES)
            self._spent = {k: v for k, v in self._spent.items() if k[1] >= day - timedelta(days=1)}  # bounded
        return self._spent[key]
