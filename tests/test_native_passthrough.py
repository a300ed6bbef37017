"""Native passthrough end to end: a running proxy, the official SDKs as clients, ``tiergate mock-upstream`` as a
deployment that speaks chat, Responses and Messages (so what it received can be read back) and in-process simulated
deployments that speak chat only. A Responses or Messages request reaches a native deployment untranslated (model,
output limit and ``store`` aside; ``cache_control`` and the client's anthropic headers intact), a fallback to a
chat-only deployment still answers in the client's format, and the ledger bills each format's usage exactly,
cache writes at the write price. Also: a chat stream's usage chunk carries ``x_tiergate`` with the billed cost."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.anthropic_sdk import GROUP, anthropic
from tests.conftest import Server, free_port, start_server
from tests.helpers_simulator import MockServer
from tests.proxy_metering_helpers import sqlite_records
from tests.waiting import eventually

pytestmark = GROUP  # tests.anthropic_sdk: one worker imports the SDK

warnings.filterwarnings("ignore", category=DeprecationWarning)

KEY = "sk-native-passthrough"
TEAM = "natives"
# $ per 1M tokens: every class of token has its own price, so a token billed in the wrong class shows in the cost.
PRICE = {"input": "3", "output": "15", "cached_input": "0.3", "cache_write": "3.75"}
LONG_SYSTEM = "You are the dispatcher of a freight company; answer with the booking reference first. " * 120


def _config(directory: Path, mock: MockServer) -> Path:
    price = "{input: 3, output: 15, cached_input: 0.3, cache_write: 3.75}"
    sim = "{ttft_ms: 1, tokens_per_s: 5000}"
    text = f"""
metering:
  ledger: sqlite:///{directory}/ledger.db
classifier:
  model: default
tiers:
  - name: flaky
    deployments:
      - {{id: flaky-native, model: simulated/gpt-4o-mini, apis: [chat, responses, messages], price: {price},
         context_window: 200000, simulator: {{fail_rate: 1.0, fail_kind: "500"}}}}
  - name: steady
    deployments:
      - {{id: steady-chat, model: simulated/gpt-4o-mini, price: {price}, context_window: 200000, simulator: {sim}}}
  - name: native
    deployments:
      - {{id: native-mock, model: openai/gpt-4o-mini, api_base: "{mock.url}", apis: [chat, responses, messages],
         price: {price}, context_window: 200000}}
  - name: claude
    deployments:
      - {{id: claude-mock, model: anthropic/claude-sonnet-4-6, api_base: "{mock.root}",
         api_key_env: TG_TEST_ANTHROPIC_KEY, price: {price}, context_window: 200000}}
teams:
  {TEAM}:
    keys:
      - {{id: natives-key, sha256: {hashlib.sha256(KEY.encode()).hexdigest()}}}
    max_tokens: {{default: 300, cap: 400, on_exceed: clamp}}
