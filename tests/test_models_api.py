"""``GET /v1/models`` and ``GET /v1/models/{id}`` through the official SDKs against the demo proxy: OpenAI's shape,
and Anthropic's (``ModelInfo`` pages) when the request carries ``anthropic-version``, both from the one table of
names the key may send (chat and embeddings)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.anthropic_sdk import GROUP, anthropic
from tests.conftest import DEMO_KEYS, Process

pytestmark = GROUP  # tests.anthropic_sdk: one worker imports the SDK


def _openai(proxy: Process, who: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=DEMO_KEYS[who], max_retries=0)


def _anthropic(proxy: Process, who: str) -> anthropic.Anthropic:
    """As Claude Code behind a gateway (ANTHROPIC_AUTH_TOKEN): the key as a bearer token."""
    return anthropic.Anthropic(base_url=proxy.url, auth_token=DEMO_KEYS[who], max_retries=0)


def test_retrieve_every_listed_model_and_nothing_else(demo_proxy: Process) -> None:
    support = _openai(demo_proxy, "support")
    listed = [m.id for m in support.models.list()]
    assert {"auto", "small", "mid", "text-embedding-3-small"} <= set(listed)
    for name in listed:
        model = support.models.retrieve(name)
        assert (model.id, model.object, model.owned_by) == (name, "model", "tiergate")
    assert support.models.retrieve("simulated/text-embedding-3-small").id == "simulated/text-embedding-3-small"
    for name in ("frontier", "gpt-4o", "gpt-9000"):  # above its ceiling, a pin it may not use, unknown
        with pytest.raises(openai.NotFoundError) as exc:
            support.models.retrieve(name)
        assert exc.value.code == "model_not_found" and name in exc.value.message
    assert _openai(demo_proxy, "research").models.retrieve("frontier").id == "frontier"


def test_a_name_the_team_aliases_is_retrievable(demo_proxy: Process) -> None:
    """Claude Code retrieves the model it was started with: a vendor name the demo's research team aliases."""
    claude = _anthropic(demo_proxy, "research").models.retrieve("claude-sonnet-4-5-20250929")
    assert claude.id == "claude-sonnet-4-5-20250929"
    with pytest.raises(anthropic.NotFoundError):  # support has no aliases
        _anthropic(demo_proxy, "support").models.retrieve("claude-sonnet-4-5-20250929")


def test_admin_keys_see_every_model(demo_proxy: Process) -> None:
    admin = _openai(demo_proxy, "admin")
    listed = {m.id for m in admin.models.list()}
    assert {"frontier", "o1", "text-embedding-3-small", "embed-small-sim"} <= listed
    assert admin.models.retrieve("embed-small-sim").id == "embed-small-sim"


def test_models_need_a_valid_key(demo_proxy: Process) -> None:
    bad = openai.OpenAI(base_url=demo_proxy.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.retrieve("auto")
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_anthropic_sdk_lists_the_same_models_page_by_page(demo_proxy: Process) -> None:
    claude = _anthropic(demo_proxy, "research")
    expected = [m.id for m in _openai(demo_proxy, "research").models.list()]
    assert len(expected) > 5
    everything = claude.models.list()
    assert [m.id for m in everything.data] == expected[:20] and everything.has_more is (len(expected) > 20)
    paged = claude.models.list(limit=5)
    assert [m.id for m in paged.data] == expected[:5] and paged.has_more and paged.last_id == expected[4]
    assert [m.id for m in paged] == expected  # the SDK's auto-pagination follows last_id until has_more is false
    info = paged.data[0]
    assert info.type == "model" and info.display_name == info.id and info.created_at.year == 1970
    back = claude.models.list(before_id=expected[6], limit=3)
    assert [m.id for m in back.data] == expected[3:6] and back.has_more


def test_anthropic_sdk_retrieves_a_model_and_gets_anthropic_errors(demo_proxy: Process) -> None:
    claude = _anthropic(demo_proxy, "support")
    info = claude.models.retrieve("text-embedding-3-small")
    assert (info.type, info.id) == ("model", "text-embedding-3-small")
    by_api_key = anthropic.Anthropic(base_url=demo_proxy.url, api_key=DEMO_KEYS["support"], max_retries=0)  # x-api-key
    assert by_api_key.models.retrieve("mid").id == "mid"
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.models.retrieve("frontier")
    assert missing.value.body["type"] == "error" and missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.models.list(limit=0)
    assert bad.value.body["error"]["type"] == "invalid_request_error" and "limit" in bad.value.body["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError) as auth:
        anthropic.Anthropic(base_url=demo_proxy.url, api_key="sk-wrong", max_retries=0).models.list()
    assert auth.value.body["error"]["type"] == "authentication_error"


def test_without_anthropic_version_the_shape_is_openais(demo_proxy: Process) -> None:
    headers = {"authorization": f"Bearer {DEMO_KEYS['research']}"}
    plain = httpx.get(demo_proxy.url + "/v1/models", headers=headers).json()
    assert plain["object"] == "list" and plain["data"][0] == {"id": "auto", "object": "model", "created": 0,
                                                               "owned_by": "tiergate"}
    shaped = httpx.get(demo_proxy.url + "/v1/models", headers={**headers, "anthropic-version": "2023-06-01"}).json()
    assert set(shaped) == {"data", "has_more", "first_id", "last_id"} and shaped["first_id"] == "auto"
    missing = httpx.get(demo_proxy.url + "/v1/models/nope", headers=headers)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
