"""Cache-aware routing across conversations (issue 12): requests of different conversations that share a long
static prefix and score near a threshold stay on the cheaper tier where that prefix is cached, unless the score
passes the threshold by ``context.prefix_affinity_margin``.

Pure ``decide()`` tests, then one end to end: a real proxy on loopback HTTP, the demo policy with its in-process
simulator, which reports cached tokens per prompt prefix the way OpenAI does (``simulator.prefix_cache``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from metering.money import NANOS_PER_USD
from metering.prices import Price
from router.config_loader import parse_policy
from router.decide import CACHE_MIN_TOKENS, Decision, RouteRequest, decide
from router.features import RequestFeatures
from router.health_snapshot import HealthSnapshot
from router.policy import Policy
from router.scoring import load_scorer
from tests.conftest import DEMO_KEYS, ROOT, Server, free_port, start_server
from text.tokens import count_text

KEY = "        sha256: '" + "0" * 64 + "'"
LONG = RequestFeatures(needs=frozenset(), prompt_tokens=2100, max_output_tokens=None, system_tokens=2048)
TOOLS = RequestFeatures(needs=frozenset({"tools"}), prompt_tokens=1300, max_output_tokens=None, system_tokens=40,
                        tool_tokens=1200)
SHORT = RequestFeatures(needs=frozenset(), prompt_tokens=2100, max_output_tokens=None, system_tokens=900)


def _policy(context: str = "prefix_affinity_margin: 0.05", floor: str = "small") -> Policy:
    """Three tiers priced as gpt-4o-mini / gpt-4o / o1; thresholds mid 0.3, frontier 0.6."""
    lines = ["tiers:"]
    for name, model in (("small", "gpt-4o-mini"), ("mid", "gpt-4o"), ("frontier", "o1")):
        lines += [f"  - name: {name}", "    deployments:", f"      - id: {name}-d", f"        model: simulated/{model}",
                  "        capabilities: [tools]"]
    lines += ["teams:", "  a:", "    keys:", "      - id: k", KEY, f"    tiers: {{floor: {floor}, ceiling: frontier}}",
              "    routing:", "      thresholds: {mid: 0.3, frontier: 0.6}", f"    context: {{{context}}}"]
    return parse_policy("\n".join(lines) + "\n")


def _decide(policy: Policy, score: float | None, prefix_tier: int | None, features: RequestFeatures = LONG,
            sticky_tier: int | None = None, model: str = "auto") -> Decision:
    request = RouteRequest(features, model, score, sticky_tier=sticky_tier, prefix_tier=prefix_tier)
    return decide(policy, policy.teams["a"], request, HealthSnapshot(), random.Random(0))


def test_near_threshold_request_stays_on_the_warm_cheaper_tier() -> None:
    policy = _policy()
    decision = _decide(policy, 0.33, prefix_tier=0)  # mid by score, 0.03 past its threshold: within 0.05
    assert decision.tier.name == "small" and decision.plan[0].id == "small-d"
    assert decision.prefix_held and not decision.sticky_held
    assert decision.scored_tier is not None and decision.scored_tier.name == "mid"
    assert any("cache holds this prompt prefix" in reason for reason in decision.reasons), decision.reasons
    # tools count towards the prefix: a short system prompt with a long tool list is held too
    assert _decide(policy, 0.33, prefix_tier=0, features=TOOLS).prefix_held


def test_crossing_by_more_than_the_margin_moves() -> None:
    policy = _policy()
    moved = _decide(policy, 0.36, prefix_tier=0)  # 0.06 past mid's threshold
    assert moved.tier.name == "mid" and not moved.prefix_held and moved.scored_tier is None
    # a score past frontier's threshold crossed mid's (the boundary above the warm tier) by far more than the margin
    assert _decide(policy, 0.62, prefix_tier=0).tier.name == "frontier"


def test_stickiness_leaves_from_the_boundary_above_its_tier() -> None:
    """Conversation stickiness shares the rule: a score past frontier's threshold crossed mid's by more than the
    margin (0.1), so the conversation leaves small (it used to be compared with frontier's threshold + margin)."""
    policy = _policy()
    assert _decide(policy, 0.62, prefix_tier=None, sticky_tier=0).tier.name == "frontier"
    held = _decide(policy, 0.38, prefix_tier=None, sticky_tier=0)
    assert held.tier.name == "small" and held.sticky_held and not held.prefix_held


def test_short_prefixes_are_never_held() -> None:
    policy = _policy()
    assert SHORT.system_tokens + SHORT.tool_tokens < CACHE_MIN_TOKENS <= SHORT.prompt_tokens
    decision = _decide(policy, 0.33, prefix_tier=0, features=SHORT)
    assert decision.tier.name == "mid" and not decision.prefix_held


def test_never_held_on_a_dearer_tier() -> None:
    """gpt-4o's cache reads cost more than gpt-4o-mini's uncached input: holding a small request on a warm mid
    would only spend."""
    policy = _policy()
    decision = _decide(policy, 0.29, prefix_tier=1)
    assert decision.tier.name == "small" and not decision.prefix_held
    mid = policy.tiers[1].deployments[0].price
    small = policy.tiers[0].deployments[0].price
    assert isinstance(mid, Price) and mid.cached_input > small.input


def test_off_pinned_floor_and_conversation_tier_win() -> None:
    assert _decide(_policy("prefix_affinity_margin: 0"), 0.31, prefix_tier=0).tier.name == "mid"
    policy = _policy()
    assert _decide(policy, None, prefix_tier=0, model="mid").tier.name == "mid"  # the client chose the tier
    # the conversation's own tier comes first: stickiness moves it to mid, the prefix's small does not hold it
    sticky = _decide(policy, 0.31, prefix_tier=0, sticky_tier=1)
    assert sticky.tier.name == "mid" and not sticky.prefix_held
    # a warm tier under the team's floor is not one it may use
    assert _decide(_policy(floor="mid"), 0.61, prefix_tier=0).tier.name == "frontier"


# ---- end to end: a real proxy, the demo policy, the simulator's prefix cache ----------------------------------

SYSTEM = "\n".join(
    f"Policy {i}: Employees must submit expense reports within {i + 3} days of purchase, attach receipts, and "
    f"obtain manager approval for amounts over ${(i + 1) * 50}. Exceptions require written sign-off from finance."
    for i in range(1, 55))  # ~2k tokens
LOW = "What is policy 7?"
HIGH = ("Explain step by step how an employee who bought a $400 laptop on day 2 should comply with policy 5, and "
        "what happens if the manager is away.")
ADMIN = {"authorization": f"Bearer {DEMO_KEYS['admin']}"}


def _messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def scores() -> tuple[float, float]:
    """The two questions' scores by the shipped model, which the proxy also runs (its thresholds follow them, so a
    retrained default model does not silently void the test)."""
    scorer = load_scorer("default")
    low, high = scorer.score(_messages(LOW)), scorer.score(_messages(HIGH))
    assert high - low >= 0.01, (low, high)  # the pair must straddle some threshold
    return low, high


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, scores: tuple[float, float]) -> Iterator[Server]:
    """The demo policy with research's and support's mid threshold between the two scores; research holds a warm
    prefix by a margin above the gap, support has prefix affinity off (the control)."""
    low, high = scores
    tmp = tmp_path_factory.mktemp("prefix")
    threshold = round((low + high) / 2, 4)
    margin = round(high - low, 4)
    text = (ROOT / "configs" / "demo.yaml").read_text()
    for old, new in [("sqlite:///var/tiergate-demo.db", f"sqlite:///{tmp}/ledger.db"),
                     ("thresholds: {mid: 0.321, frontier: 0.416}", f"thresholds: {{mid: {threshold}, frontier: 0.9}}"),
                     ("      thresholds: {mid: 0.321}\n", f"      thresholds: {{mid: {threshold}}}\n"),
                     ("      allow_pinning: false\n",
                      "      allow_pinning: false\n    context: {prefix_affinity_margin: 0}\n"),
                     ("      provider_prefix_caching: true\n",
                      f"      provider_prefix_caching: true\n      prefix_affinity_margin: {margin}\n")]:
        assert old in text, old
        text = text.replace(old, new, 1)
    config = tmp / "demo.yaml"
    config.write_text(text)
    port = free_port()
    process = start_server(["serve", "--config", str(config), "--port", str(port)], port, tmp / "proxy.log", "/readyz")
    yield process
    process.stop()