"""
    path = directory / "natives.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def mock() -> Iterator[MockServer]:
    server = MockServer().wait_ready()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, mock: MockServer) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("natives")
    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        # the policy reads its upstream key from this process's environment: the proxy can run in a thread of it
        env.setenv("TG_TEST_ANTHROPIC_KEY", "sk-ant-upstream")
        process = start_server(["serve", "--config", str(_config(directory, mock)), "--port", str(port)], port,
                                directory / "proxy.log", "/readyz")
        process.db = directory / "ledger.db"  # type: ignore[attr-defined]
        yield process
        process.stop()


def _received(mock: MockServer, path: str) -> list[dict[str, Any]]:
    return [r for r in httpx.get(mock.root + "/_mock/requests").json()["requests"] if r["path"] == path]


def _forget(mock: MockServer) -> None:
    httpx.delete(mock.root + "/_mock/requests")


def _row(proxy: Server, request_id: str) -> dict[str, Any]:
    def rows() -> list[dict[str, Any]]:
        return [r for r in sqlite_records(proxy.db, TEAM) if r["request_id"] == request_id]  # type: ignore[attr-defined]

    found = eventually(rows, f"the ledger record of {request_id}")
    assert len(found) == 1  # one record per request, whatever the format
    return found[0]


def _nanos(prompt: int, cached: int, written: int, output: int) -> int:
    """The bill at PRICE: each class of token at its own price, exact to the nano-dollar."""
    dollars = ((prompt - cached - written) * Decimal(PRICE["input"]) + cached * Decimal(PRICE["cached_input"])
               + written * Decimal(PRICE["cache_write"]) + output * Decimal(PRICE["output"])) / 1_000_000
    return int((dollars * 10**9).to_integral_value())


def _oai(proxy: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0)


def _claude(proxy: Server, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key=KEY, max_retries=0, default_headers=headers)


def test_responses_pass_through_natively(proxy: Server, mock: MockServer) -> None:
    _forget(mock)
    raw = _oai(proxy).responses.with_raw_response.create(
        model="native", instructions="Be brief.", input="Where is Rotterdam?", max_output_tokens=1000,
        metadata={"feature": "ports"})
    response = raw.parse()
    assert raw.headers["x-tiergate-deployment"] == "native-mock"
    assert response.id.startswith("resp_") and response.output_text
    (sent,) = _received(mock, "/v1/responses")
    body = sent["body"]
    # the client's own body: its fields kept, the model replaced, the output limit clamped in the format's own
    # field, and nothing stored upstream (the gateway keeps the conversation)
    assert body["instructions"] == "Be brief." and body["metadata"] == {"feature": "ports"}
    assert [part["text"] for item in body["input"] for part in item["content"]] == ["Where is Rotterdam?"]
    assert body["model"] == "gpt-4o-mini" and body["max_output_tokens"] == 400 and body["store"] is False
    assert "messages" not in body
    assert body["prompt_cache_key"].startswith("tg-")  # the provider-cache hint a chat call would carry
    usage = response.usage
    assert usage is not None
    row = _row(proxy, raw.headers["x-request-id"])
    assert row["api"] == "responses" and row["deployment"] == "native-mock"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.input_tokens, usage.output_tokens)
    assert row["cached_tokens"] == usage.input_tokens_details.cached_tokens
    assert row["cost_nanos"] == _nanos(usage.input_tokens, usage.input_tokens_details.cached_tokens, 0,
                                       usage.output_tokens)


def test_responses_stream_passes_through_and_is_metered(proxy: Server, mock: MockServer) -> None:
    _forget(mock)
    with _oai(proxy).responses.with_streaming_response.create(model="native", input="Name three ports.",
                                                              stream=True) as raw:
        request_id = raw.headers["x-request-id"]
        assert raw.headers["x-tiergate-deployment"] == "native-mock"
        events = list(raw.parse())
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    usage = events[-1].response.usage  # type: ignore[union-attr]
    assert _received(mock, "/v1/responses")[0]["body"]["stream"] is True
    row = _row(proxy, request_id)
    assert row["api"] == "responses" and not row["usage_estimated"]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.input_tokens, usage.output_tokens)


def test_messages_keep_cache_control_and_bill_the_cache_write(proxy: Server, mock: MockServer) -> None:
    _forget(mock)
    client = _claude(proxy, **{"anthropic-beta": "prompt-caching-2024-07-31"})
    request: dict[str, Any] = {
        "model": "claude", "max_tokens": 64,
        "system": [{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Status of MSKU 7781204?"}]}]}
    first = client.messages.with_raw_response.create(**request)
    second = client.messages.with_raw_response.create(**request)
    assert first.headers["x-tiergate-deployment"] == "claude-mock"
    sent = _received(mock, "/v1/messages")
    assert len(sent) == 2
    body, headers = sent[0]["body"], sent[0]["headers"]
    assert body["system"] == request["system"]  # cache_control intact
    assert body["model"] == "claude-sonnet-4-6" and body["max_tokens"] == 64
    assert headers["x-api-key"] == "sk-ant-upstream" and "authorization" not in headers
    assert headers["anthropic-beta"] == "prompt-caching-2024-07-31"  # the client's header, forwarded
    assert headers["anthropic-version"] == first.http_response.request.headers["anthropic-version"]
    written, read = first.parse().usage, second.parse().usage
    assert written.cache_creation_input_tokens and written.cache_creation_input_tokens >= 1024
    assert read.cache_read_input_tokens == written.cache_creation_input_tokens
    for raw, usage in ((first, written), (second, read)):
        row = _row(proxy, raw.headers["x-request-id"])
        cached, created = usage.cache_read_input_tokens or 0, usage.cache_creation_input_tokens or 0
        prompt = usage.input_tokens + cached + created  # Anthropic's input excludes cache reads and writes
        assert row["api"] == "messages" and row["response_id"] == raw.parse().id
        assert (row["prompt_tokens"], row["cached_tokens"], row["cache_write_tokens"], row["completion_tokens"]) == (
            prompt, cached, created, usage.output_tokens)
        assert row["cost_nanos"] == _nanos(prompt, cached, created, usage.output_tokens)


def test_messages_stream_is_metered_from_its_events(proxy: Server, mock: MockServer) -> None:
    client = _claude(proxy)
    request: dict[str, Any] = {
        "model": "native", "max_tokens": 2000,
        "system": [{"type": "text", "text": "stream " + LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Status?"}]}
    _forget(mock)
    with client.messages.with_streaming_response.create(**request, stream=True) as raw:
        request_id = raw.headers["x-request-id"]
        assert raw.headers["x-tiergate-deployment"] == "native-mock"
        kinds = [line for line in raw.iter_lines() if line.startswith("event: ")]
    assert kinds[0] == "event: message_start" and kinds[-1] == "event: message_stop"
    (sent,) = _received(mock, "/v1/messages")
    assert sent["body"]["max_tokens"] == 400  # the team's cap, in the format's own field
    with client.messages.stream(**request) as stream:
        final = stream.get_final_message()
    first, again = _row(proxy, request_id), _row(proxy, stream.response.headers["x-request-id"])
    assert first["cache_write_tokens"] >= 1024 and first["cached_tokens"] == 0 and not first["usage_estimated"]
    assert again["cached_tokens"] == first["cache_write_tokens"] and again["cache_write_tokens"] == 0
    assert again["completion_tokens"] == final.usage.output_tokens
    assert again["prompt_tokens"] == final.usage.input_tokens + again["cached_tokens"]
    assert first["cost_nanos"] == _nanos(first["prompt_tokens"], 0, first["cache_write_tokens"],
                                         first["completion_tokens"])


def test_fallback_from_a_native_deployment_answers_in_the_clients_format(proxy: Server) -> None:
    claude = _claude(proxy).messages.with_raw_response.create(
        model="flaky", max_tokens=50, messages=[{"role": "user", "content": "Is the container released?"}])
    message = claude.parse()
    assert claude.headers["x-tiergate-deployment"] == "steady-chat" and claude.headers["x-tiergate-attempts"] == "2"
    assert message.type == "message" and message.content[0].type == "text" and message.content[0].text
    row = _row(proxy, claude.headers["x-request-id"])
    assert row["api"] == "messages" and row["deployment"] == "steady-chat"
    assert row["completion_tokens"] == message.usage.output_tokens

    raw = _oai(proxy).responses.with_raw_response.create(model="flaky", input="Is the container released?")
    response = raw.parse()
    assert raw.headers["x-tiergate-deployment"] == "steady-chat" and response.output_text
    assert response.object == "response" and _row(proxy, raw.headers["x-request-id"])["api"] == "responses"

    with _oai(proxy).responses.stream(model="flaky", input="And the other one?") as stream:
        final = stream.get_final_response()
    assert final.output_text and final.usage is not None and final.usage.output_tokens > 0


def test_chat_stream_usage_chunk_carries_the_billed_cost(proxy: Server) -> None:
    client = _oai(proxy)
    with client.chat.completions.with_streaming_response.create(
            model="steady", messages=[{"role": "user", "content": "Hello"}], stream=True,
            stream_options={"include_usage": True}) as raw:
        request_id = raw.headers["x-request-id"]
        chunks = list(raw.parse())
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    extra = last.model_extra or {}
    assert extra["x_tiergate"]["tier"] == "steady" and extra["x_tiergate"]["model"] == "gpt-4o-mini"
    assert "score" in extra["x_tiergate"]
    row = _row(proxy, request_id)
    assert Decimal(extra["x_tiergate"]["cost_usd"]) * 10**9 == row["cost_nanos"]
    assert all("x_tiergate" not in (c.model_extra or {}) for c in chunks[:-1])
    # without include_usage no chunk is added: SDK code reading chunk.choices[0] must keep working
    plain = list(client.chat.completions.create(model="steady", messages=[{"role": "user", "content": "Hi"}],
                                                stream=True))
    assert all(c.choices for c in plain) and all("x_tiergate" not in (c.model_extra or {}) for c in plain)
