"""The simulator speaks OpenAI's Responses API and Anthropic's Messages API natively, over HTTP (``tiergate
mock-upstream``, driven by the official SDKs) and in process (``SimulatedUpstream``): deterministic output, usage
with cache fields, tool calls, and each format's stream events."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from simulator.provider import SimulatedUpstream
from tests.anthropic_sdk import GROUP, anthropic
from tests.helpers_simulator import MockServer
from upstream.base import UpstreamError

pytestmark = GROUP  # tests.anthropic_sdk: one worker imports the SDK

LONG_SYSTEM = "You are a careful assistant for a freight company. " * 180  # ~1,800 tokens: above the cache minimum
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.fixture(scope="module")
def mock() -> Iterator[MockServer]:
    server = MockServer().wait_ready()
    try:
        yield server
    finally:
        server.stop()


def _oai(mock: MockServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=mock.url, api_key="sk-test", max_retries=0)


def _claude(mock: MockServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=mock.root, api_key="sk-ant-test", max_retries=0)


# ---- Responses over HTTP ---------------------------------------------------------------------------------------


def test_responses_plain_is_deterministic_with_usage(mock: MockServer) -> None:
    client = _oai(mock)
    first = client.responses.create(model="gpt-4o-mini", instructions="Be brief.", input="Where is Rotterdam?")
    again = client.responses.create(model="gpt-4o-mini", instructions="Be brief.", input="Where is Rotterdam?")
    assert first.id.startswith("resp_") and first.status == "completed"
    assert first.output_text and first.output_text == again.output_text
    usage = first.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_responses_prefix_cache_and_reasoning_tokens(mock: MockServer) -> None:
    client = _oai(mock)
    items: Any = [{"role": "developer", "content": LONG_SYSTEM}, {"role": "user", "content": "Hello"}]
    client.responses.create(model="o3-mini", input=items)
    second = client.responses.create(model="o3-mini", input=items)
    assert second.usage is not None
    assert second.usage.input_tokens_details.cached_tokens >= 1024  # OpenAI's automatic prefix caching
    assert second.usage.input_tokens_details.cached_tokens <= second.usage.input_tokens  # a subset of input
    assert second.usage.output_tokens_details.reasoning_tokens > 0  # o-series models reason
    assert [item.type for item in second.output] == ["reasoning", "message"]


def test_responses_tool_call_and_round_trip(mock: MockServer) -> None:
    client = _oai(mock)
    tools: Any = [{"type": "function", "name": "get_weather", "description": "Weather", "parameters": WEATHER}]
    first = client.responses.create(model="gpt-4o-mini", input="Weather in Oslo?", tools=tools)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert isinstance(orjson.loads(calls[0].arguments)["city"], str)
    follow: Any = [{"role": "user", "content": "Weather in Oslo?"},
                   {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
                    "arguments": calls[0].arguments},
                   {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 12 C"}]
    answer = client.responses.create(model="gpt-4o-mini", input=follow, tools=tools)
    assert answer.output_text and not [i for i in answer.output if i.type == "function_call"]


def test_responses_stream_events_and_usage(mock: MockServer) -> None:
    client = _oai(mock)
    plain = client.responses.create(model="gpt-4o-mini", input="Name three ports.")
    events = list(client.responses.create(model="gpt-4o-mini", input="Name three ports.", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == plain.output_text
    final = events[-1].response  # type: ignore[union-attr]
    assert final.usage is not None and plain.usage is not None
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.usage.input_tokens == plain.usage.input_tokens


def test_responses_stream_names_each_event(mock: MockServer) -> None:
    body = {"model": "gpt-4o-mini", "input": "hi", "stream": True}
    with httpx.stream("POST", mock.url + "/responses", json=body) as resp:
        raw = b"".join(resp.iter_bytes())
    frames = [f for f in raw.split(b"\n\n") if f]
    assert b"[DONE]" not in raw  # Responses streams end with response.completed
    for frame in frames:
        event, data = frame.split(b"\n")
        assert event.startswith(b"event: ") and data.startswith(b"data: ")
        assert orjson.loads(data[6:])["type"] == event[7:].decode()


def test_responses_bad_request_is_openai_shaped(mock: MockServer) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        _oai(mock).responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=3)
    assert err.value.status_code == 400 and "max_output_tokens" in str(err.value)


# ---- Messages over HTTP ----------------------------------------------------------------------------------------


def _cached_request(marker: str) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-6", "max_tokens": 64,
            "system": [{"type": "text", "text": marker + LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "Is the container released?"}]}


def test_messages_cache_write_then_read(mock: MockServer) -> None:
    client = _claude(mock)
    request = _cached_request("http-write-read ")
    first = client.messages.create(**request)
    second = client.messages.create(**request)
    assert first.id.startswith("msg_") and first.type == "message" and first.role == "assistant"
    assert first.content[0].type == "text" and first.content[0].text == second.content[0].text  # type: ignore[union-attr]
    written = first.usage.cache_creation_input_tokens
    assert written is not None and written >= 1024 and first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == written and second.usage.cache_creation_input_tokens == 0
    # input_tokens excludes cache reads and writes: the short user turn after the breakpoint only
    assert first.usage.input_tokens == second.usage.input_tokens and 0 < first.usage.input_tokens < 30
    assert first.stop_reason in ("end_turn", "max_tokens") and first.usage.output_tokens <= 64


def test_messages_without_cache_control_caches_nothing(mock: MockServer) -> None:
    client = _claude(mock)
    request = _cached_request("uncached ")
    request["system"] = request["system"][0]["text"]
    for _ in range(2):
        usage = client.messages.create(**request).usage
        assert usage.cache_read_input_tokens == 0 and usage.cache_creation_input_tokens == 0
        assert usage.input_tokens > 1024


def test_messages_stream_events_and_usage(mock: MockServer) -> None:
    client = _claude(mock)
    request = _cached_request("stream ")
    plain = client.messages.create(**request)  # writes the cache
    with client.messages.stream(**request) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop", "message_delta"} <= set(kinds)
    assert final.content[0].text == plain.content[0].text  # type: ignore[union-attr]
    assert final.usage.output_tokens == plain.usage.output_tokens  # from message_delta
    assert final.usage.cache_read_input_tokens == plain.usage.cache_creation_input_tokens  # from message_start
    with httpx.stream("POST", mock.root + "/v1/messages", json={**request, "stream": True}) as resp:
        raw = b"".join(resp.iter_bytes())
    assert raw.startswith(b"event: message_start\ndata: {") and b"[DONE]" not in raw


def test_messages_tool_use_round_trip(mock: MockServer) -> None:
    client = _claude(mock)
    tools: Any = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER}]
    first = client.messages.create(model="claude-haiku-4-5", max_tokens=200, tools=tools,
                                   messages=[{"role": "user", "content": "Weather in Oslo?"}])
    assert first.stop_reason == "tool_use"
    use = first.content[0]
    assert use.type == "tool_use" and use.name == "get_weather" and isinstance(use.input["city"], str)  # type: ignore[union-attr,index]
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=200, tools=tools,
                                messages=[{"role": "user", "content": "Weather in Oslo?"}]) as stream:
        streamed = stream.get_final_message()
    assert streamed.content[0].input == use.input  # type: ignore[union-attr]  (input_json_delta reassembled)
    answer = client.messages.create(
        model="claude-haiku-4-5", max_tokens=200, tools=tools,
        messages=[{"role": "user", "content": "Weather in Oslo?"},
                  {"role": "assistant", "content": [use.model_dump()]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,  # type: ignore[union-attr]
                                                "content": "Sunny, 12 C"}]}])
    assert answer.stop_reason in ("end_turn", "max_tokens") and answer.content[0].type == "text"


def test_messages_errors_are_anthropic_shaped(mock: MockServer) -> None:
    resp = httpx.post(mock.root + "/v1/messages", json={"model": "claude-haiku-4-5", "messages": [
        {"role": "user", "content": "hi"}]})
    assert resp.status_code == 400
    assert resp.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                      "message": "max_tokens: Field required"}}
    with pytest.raises(anthropic.BadRequestError):
        _claude(mock).messages.create(model="claude-haiku-4-5", max_tokens=10, messages=[])


# ---- in process ------------------------------------------------------------------------------------------------


async def _events(upstream: SimulatedUpstream, endpoint: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    return [orjson.loads(p) async for p in upstream.stream(endpoint, {**body, "stream": True})]


def test_in_process_formats_match_http(mock: MockServer) -> None:
    """Same engine, same renderers: the provider and the server answer a request identically (bar ids)."""
    request = {"model": "gpt-4o-mini", "input": "Name three ports."}
    over_http = _oai(mock).responses.create(**request)  # type: ignore[arg-type]

    async def run() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
        upstream = SimulatedUpstream()
        reply = (await upstream.send("responses", request)).body
        events = await _events(upstream, "responses", request)
        claude = _cached_request("in-process ")
        message = (await upstream.send("messages", claude)).body
        return reply, events, message, await _events(upstream, "messages", claude)

    reply, events, message, message_events = asyncio.run(run())
    assert reply["output"][0]["content"][0]["text"] == over_http.output_text
    assert events[-1]["type"] == "response.completed" and events[-1]["response"]["usage"] == reply["usage"]
    assert message["usage"]["cache_creation_input_tokens"] >= 1024  # this instance's cache is its own: a write
    start, delta = message_events[0], next(e for e in message_events if e["type"] == "message_delta")
    assert start["message"]["usage"]["cache_read_input_tokens"] == message["usage"]["cache_creation_input_tokens"]
    assert delta["usage"]["output_tokens"] == message["usage"]["output_tokens"]


def test_in_process_errors_keep_each_format() -> None:
    async def run() -> tuple[UpstreamError, UpstreamError]:
        upstream = SimulatedUpstream(fail_first=1, fail_kind="429")
        try:
            await upstream.send("messages", _cached_request("x"))
        except UpstreamError as exc:
            limited = exc
        try:
            await upstream.send("responses", {"model": "gpt-4o-mini"})
        except UpstreamError as exc:
            return limited, exc
        raise AssertionError("no error")

    limited, bad = asyncio.run(run())
    assert limited.kind == "rate_limit" and limited.body == {
        "type": "error", "error": {"type": "rate_limit_error", "message": limited.message}}
    assert bad.kind == "client" and bad.body is not None and bad.body["error"]["param"] == "input"
