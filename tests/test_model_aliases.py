"""``model_aliases``: requested names (globs) -> auto / a tier / a pin, compiled and checked at load, applied by
``router.decide`` (pure: no proxy, no I/O)."""

from __future__ import annotations

import random

import pytest

from router.aliases import ModelAliases, compile_aliases
from router.config_loader import ConfigError, parse_policy
from router.decide import RouteRequest, RoutingRefused, decide
from router.features import RequestFeatures
from upstream.health import HealthBook

KEY = "        sha256: '" + "0" * 64 + "'"
FEATURES = RequestFeatures(needs=frozenset(), prompt_tokens=10, max_output_tokens=None)


def policy_text(aliases: str, team_extra: str = "") -> str:
    return "\n".join([
        "tiers:",
        "  - name: small",
        "    deployments: [{id: small-sim, model: simulated/gpt-4o-mini}]",
        "  - name: mid",
        "    deployments: [{id: mid-sim, model: simulated/gpt-4o}]",
        "  - name: frontier",
        "    deployments: [{id: frontier-sim, model: simulated/o1}]",
        "teams:",
        "  a:",
        "    keys:",
        "      - id: k",
        KEY,
        "    routing: {thresholds: {mid: 0.3, frontier: 0.6}}",
        team_extra,
        "    model_aliases:",
        aliases,
    ]) + "\n"


def route(policy_text_: str, model: str, score: float | None = None):
    policy = parse_policy(policy_text_)
    request = RouteRequest(FEATURES, model, score)
    return decide(policy, policy.teams["a"], request, HealthBook().snapshot(), random.Random(1))


def test_first_matching_pattern_in_file_order_wins() -> None:
    aliases = ModelAliases((("claude-sonnet-4-5*", "frontier"), ("claude-sonnet-*", "auto"), ("claude-*", "small")))
    assert aliases.resolve("claude-sonnet-4-5-20250929") == "frontier"
    assert aliases.resolve("claude-sonnet-4-0") == "auto"
    assert aliases.resolve("claude-haiku-4-5") == "small"
    assert aliases.resolve("gpt-4o") == "gpt-4o"  # no match: the name itself
    assert aliases.match("Claude-haiku") is None  # case-sensitive like model names


def test_exact_names_are_never_rewritten() -> None:
    aliases = compile_aliases({"*": "small"}, ("auto", "small", "mid", "mid-sim"))
    assert [aliases.resolve(name) for name in ("mid", "auto", "mid-sim")] == ["mid", "auto", "mid-sim"]
    assert aliases.resolve("anything-else") == "small"


def test_decide_routes_aliases_to_tier_auto_and_pin() -> None:
    text = policy_text('      "claude-haiku-*": small\n      "claude-sonnet-*": auto\n'
                       '      "claude-opus-*": frontier-sim')
    haiku = route(text, "claude-haiku-4-5")
    assert haiku.tier.name == "small" and "model 'claude-haiku-4-5' -> 'small' (model_aliases)" in haiku.reasons
    # auto: the score decides, as for model "auto"
    assert route(text, "claude-sonnet-4-5", score=0.1).tier.name == "small"
    assert route(text, "claude-sonnet-4-5", score=0.7).tier.name == "frontier"
    opus = route(text, "claude-opus-4-1")
    assert opus.plan[0].id == "frontier-sim" and "pinned to 'frontier-sim'" in opus.reasons


def test_unmatched_name_is_404_naming_the_patterns() -> None:
    text = policy_text('      "claude-haiku-*": small')
    with pytest.raises(RoutingRefused) as refused:
        route(text, "claude-3-opus")
    assert refused.value.kind == "model_not_found"
    assert "claude-haiku-*" in refused.value.message


@pytest.mark.parametrize(("target", "team_extra", "why"), [
    ("large", "", "alias target 'large' is not a model team 'a' may use"),
    ("frontier", "    tiers: {ceiling: mid}", "alias target 'frontier'"),  # outside the team's tiers
    ("mid-sim", "    routing: {allow_pinning: false}", "alias target 'mid-sim'"),  # pinning not allowed
])
def test_load_refuses_targets_the_team_may_not_use(target: str, team_extra: str, why: str) -> None:
    text = policy_text(f'      "claude-*": {target}', team_extra)
    if "routing:" in team_extra:  # replace the default routing line rather than repeat the key
        text = text.replace("    routing: {thresholds: {mid: 0.3, frontier: 0.6}}\n", "")
    with pytest.raises(ConfigError) as error:
        parse_policy(text)
    issue = error.value.issues[0]
    assert issue.field == "teams.a.model_aliases.claude-*"
    assert why in issue.message
    assert issue.line > 0  # the loader points at the alias's line


def test_aliases_cost_nothing_without_rules() -> None:
    policy = parse_policy(policy_text("").replace("    model_aliases:\n", ""))
    assert policy.teams["a"].aliases.rules == ()
    assert policy.teams["a"].aliases.resolve("claude-x") == "claude-x"


def test_sticky_key_holds_aliased_auto_requests_by_session() -> None:
    """A Claude Code conversation (sonnet aliased to auto) sticks by its session id, whatever its first user
    message says; a name aliased to a fixed tier has no tier to hold."""
    from pipeline.request import Request, RequestState
    from pipeline.sticky import STICKY_MIN_TOKENS, sticky_key
    from router.policy import Principal

    policy = parse_policy(policy_text('      "claude-sonnet-*": auto\n      "claude-haiku-*": small'))
    team = policy.teams["a"]

    def key(model: str, first_user: str, session: str | None) -> str | None:
        body = {"model": model,
                "messages": [{"role": "system", "content": "p"}, {"role": "user", "content": first_user}]}
        request = Request(kind="chat/completions", body=body, principal=Principal("k", "a", False, {}, None),
                          policy=policy, request_id="r", tags={}, session=session)
        state = RequestState(request, team, {}, "chat", body)
        state.features = RequestFeatures(needs=frozenset(), prompt_tokens=STICKY_MIN_TOKENS, max_output_tokens=None)
        return sticky_key(state, body)

    sonnet = "claude-sonnet-4-6"
    assert key(sonnet, "turn 1 <reminder a>", "s-1") == key(sonnet, "turn 1 <reminder b>", "s-1")
    assert key("claude-sonnet-4-6", "x", "s-1") != key("claude-sonnet-4-6", "x", "s-2")
    assert key("claude-sonnet-4-6", "x", None) is not None  # no session: keyed by the text, as before
    assert key("claude-haiku-4-5", "x", "s-1") is None


def test_session_headers_are_configured_per_team() -> None:
    from proxy.endpoints import session_of
    from router.policy import Principal

    principal = Principal("k", "a", False, {}, None)
    default = parse_policy(policy_text('      "claude-*": auto'))
    assert session_of({"x-claude-code-session-id": " s-1 "}, default, principal) == "s-1"
    assert session_of({"x-other": "s-1"}, default, principal) is None
    custom = parse_policy(policy_text('      "claude-*": auto', "    context: {session_headers: [X-Chat-Thread]}"))
    assert custom.teams["a"].settings.context.session_headers == ["x-chat-thread"]
    assert session_of({"x-chat-thread": "t-9", "x-claude-code-session-id": "s-1"}, custom, principal) == "t-9"
    assert session_of({"x-chat-thread": "t-9"}, custom, Principal("admin", None, True, {}, None)) is None
    with pytest.raises(ConfigError) as error:
        parse_policy(policy_text('      "claude-*": auto', "    context: {session_headers: ['bad header']}"))
    assert error.value.issues[0].field == "teams.a.context.session_headers"
