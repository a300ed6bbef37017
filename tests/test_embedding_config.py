"""Embedding deployments in the policy (``embeddings:`` and a team's ``embeddings`` block): validated at load with
errors naming file, line and field, priced at litellm's embedding prices, and routed by ``router.embeddings``
without the chat tiers (pure: no proxy, no I/O)."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from metering.prices import lookup
from metering.usage import Usage, cost_nanos
from router.config_loader import ConfigError, parse_policy
from router.decide import RouteRequest, RoutingRefused, decide
from router.embeddings import route_embedding
from router.features import embedding_features
from router.health_snapshot import HealthSnapshot
from router.policy import EMBEDDING_TIER, Policy

KEY = "0" * 64
BASE = f"""\
tiers:
  - name: small
    deployments:
      - {{id: small-0, model: openai/gpt-4o-mini}}
  - name: big
    deployments:
      - {{id: big-0, model: openai/gpt-4o}}
embeddings:
  - id: te3-small-a
    model: openai/text-embedding-3-small
  - id: te3-small-b
    model: openai/text-embedding-3-small
    api_base: http://embed-b.internal/v1
  - id: te3-large
    model: openai/text-embedding-3-large
teams:
  a:
    keys:
      - {{id: a-key, sha256: "{KEY}"}}
"""


def _issue(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_policy(text, "p.yaml")
    return str(exc.value)


def _team(block: str, text: str = BASE) -> str:
    return text.replace('      - {id: a-key, sha256: "' + KEY + '"}\n',
                        '      - {id: a-key, sha256: "' + KEY + '"}\n' + block)


def _route(policy: Policy, model: str, inputs: object = "hello embeddings", team: str = "a",
           health: HealthSnapshot | None = None):
    features = embedding_features({"input": inputs})
    return route_embedding(policy, policy.teams[team], RouteRequest(features, model), health or HealthSnapshot(),
                           random.Random(0))


def test_embedding_deployments_are_priced_at_their_embedding_price_and_stay_off_the_ladder() -> None:
    policy = parse_policy(BASE)
    assert [t.name for t in policy.tiers] == ["small", "big"]  # the chat ladder's indexes are untouched
    table = policy.teams["a"].embeddings
    dep = table.pins["te3-small-a"][0]
    assert dep.tier == EMBEDDING_TIER and dep.tier_index < 0 and dep.upstream_model == "text-embedding-3-small"
    assert dep.price.input * 1_000_000 == Decimal("0.02") and dep.price.output == 0
    assert table.pins["te3-large"][0].price.input * 1_000_000 == Decimal("0.13")
    assert dep.context_window == 8191
    assert table.default == "text-embedding-3-small"  # no default given: the first declared deployment's model
    listed = policy.allowed_models("a")
    assert {"text-embedding-3-small", "te3-small-b", "text-embedding-3-large", "small", "auto"} <= set(listed)
    assert len(set(listed)) == len(listed)
    assert {"text-embedding-3-small", "te3-large"} <= set(policy.allowed_models(None))


def test_an_embedding_row_without_an_output_price_is_priced_at_zero_output() -> None:
    facts = lookup("mistral/mistral-embed")  # litellm's row has input_cost_per_token only
    assert facts is not None and facts.mode == "embedding" and facts.price.output == 0 and facts.price.input > 0


def test_price_override_is_per_million_input_tokens() -> None:
    text = BASE.replace("  - id: te3-large\n    model: openai/text-embedding-3-large\n",
                        "  - id: bge\n    model: hosted_vllm/BAAI/bge-m3\n    api_base: http://gpu/v1\n"
                        "    context_window: 8192\n    price: {input: 0.01}\n")
    dep = parse_policy(text).teams["a"].embeddings.pins["bge"][0]
    assert dep.price.input * 1_000_000 == Decimal("0.01") and dep.price.output == 0


def test_an_unpriced_embedding_model_is_an_error_naming_the_line() -> None:
    text = BASE.replace("openai/text-embedding-3-large", "hosted_vllm/my-embedder")
    message = _issue(text)
    assert "p.yaml:14: embeddings.2.price:" in message and "no known price" in message


def test_a_chat_model_is_refused_as_an_embedding_deployment() -> None:
    message = _issue(BASE.replace("openai/text-embedding-3-large", "openai/gpt-4o"))
    assert "p.yaml:15: embeddings.2.model:" in message and "not an embedding model" in message


def test_unknown_default_names_the_field() -> None:
    message = _issue(_team("    embeddings: {default: ada-9000}\n"))
    assert "teams.a.embeddings.default:" in message and "'ada-9000' is an unknown embedding model" in message
    assert "text-embedding-3-small" in message  # what the team may use instead


def test_default_outside_the_teams_models_names_the_field() -> None:
    message = _issue(_team("    embeddings: {default: te3-large, models: [text-embedding-3-small]}\n"))
    assert "teams.a.embeddings.default:" in message and "not among its embeddings.models" in message


def test_unknown_model_in_the_teams_list_names_the_entry() -> None:
    message = _issue(_team("    embeddings:\n      models: [te3-large, nope]\n"))
    assert "teams.a.embeddings.models.1:" in message and "unknown embedding model 'nope'" in message


def test_a_team_block_without_embedding_deployments_is_an_error() -> None:
    text = _team("    embeddings: {default: text-embedding-3-small}\n", VALID_NO_EMBEDDINGS)
    assert "teams.a.embeddings.default:" in _issue(text)


def test_names_may_not_collide_with_the_chat_ladder() -> None:
    assert "embeddings.0.id:" in _issue(BASE.replace("id: te3-small-a", "id: small"))
    assert "embeddings.0.id:" in _issue(BASE.replace("id: te3-small-a", "id: big-0"))
    assert "embeddings.1.id:" in _issue(BASE.replace("id: te3-small-b", "id: te3-small-a"))
    message = _issue(BASE.replace("name: big", "name: embedding"))
    assert "tiers.1.name:" in message and "embedding deployments" in message


def test_schema_errors_name_the_field() -> None:
    assert "embeddings.0.price.output: Extra inputs are not permitted" in _issue(
        BASE.replace("    model: openai/text-embedding-3-small\n  - id: te3-small-b",
                     "    model: openai/text-embedding-3-small\n    price: {input: 1, output: 1}\n  - id: te3-small-b"))
    assert "embeddings.0.capabilities: Extra inputs are not permitted" in _issue(
        BASE.replace("    model: openai/text-embedding-3-small\n  - id: te3-small-b",
                     "    model: openai/text-embedding-3-small\n    capabilities: [tools]\n  - id: te3-small-b"))


VALID_NO_EMBEDDINGS = BASE.split("embeddings:\n")[0] + "teams:\n" + BASE.split("teams:\n")[1]


def test_configs_without_embeddings_keep_loading_and_list_no_embedding_model() -> None:
    policy = parse_policy(VALID_NO_EMBEDDINGS)
    assert policy.teams["a"].embeddings.default is None and policy.teams["a"].models[0] == "auto"
    with pytest.raises(RoutingRefused) as exc:
        _route(policy, "auto")
    assert exc.value.kind == "model_not_found" and "has no embedding models" in exc.value.message


# ---- routing ----------------------------------------------------------------------------------------------------

def test_auto_is_the_teams_default_and_reserves_the_input_at_the_embedding_price() -> None:
    policy = parse_policy(_team("    embeddings: {default: te3-large}\n"))
    features = embedding_features({"input": ["one two three", [1, 2, 3, 4]]})
    decision = route_embedding(policy, policy.teams["a"], RouteRequest(features, "auto"), HealthSnapshot(),
                               random.Random(0))
    assert [d.id for d in decision.plan] == ["te3-large"]
    assert decision.tier.name == EMBEDDING_TIER and decision.score is None and decision.max_tokens is None
    # 7 tokens at $0.13 / 1M: nothing for output, exactly the settled cost of those tokens
    assert decision.reserve_nanos == cost_nanos(Usage(prompt_tokens=7, completion_tokens=0),
                                                decision.plan[0].price) == 7 * 130
    assert decision.counterfactual_tier.deployments[0].price == decision.plan[0].price  # no routing savings


def test_a_model_name_falls_back_across_the_deployments_serving_it() -> None:
    policy = parse_policy(BASE)
    by_name = _route(policy, "text-embedding-3-small")
    assert sorted(d.id for d in by_name.plan) == ["te3-small-a", "te3-small-b"]
    by_id = _route(policy, "te3-small-b")  # the named deployment first, then the other serving the same model
    assert [d.id for d in by_id.plan] == ["te3-small-b", "te3-small-a"]
    cooling = HealthSnapshot(now=100.0, cooldown_until={"te3-small-a": 130.0})
    assert [d.id for d in _route(policy, "text-embedding-3-small", health=cooling).plan] == ["te3-small-b",
                                                                                             "te3-small-a"]
    assert [d.id for d in _route(policy, "text-embedding-3-large").plan] == ["te3-large"]  # never another model


def test_the_teams_models_list_bounds_names_and_fallbacks() -> None:
    policy = parse_policy(_team("    embeddings: {models: [te3-small-b, te3-large]}\n"))
    assert policy.teams["a"].embeddings.default == "text-embedding-3-small"
    assert [d.id for d in _route(policy, "text-embedding-3-small").plan] == ["te3-small-b"]
    assert "te3-small-a" not in policy.allowed_models("a")
    with pytest.raises(RoutingRefused) as exc:
        _route(policy, "te3-small-a")
    assert exc.value.kind == "model_not_found" and "te3-small-b" in exc.value.message


@pytest.mark.parametrize("model", ["small", "big", "gpt-4o", "openai/gpt-4o-mini", "nope"])
def test_chat_and_unknown_names_are_not_found_listing_the_embedding_models(model: str) -> None:
    with pytest.raises(RoutingRefused) as exc:
        _route(parse_policy(BASE), model)
    assert exc.value.kind == "model_not_found" and exc.value.param == "model"
    assert "'text-embedding-3-large'" in exc.value.message and "'te3-small-a'" in exc.value.message
    assert ("chat model" in exc.value.message) == (model != "nope")


def test_embedding_names_are_not_chat_models() -> None:
    policy = parse_policy(BASE)
    features = embedding_features({"input": "x"})
    with pytest.raises(RoutingRefused) as exc:
        decide(policy, policy.teams["a"], RouteRequest(features, "text-embedding-3-small"), HealthSnapshot(),
               random.Random(0))
    assert exc.value.kind == "model_not_found"


def test_every_listed_name_routes_on_exactly_one_endpoint() -> None:
    """``/v1/models`` lists what the key may send: each name is accepted by the chat router or the embeddings
    router, never both, and every embedding name the team may not use is refused."""
    policy = parse_policy(_team("    embeddings: {models: [text-embedding-3-small]}\n"))
    team = policy.teams["a"]
    features = embedding_features({"input": "x"})
    known = {*policy.allowed_models(None), "nope"}
    for name in sorted(known):
        accepted = []
        try:
            decide(policy, team, RouteRequest(features, name, 0.5), HealthSnapshot(), random.Random(0))
            accepted.append("chat")
        except RoutingRefused:
            pass
        try:
            _route(policy, name)
            accepted.append("embeddings")
        except RoutingRefused:
            pass
        if name == "auto":
            assert accepted == ["chat", "embeddings"]
        else:
            assert len(accepted) == (name in team.models), (name, accepted)


def test_an_input_longer_than_every_window_is_refused() -> None:
    policy = parse_policy(BASE)
    with pytest.raises(RoutingRefused) as exc:
        _route(policy, "text-embedding-3-small", inputs=[list(range(9000))])
    assert exc.value.kind == "no_capable_tier" and "8191" in exc.value.message


def test_model_aliases_reach_embedding_models() -> None:
    policy = parse_policy(_team('    model_aliases: {"text-embedding-ada-*": auto, "*-large*": te3-large, '
                                '"text-*": auto}\n'))
    decision = _route(policy, "text-embedding-ada-002")
    assert decision.plan[0].upstream_model == "text-embedding-3-small"  # auto: the team's default
    assert "model_aliases" in decision.reasons[0]
    assert [d.id for d in _route(policy, "my-large-embedder").plan] == ["te3-large"]
    # a name the team may send always means itself, however broad a pattern
    assert [d.id for d in _route(policy, "text-embedding-3-large").plan] == ["te3-large"]
    assert [d.id for d in _route(policy, "te3-small-b").plan][0] == "te3-small-b"


def test_an_alias_target_must_be_a_model_the_team_may_use() -> None:
    message = _issue(_team("    embeddings: {models: [te3-large]}\n    model_aliases: {\"ada-*\": te3-small-a}\n"))
    assert "teams.a.model_aliases.ada-*:" in message and "'te3-large'" in message