def _ask(proxy: Server, team: str, question: str) -> tuple[str, str | None, int]:
    """(tier, x-tiergate-sticky, cached prompt tokens) of one chat completion through the openai SDK."""
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=DEMO_KEYS[team], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=_messages(question))  # type: ignore[arg-type]
    usage = raw.parse().usage
    assert usage is not None and usage.prompt_tokens > CACHE_MIN_TOKENS
    details = usage.prompt_tokens_details
    cached = (details.cached_tokens or 0) if details is not None else 0
    return raw.headers["x-tiergate-tier"], raw.headers.get("x-tiergate-sticky"), cached


def _prefix_metrics(proxy: Server) -> dict[tuple[str, str], float]:
    response = httpx.get(proxy.url + "/metrics", headers=ADMIN, timeout=10)
    assert response.status_code == 200
    return {(sample.name, sample.labels.get("team", "")): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples
            if sample.name.startswith("tiergate_prefix_held_") and sample.name.endswith("_total")}


def test_two_questions_behind_one_system_prompt_share_a_tier_and_its_cache(proxy: Server) -> None:
    assert _ask(proxy, "research", LOW) == ("small", None, 0)  # first sight of the prefix: nothing cached
    tier, sticky, cached = _ask(proxy, "research", HIGH)  # scores mid, within the margin: held on warm small
    assert (tier, sticky) == ("small", "prefix")
    assert CACHE_MIN_TOKENS <= cached <= count_text(SYSTEM) + 8  # the shared system prompt, from small's cache
    metrics = _prefix_metrics(proxy)
    assert metrics[("tiergate_prefix_held_requests_total", "research")] == 1
    assert metrics[("tiergate_prefix_held_cached_tokens_total", "research")] == cached
    cost = metrics[("tiergate_prefix_held_cost_usd_total", "research")]
    cold = metrics[("tiergate_prefix_held_baseline_cost_usd_total", "research")]
    warm = metrics[("tiergate_prefix_held_warm_baseline_cost_usd_total", "research")]
    assert 0 < cost < warm < cold  # gpt-4o, cached or not, costs more than gpt-4o-mini with a warm cache
    assert round((cold - warm) * NANOS_PER_USD) > 0  # the cached prompt tokens' discount on gpt-4o

    # control, prefix affinity off: the same pair flips to mid and misses the cache the first question warmed
    assert _ask(proxy, "support", LOW) == ("small", None, 0)
    assert _ask(proxy, "support", HIGH) == ("mid", None, 0)
    assert _prefix_metrics(proxy).get(("tiergate_prefix_held_requests_total", "support"), 0) == 0
