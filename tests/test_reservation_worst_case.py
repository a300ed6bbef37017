"""A budget reservation is a worst case: whatever shape a request has and whichever deployment of its plan
serves it, the cost settled from the provider's usage never exceeds what was reserved (issue 11, item 2).

Fast and in process: the real features, ``decide()``, the real dispatcher falling back across in-process
simulator deployments (some made to fail), and the real pricing of the answer (``pipeline.records.normalize`` and
``pipeline.records.served``, which computes the ledger's ``cost_nanos``).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering.record import UsageRecord
from metering.usage import Usage, cost_nanos, worst_case_nanos
from pipeline import records
from pipeline.request import Request, RequestState
from pipeline.upstream_call import apply_max_tokens
from router.config_loader import parse_policy
from router.decide import Decision, RouteRequest, RoutingRefused, decide
from router.features import RequestFeatures, chat_features, completion_features, embedding_features
from router.health_snapshot import HealthSnapshot
from router.policy import Policy
from upstream.dispatch import AllAttemptsFailed, Dispatcher
from upstream.health import HealthBook
from upstream.pool import UpstreamPool

TIERS = (("small", "gpt-4o-mini"), ("mid", "gpt-4o"), ("frontier", "o1"))  # cheapest first; o1 reasons
KEY = "0" * 64


def policy_text(failing: list[list[bool]], max_attempts: int, default: int | None, cap: int | None,
                downgrade: bool, floor: int = 0) -> str:
    """Three simulated tiers; a deployment marked failing answers every request with a 500."""
    lines = ["server:", f"  max_attempts: {max_attempts}", "  cooldown_after_failures: 1000", "tiers:"]
    for (tier, model), deployments in zip(TIERS, failing):
        lines += [f"  - name: {tier}", "    deployments:"]
        for d, fails in enumerate(deployments):
            lines += [f"      - id: {tier}-{d}", f"        model: simulated/{model}"]
            if fails:
                lines.append("        simulator: {fail_rate: 1.0, fail_kind: '500'}")
    limits = ", ".join(f"{k}: {v}" for k, v in (("default", default), ("cap", cap)) if v is not None)
    lines += ["teams:", "  t:", "    keys:", f"      - {{id: k, sha256: '{KEY}'}}",
              f"    tiers: {{floor: {TIERS[floor][0]}}}",
              "    routing:", "      thresholds: {mid: 0.4, frontier: 0.7}",
              f"      allow_downgrade_on_failure: {str(downgrade).lower()}",
              f"    max_tokens: {{{limits}}}" if limits else ""]
    return "\n".join(line for line in lines if line) + "\n"


def features_of(endpoint: str, body: dict[str, Any]) -> RequestFeatures:
    if endpoint == "chat/completions":
        return chat_features(body)
    return completion_features(body) if endpoint == "completions" else embedding_features(body)


async def serve(policy: Policy, endpoint: str, body: dict[str, Any], decision: Decision) -> tuple[Any, Usage] | None:
    """Carry out the decision as the gateway does; the serving deployment and its usage, or None if all failed."""
    server = policy.config.server
    pool = UpstreamPool(server.upstream_timeout_s, server.connect_timeout_s)
    dispatcher = Dispatcher(pool, HealthBook(), server.max_attempts, server.retry_budget_s, server.upstream_timeout_s)
    upstream = apply_max_tokens(body, decision)
    try:
        dep, reply, _ = await dispatcher.send(decision.plan,
                                              lambda d: (endpoint, {**upstream, "model": d.upstream_model}, None))
    except AllAttemptsFailed:
        return None
    finally:
        await pool.close()
    return dep, records.normalize(reply.body["usage"], dep)


def settled(policy: Policy, endpoint: str, body: dict[str, Any], score: float | None = None,
            ) -> tuple[Decision, RequestFeatures, UsageRecord, Usage] | None:
    """(decision, features, the ledger's record, the provider's usage), or None if every attempt failed."""
    team = policy.teams["t"]
    features = features_of(endpoint, body)
    decision = decide(policy, team, RouteRequest(features, body["model"], score), HealthSnapshot(), random.Random(0))
    served = asyncio.run(serve(policy, endpoint, body, decision))
    if served is None:
        return None
    dep, usage = served
    principal = policy.keys[KEY]
    request = Request(kind=endpoint, body=body, principal=principal, policy=policy, request_id="r", tags={})
    state = RequestState(request, team, {}, "chat", body)
    state.features, state.decision = features, decision
    return decision, features, records.served(state, dep, usage, ttft_ms=None, status=200), usage


# ---- request shapes ------------------------------------------------------------------------------------------------

texts = st.text(max_size=120)
token_arrays = st.lists(st.integers(min_value=0, max_value=199_999), min_size=1, max_size=60)
limits = st.one_of(st.none(), st.integers(min_value=1, max_value=300))


@st.composite
def chat_bodies(draw: st.DrawFn, model: str) -> dict[str, Any]:
    roles = st.sampled_from(["system", "user", "assistant"])
    messages = draw(st.lists(st.fixed_dictionaries({"role": roles, "content": texts}), min_size=1, max_size=3))
    messages.append({"role": "user", "content": draw(texts)})
    body: dict[str, Any] = {"model": model, "messages": messages, "n": draw(st.integers(min_value=1, max_value=8))}
    key = draw(st.sampled_from(["max_tokens", "max_completion_tokens", None]))
    if key is not None and (limit := draw(limits)) is not None:
        body[key] = limit
    if draw(st.booleans()):
        body["response_format"] = {"type": "json_object"}
    return body


@st.composite
def completion_bodies(draw: st.DrawFn, model: str) -> dict[str, Any]:
    prompt = draw(st.one_of(
        texts.filter(bool),
        token_arrays,
        st.lists(texts.filter(bool), min_size=1, max_size=4),
        st.lists(token_arrays, min_size=1, max_size=4),
        st.lists(st.one_of(texts.filter(bool), token_arrays), min_size=1, max_size=4),
    ))
    n = draw(st.integers(min_value=1, max_value=6))
    body: dict[str, Any] = {"model": model, "prompt": prompt, "n": n}
    if (limit := draw(limits)) is not None:
        body["max_tokens"] = limit
    if draw(st.booleans()):
        body["best_of"] = draw(st.integers(min_value=n, max_value=8))
    return body


@st.composite
def embedding_bodies(draw: st.DrawFn, model: str) -> dict[str, Any]:
    value = draw(st.one_of(texts.filter(bool), token_arrays, st.lists(st.one_of(texts.filter(bool), token_arrays),
                                                                     min_size=1, max_size=6)))
    return {"model": model, "input": value}


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[str, str, dict[str, Any], float | None]:
    failing = [draw(st.lists(st.booleans(), min_size=1, max_size=2)) for _ in TIERS]
    text = policy_text(failing, draw(st.integers(min_value=1, max_value=5)), draw(limits), draw(limits),
                       draw(st.booleans()), floor=draw(st.integers(min_value=0, max_value=2)))
    endpoint = draw(st.sampled_from(["chat/completions", "completions", "embeddings"]))
    model = draw(st.sampled_from(["auto", "small", "mid", "frontier", "gpt-4o-mini", "gpt-4o"]))
    strategy = {"chat/completions": chat_bodies, "completions": completion_bodies,
                "embeddings": embedding_bodies}[endpoint]
    score = draw(st.floats(min_value=0, max_value=1)) if model == "auto" else None
    return text, endpoint, draw(strategy(model)), score


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios())
def test_settled_cost_never_exceeds_the_reservation(scenario: tuple[str, str, dict[str, Any], float | None]) -> None:
    text, endpoint, body, score = scenario
    policy = parse_policy(text)
    try:
        result = settled(policy, endpoint, body, score)
    except RoutingRefused:
        return  # refused before anything was reserved (a pin outside the team's tiers, say)
    if result is None:
        return  # every deployment failed: nothing billed, the reservation is released
    decision, features, record, usage = result
    cost = record.cost_nanos
    assert features.prompt_tokens == usage.prompt_tokens  # the prompt is counted exactly, token arrays included
    assert cost <= decision.reserve_nanos, (
        f"settled {cost} > reserved {decision.reserve_nanos} for {endpoint} {body} via {[d.id for d in decision.plan]}")
    # and the worst the provider may bill (every completion runs to its limit) on any deployment of the plan
    per_completion = decision.max_tokens or features.max_output_tokens
    if per_completion is not None:
        worst = Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=features.completions * per_completion)
        assert max(cost_nanos(worst, d.price) for d in decision.plan) <= decision.reserve_nanos


# ---- the reproductions -------------------------------------------------------------------------------------

def _two_tiers(fail_small: bool = False) -> Policy:
    return parse_policy(policy_text([[fail_small], [False], [False]], 3, None, None, False))


def test_n_is_priced_in() -> None:
    """Was: ``{"model": "mid", "n": 128, "max_tokens": 256}`` reserved $0.00259 and cost $0.10449 (40x)."""
    body = {"model": "mid", "n": 128, "max_tokens": 256, "messages": [{"role": "user", "content": "Tell a story."}]}
    result = settled(_two_tiers(), "chat/completions", body)
    assert result is not None
    decision, _, record, usage = result
    cost = record.cost_nanos
    assert cost > worst_case_nanos(usage.prompt_tokens, 256, decision.plan[0].price)  # the old, n-blind reservation
    assert cost <= decision.reserve_nanos
    assert decision.reserve_nanos >= cost_nanos(Usage(usage.prompt_tokens, 128 * 256), decision.plan[0].price)


def test_every_prompt_and_token_array_of_a_completions_batch_is_priced_in() -> None:
    """Was: 8 prompts with ``n: 16`` cost 48x the reservation; token-array prompts counted as 0 tokens."""
    prompts: list[Any] = [f"Prompt number {i}: write a haiku about budgets." for i in range(6)]
    prompts += [list(range(500)), list(range(900))]
    body = {"model": "mid", "prompt": prompts, "n": 16, "max_tokens": 64}
    features = completion_features(body)
    assert features.completions == 8 * 16
    assert features.longest_prompt_tokens == 900  # the context window check sees one prompt, not the batch
    result = settled(_two_tiers(), "completions", body)
    assert result is not None
    decision, features, record, usage = result
    cost = record.cost_nanos
    assert usage.prompt_tokens == features.prompt_tokens > 1400
    assert cost <= decision.reserve_nanos


def test_a_fallback_to_a_dearer_tier_is_priced_in() -> None:
    """Was: only the first deployment was priced, so small -> mid fallbacks settled above their reservation."""
    policy = _two_tiers(fail_small=True)
    body = {"model": "small", "n": 4, "max_tokens": 200,
            "messages": [{"role": "user", "content": "Explain budgets at length."}]}
    result = settled(policy, "chat/completions", body)
    assert result is not None
    decision, features, record, _ = result
    cost = record.cost_nanos
    assert [d.tier for d in decision.plan] == ["small", "mid", "frontier"]
    frontier = decision.plan[-1].price  # the dearest deployment the request may end on
    assert decision.reserve_nanos == worst_case_nanos(features.prompt_tokens, 4 * 200, frontier)
    assert record.deployment == "mid-0"  # small failed; mid answered
    assert cost > worst_case_nanos(features.prompt_tokens, 4 * 200, decision.plan[0].price)  # the old reservation
    assert cost <= decision.reserve_nanos


def test_the_plan_stops_at_max_attempts() -> None:
    """A deployment the dispatcher will never try does not inflate the reservation."""
    policy = parse_policy(policy_text([[False], [False], [False]], 1, None, None, False))
    features = chat_features({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10})
    decision = decide(policy, policy.teams["t"], RouteRequest(features, "small"), HealthSnapshot(),
                      random.Random(0))
    assert [d.id for d in decision.plan] == ["small-0"]
    assert decision.reserve_nanos == worst_case_nanos(features.prompt_tokens, 10, decision.plan[0].price)


def test_embeddings_reserve_their_inputs_and_no_output() -> None:
    policy = parse_policy(policy_text([[False], [False], [False]], 1, 100, None, False))
    features = embedding_features({"input": ["one two three", [1, 2, 3, 4], "five"]})
    assert features.prompt_tokens == 3 + 4 + 1 and features.completions == 0
    decision = decide(policy, policy.teams["t"], RouteRequest(features, "small"), HealthSnapshot(),
                      random.Random(0))
    assert decision.max_tokens is None  # the team's max_tokens default must not reach an embeddings body
    assert decision.reserve_nanos == worst_case_nanos(features.prompt_tokens, 0, decision.plan[0].price)


@pytest.mark.parametrize(("prompt", "tokens", "prompts"), [
    ("hello world", [2], 1),
    ([15339, 1917, 0], [3], 1),  # one token array: its length
    ([[1, 2], [3, 4, 5]], [2, 3], 2),
    (["hello world", [7, 8, 9, 10]], [2, 4], 2),
])
def test_prompt_shapes_are_counted_exactly(prompt: Any, tokens: list[int], prompts: int) -> None:
    features = completion_features({"prompt": prompt, "n": 3, "max_tokens": 5})
    assert features.prompt_tokens == sum(tokens)
    assert features.completions == prompts * 3
    assert features.longest_prompt_tokens == max(tokens)


def test_the_larger_output_limit_bounds_the_reservation() -> None:
    """With both limits sent, the provider may honour either: the reservation takes the larger."""
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 500, "max_completion_tokens": 20, "n": 2}
    features = chat_features(body)
    assert features.max_output_tokens == 500 and features.completions == 2
