"""Property tests of the pure routing decision over random policies and requests (hypothesis)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from metering.usage import worst_case_nanos
from router.config_loader import parse_policy
from router.decide import RouteRequest, RoutingRefused, decide
from router.features import RequestFeatures
from router.health_snapshot import HealthSnapshot
from upstream.health import HealthBook

MODELS = ["gpt-4o-mini", "gpt-4o", "o1", "gpt-4.1", "gpt-4.1-mini"]
CAPS = ["tools", "json_schema", "vision"]
KEY = "        sha256: '" + "0" * 64 + "'"
SMALL = RequestFeatures(needs=frozenset(), prompt_tokens=10, max_output_tokens=None)


@st.composite
def policies(draw: st.DrawFn) -> tuple[str, int]:
    """A policy of 1-5 tiers (the last one may be served by a ``model_list`` alias) and team ``a`` with random
    bounds, thresholds and pinning rules."""
    n = draw(st.integers(min_value=1, max_value=5))
    lines = ["tiers:"]
    aliased = draw(st.booleans())
    for i in range(n):
        caps = draw(st.lists(st.sampled_from(CAPS), unique=True))
        window = draw(st.sampled_from([4000, 16000, 128000]))
        lines += [f"  - name: t{i}", "    deployments:"]
        for d in range(draw(st.integers(min_value=1, max_value=3))):
            lines += [f"      - id: t{i}-d{d}", f"        model: simulated/{draw(st.sampled_from(MODELS))}",
                      f"        capabilities: [{', '.join(caps)}]", f"        context_window: {window}"]
        if aliased and i == n - 1:
            lines += ["    models: [house-model]"]
    floor = draw(st.integers(min_value=0, max_value=n - 1))
    ceiling = draw(st.integers(min_value=floor, max_value=n - 1))
    thresholds = sorted(draw(st.lists(st.floats(min_value=0, max_value=1), min_size=n - 1, max_size=n - 1)))
    pinnable = draw(st.none() | st.lists(st.sampled_from(MODELS + ["t0-d0", "house-model"]), unique=True))
    lines += ["teams:", "  a:", "    keys:", "      - id: k", KEY,
              f"    tiers: {{floor: t{floor}, ceiling: t{ceiling}}}",
              "    routing:",
              "      thresholds: {" + ", ".join(f"t{i + 1}: {t}" for i, t in enumerate(thresholds)) + "}",
              f"      allow_pinning: {str(draw(st.booleans())).lower()}"]
    if pinnable is not None:
        lines.append(f"      pinnable_models: [{', '.join(pinnable)}]")
    if aliased:
        lines += ["model_list:", "  - model_name: house-model", "    litellm_params: {model: simulated/gpt-4o}",
                  "    model_info: {max_input_tokens: 128000}"]
    return "\n".join(lines) + "\n", n


# Example counts: at 150 / 100 / 100 every run reached the same lines of router/ and metering/ as at 300 / 100 / 200
# (coverage.py, three runs each), at half the CPU; hypothesis replays any failing example from its database.
@settings(max_examples=150, deadline=None)
@given(policies(), st.floats(min_value=0, max_value=1), st.lists(st.sampled_from(CAPS), unique=True),
       st.integers(min_value=1, max_value=200_000))
def test_choice_is_capable_bounded_and_cheapest(spec: tuple[str, int], score: float, needs: list[str],
                                                prompt_tokens: int) -> None:
    text, _ = spec
    policy = parse_policy(text)
    team = policy.teams["a"]
    features = RequestFeatures(needs=frozenset(needs), prompt_tokens=prompt_tokens, max_output_tokens=None)
    tiers = policy.tiers

    def capable(i: int) -> bool:
        return set(needs) <= tiers[i].capabilities and prompt_tokens < tiers[i].context_window

    score_tier = max([0] + [i for i, t in enumerate(team.thresholds) if t is not None and score >= t])
    start = min(max(score_tier, team.floor), team.ceiling)
    expected = next((i for i in range(start, team.ceiling + 1) if capable(i)), None)
    try:
        decision = decide(policy, team, RouteRequest(features, "auto", score), HealthSnapshot(), random.Random(0))
    except RoutingRefused as exc:
        assert expected is None and exc.kind == "no_capable_tier"
        return
    chosen = decision.tier.index
    assert team.floor <= chosen <= team.ceiling
    assert capable(chosen)
    assert chosen == expected  # no cheaper satisfying tier at or above the score's tier was skipped
    assert all(d.tier_index >= chosen for d in decision.plan)  # fallbacks never go down by default
    assert decision.plan[0].tier_index == chosen
    assert len(decision.plan) <= policy.config.server.max_attempts  # the dispatcher tries no more
    # the reservation covers the worst case (no max_tokens: 4096 output tokens) on any deployment of the plan
    assert decision.reserve_nanos == max(worst_case_nanos(prompt_tokens, 4096, d.price) for d in decision.plan)


@settings(max_examples=100, deadline=None)
@given(policies(), st.integers(min_value=0, max_value=4))
def test_tier_requests_outside_the_range_are_refused(spec: tuple[str, int], wanted: int) -> None:
    text, n = spec
    policy = parse_policy(text)
    team = policy.teams["a"]
    if wanted >= n:
        return
    try:
        decision = decide(policy, team, RouteRequest(SMALL, f"t{wanted}"), HealthSnapshot(), random.Random(0))
    except RoutingRefused as exc:
        assert exc.kind in {"tier_forbidden", "no_capable_tier"}
        assert exc.kind == "no_capable_tier" or not team.floor <= wanted <= team.ceiling
        return
    assert team.floor <= decision.tier.index <= team.ceiling
    assert decision.tier.index >= wanted


@settings(max_examples=100, deadline=None)
@given(policies())
def test_listed_models_are_exactly_the_names_decide_accepts(spec: tuple[str, int]) -> None:
    """``/v1/models`` lists ``policy.allowed_models(team)``: every listed name routes, every other name the policy
    knows is refused by a rule (and an unknown one is not found)."""
    text, _ = spec
    policy = parse_policy(text)
    team = policy.teams["a"]
    listed = policy.allowed_models("a")
    assert listed[0] == "auto" and len(set(listed)) == len(listed)
    known = {"auto", *policy.tier_by_name, *policy.by_name}
    assert set(policy.allowed_models(None)) == known  # an admin key sees every name
    for name in sorted(known | {"no-such-model"}):
        try:
            # no needs and a tiny prompt: every tier can serve it, so only the naming rules can refuse
            decision = decide(policy, team, RouteRequest(SMALL, name, 0.5), HealthSnapshot(), random.Random(0))
        except RoutingRefused as exc:
            assert name not in listed, (name, exc.message)
            assert exc.kind == ("model_not_found" if name not in known else
                                "tier_forbidden" if name in policy.tier_by_name else "pin_forbidden")
            continue
        assert name in listed
        assert team.floor <= decision.tier.index <= team.ceiling
        if name in team.pins:
            assert set(decision.plan) <= set(policy.by_name[name])


def test_cooled_down_deployment_goes_last() -> None:
    text = ("tiers:\n  - name: s\n    deployments:\n      - {id: a, model: simulated/gpt-4o-mini}\n"
            "      - {id: b, model: simulated/gpt-4o-mini}\n"
            "teams:\n  x:\n    keys:\n      - {id: k, sha256: '" + "0" * 64 + "'}\n")
    policy = parse_policy(text)
    request = RouteRequest(SMALL, "auto", 0.5)
    cooling = HealthSnapshot(now=100.0, cooldown_until={"a": 130.0})
    for seed in range(20):
        decision = decide(policy, policy.teams["x"], request, cooling, random.Random(seed))
        assert [d.id for d in decision.plan] == ["b", "a"]
    # decide() reads time only from the snapshot: the same cooldown has passed at a later ``now``
    later = HealthSnapshot(now=130.0, cooldown_until={"a": 130.0})
    plans = {tuple(d.id for d in decide(policy, policy.teams["x"], request, later, random.Random(s)).plan)
             for s in range(20)}
    assert plans == {("a", "b"), ("b", "a")}


def test_same_inputs_same_decision() -> None:
    text = ("tiers:\n  - name: s\n    deployments:\n" + "".join(
        f"      - {{id: d{i}, model: simulated/gpt-4o-mini}}\n" for i in range(5)) +
        "teams:\n  x:\n    keys:\n      - {id: k, sha256: '" + "0" * 64 + "'}\n")
    policy = parse_policy(text)
    health = HealthSnapshot(now=5.0, inflight={"d1": 3})
    for affinity in (None, "prefix-1"):
        request = RouteRequest(SMALL, "auto", 0.5, affinity=affinity)
        runs = [decide(policy, policy.teams["x"], request, health, random.Random(7)) for _ in range(3)]
        assert runs[0] == runs[1] == runs[2]


def test_health_book_snapshot_follows_its_clock() -> None:
    """The book's cooldowns reach decide() through ``snapshot()``, timed by the book's clock (no sleeping)."""
    now = [1000.0]
    book = HealthBook(failures_to_cooldown=2, cooldown_s=30.0, clock=lambda: now[0])
    book.failure("a")
    assert book.snapshot().healthy("a")  # one failure of two
    book.failure("a")
    assert not book.snapshot().healthy("a")
    now[0] += 29.9
    assert not book.snapshot().healthy("a")
    now[0] += 0.1
    assert book.snapshot().healthy("a")
    book.failure("b", retry_after=5.0)  # a 429's retry-after cools at once, bounded by 4 cooldowns
    assert not book.snapshot().healthy("b")
    book.started("b")
    assert book.snapshot().load("b") == 1


def test_max_tokens_default_and_clamp() -> None:
    text = ("tiers:\n  - name: s\n    deployments:\n      - {model: simulated/gpt-4o-mini}\n"
            "teams:\n  x:\n    keys:\n      - {id: k, sha256: '" + "0" * 64 + "'}\n"
            "    max_tokens: {default: 100, cap: 500}\n")
    policy = parse_policy(text)
    team = policy.teams["x"]

    def limit(requested: int | None) -> tuple[int | None, str | None]:
        features = RequestFeatures(needs=frozenset(), prompt_tokens=10, max_output_tokens=requested)
        decision = decide(policy, team, RouteRequest(features, "auto", 0.1), HealthSnapshot(), random.Random(0))
        return decision.max_tokens, decision.max_tokens_note

    assert limit(None) == (100, "default")
    assert limit(300) == (300, None)
    assert limit(9000) == (500, "clamped")
