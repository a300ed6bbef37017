"""Property tests of the pure routing decision over random policies and requests (hypothesis)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from metering.usage import worst_case_nanos
from router.config_loader import parse_policy
from router.decide import RoutingRefused, decide
from router.features import RequestFeatures
from upstream.health import HealthBook

MODELS = ["gpt-4o-mini", "gpt-4o", "o1", "gpt-4.1", "gpt-4.1-mini"]
CAPS = ["tools", "json_schema", "vision"]


@st.composite
def policies(draw: st.DrawFn) -> tuple[str, int]:
    n = draw(st.integers(min_value=1, max_value=5))
    lines = ["tiers:"]
    for i in range(n):
        caps = draw(st.lists(st.sampled_from(CAPS), unique=True))
        window = draw(st.sampled_from([4000, 16000, 128000]))
        lines += [f"  - name: t{i}", "    deployments:"]
        for d in range(draw(st.integers(min_value=1, max_value=3))):
            lines += [f"      - id: t{i}-d{d}", f"        model: simulated/{draw(st.sampled_from(MODELS))}",
                      f"        capabilities: [{', '.join(caps)}]", f"        context_window: {window}"]
    floor = draw(st.integers(min_value=0, max_value=n - 1))
    ceiling = draw(st.integers(min_value=floor, max_value=n - 1))
    thresholds = sorted(draw(st.lists(st.floats(min_value=0, max_value=1), min_size=n - 1, max_size=n - 1)))
    lines += ["teams:", "  a:", "    keys:", "      - id: k", "        sha256: '" + "0" * 64 + "'",
              f"    tiers: {{floor: t{floor}, ceiling: t{ceiling}}}",
              "    routing:", "      thresholds: {" + ", ".join(f"t{i + 1}: {t}" for i, t in enumerate(thresholds)) + "}"]
    return "\n".join(lines) + "\n", n


@settings(max_examples=300, deadline=None)
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
        decision = decide(policy, team, features, score, "auto", None, HealthBook(), random.Random(0))
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
    features = RequestFeatures(needs=frozenset(), prompt_tokens=10, max_output_tokens=None)
    if wanted >= n:
        return
    try:
        decision = decide(policy, team, features, None, f"t{wanted}", None, HealthBook())
    except RoutingRefused as exc:
        assert exc.kind in {"tier_forbidden", "no_capable_tier"}
        assert exc.kind == "no_capable_tier" or not team.floor <= wanted <= team.ceiling
        return
    assert team.floor <= decision.tier.index <= team.ceiling
    assert decision.tier.index >= wanted


def test_cooled_down_deployment_goes_last() -> None:
    text = ("tiers:\n  - name: s\n    deployments:\n      - {id: a, model: simulated/gpt-4o-mini}\n"
            "      - {id: b, model: simulated/gpt-4o-mini}\n"
            "teams:\n  x:\n    keys:\n      - {id: k, sha256: '" + "0" * 64 + "'}\n")
    policy = parse_policy(text)
    health = HealthBook(failures_to_cooldown=1)
    health.failure("a")
    features = RequestFeatures(needs=frozenset(), prompt_tokens=10, max_output_tokens=None)
    for seed in range(20):
        decision = decide(policy, policy.teams["x"], features, 0.5, "auto", None, health, random.Random(seed))
        assert [d.id for d in decision.plan] == ["b", "a"]


def test_max_tokens_default_and_clamp() -> None:
    text = ("tiers:\n  - name: s\n    deployments:\n      - {model: simulated/gpt-4o-mini}\n"
            "teams:\n  x:\n    keys:\n      - {id: k, sha256: '" + "0" * 64 + "'}\n"
            "    max_tokens: {default: 100, cap: 500}\n")
    policy = parse_policy(text)
    team = policy.teams["x"]

    def limit(requested: int | None) -> tuple[int | None, str | None]:
        features = RequestFeatures(needs=frozenset(), prompt_tokens=10, max_output_tokens=requested)
        decision = decide(policy, team, features, 0.1, "auto", None, HealthBook())
        return decision.max_tokens, decision.max_tokens_note

    assert limit(None) == (100, "default")
    assert limit(300) == (300, None)
    assert limit(9000) == (500, "clamped")
