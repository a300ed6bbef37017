"""The mock upstream over real HTTP, driven by the official openai SDK, as the proxy's tests and benchmarks use it."""

from __future__ import annotations

import base64
import json
import math
import struct
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import tiktoken

from tests.helpers_simulator import MockServer, running
from tests.waiting import eventually
from text.tokens import configure

configure()  # tiktoken's offline files, before the encoding below
ENC = tiktoken.get_encoding("o200k_base")  # gpt-4o family, computed here independently of the simulator
USER = [{"role": "user", "content": "Summarise the quarterly report in two sentences."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}, "note": {"type": "string"}},
            "required": ["city", "days", "unit"],
        },
    },
}


def openai_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """OpenAI's published chat accounting: 3 tokens per message, 3 to prime the reply."""
    return 3 + sum(3 + len(ENC.encode(m["content"])) for m in messages)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[MockServer, MockServer, MockServer]]:
    ok = MockServer()
    faulty = MockServer("--fail-rate", "1", "--fail-kind", "mixed", "--fail-seed", "6", "--hang-s", "30")
    paced = MockServer("--latency-ms", "80", "--ttft-ms", "80", "--tokens-per-s", "200")
    with running(ok, faulty, paced):
        yield ok, faulty, paced


@pytest.fixture(scope="module")
def client(servers: tuple[MockServer, ...]) -> openai.OpenAI:
    return openai.OpenAI(base_url=servers[0].url, api_key="sk-test", max_retries=0)


def test_chat_usage_is_tiktoken_exact(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "You are terse."}, *USER]
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    text = reply.choices[0].message.content
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-") and reply.model == "gpt-4o-mini"
    assert reply.system_fingerprint and reply.system_fingerprint.startswith("fp_")
    assert reply.choices[0].finish_reason == "stop" and text
    usage = reply.usage
    assert usage.prompt_tokens == openai_prompt_tokens(messages)
    assert usage.completion_tokens == len(ENC.encode(text))
    assert 20 <= usage.completion_tokens <= 200
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == 0 and usage.prompt_tokens_details.audio_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0


def test_same_request_same_reply_and_seed_changes_it(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="gpt-4o", messages=USER, seed=1).choices[0].message.content
    again = client.chat.completions.create(model="gpt-4o", messages=USER, seed=1).choices[0].message.content
    other = client.chat.completions.create(model="gpt-4o", messages=USER, seed=2).choices[0].message.content
    assert first == again and first != other


def test_stream_with_usage_matches_non_stream(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="gpt-4o", messages=USER)
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=USER, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-2].choices[0].delta.content is None
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == len(ENC.encode(text))
    assert len(chunks) > 5  # content arrives in several deltas, not one


def test_stream_without_usage_has_no_usage_chunk_and_ends_with_done(servers: tuple[MockServer, ...]) -> None:
    body = {"model": "gpt-4o", "messages": USER, "stream": True}
    raw = httpx.post(servers[0].url + "/chat/completions", json=body).text
    events = [line[6:] for line in raw.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in p and p["object"] == "chat.completion.chunk" for p in payloads)
    assert payloads[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_truncates_with_length(client: openai.OpenAI, field: str) -> None:
    reply = client.chat.completions.create(model="gpt-4o", messages=USER, **{field: 7})
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 7 == len(ENC.encode(reply.choices[0].message.content))


def test_reasoning_models_count_reasoning_inside_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="o3-mini", messages=USER, max_completion_tokens=1000)
    reasoning = reply.usage.completion_tokens_details.reasoning_tokens
    assert reasoning > 0
    assert reply.usage.completion_tokens == reasoning + len(ENC.encode(reply.choices[0].message.content))


def test_stop_sequence_cuts_reply(client: openai.OpenAI) -> None:
    text = client.chat.completions.create(model="gpt-4o", messages=USER).choices[0].message.content
    word = text.split()[3].strip(",.")
    cut = client.chat.completions.create(model="gpt-4o", messages=USER, stop=[" " + word])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(" " + word)]


def test_n_choices_differ(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="gpt-4o", messages=USER, n=3)
    texts = [c.message.content for c in reply.choices]
    assert [c.index for c in reply.choices] == [0, 1, 2] and len(set(texts)) == 3
    assert reply.usage.completion_tokens == sum(len(ENC.encode(t)) for t in texts)


def test_tool_call_arguments_follow_schema(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="gpt-4o", messages=USER, tools=[WEATHER_TOOL])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    # Tool definitions are part of the prompt, as OpenAI bills them.
    tools_json = json.dumps([WEATHER_TOOL], separators=(",", ":"))
    assert reply.usage.prompt_tokens == openai_prompt_tokens(USER) + len(ENC.encode(tools_json))
    assert set(args) == {"city", "days", "unit"}
    assert isinstance(args["city"], str) and 1 <= args["days"] <= 7 and args["unit"] in ("celsius", "fahrenheit")
    # After the tool result comes back, "auto" answers in text; "none" never calls.
    followup = [*USER, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    assert client.chat.completions.create(model="gpt-4o", messages=followup, tools=[WEATHER_TOOL]).choices[0]\
        .finish_reason == "stop"
    assert client.chat.completions.create(model="gpt-4o", messages=USER, tools=[WEATHER_TOOL], tool_choice="none")\
        .choices[0].message.tool_calls is None


def test_streamed_tool_call_reassembles_to_the_same_call(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="gpt-4o", messages=USER, tools=[WEATHER_TOOL], tool_choice="required")
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=USER, tools=[WEATHER_TOOL],
                                                 tool_choice="required", stream=True))
    first = chunks[0].choices[0].delta.tool_calls[0]
    arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments
                        for c in chunks if c.choices and c.choices[0].delta.tool_calls)
    assert first.id == whole.choices[0].message.tool_calls[0].id and first.function.name == "get_weather"
    assert arguments == whole.choices[0].message.tool_calls[0].function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_structured_outputs_are_valid_json(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"title": {"type": "string"}, "tags": {"type": "array",
              "items": {"type": "string"}}, "score": {"type": "number"}}, "required": ["title", "tags", "score"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "summary", "schema": schema, "strict": True}}
    data = json.loads(client.chat.completions.create(model="gpt-4o", messages=USER, response_format=fmt)
                      .choices[0].message.content)
    assert isinstance(data["title"], str) and isinstance(data["tags"], list) and isinstance(data["score"], float)
    loose = client.chat.completions.create(model="gpt-4o", messages=USER, response_format={"type": "json_object"})
    assert isinstance(json.loads(loose.choices[0].message.content), dict)


def test_prefix_caching_reports_openai_increments(client: openai.OpenAI) -> None:
    system = " ".join(f"Rule {i}: answer politely and cite the policy section." for i in range(120))
    messages = [{"role": "system", "content": system}, *USER]
    prompt_tokens = openai_prompt_tokens(messages)
    assert 1300 < prompt_tokens < 1700
    cold = client.chat.completions.create(model="gpt-4o", messages=messages)
    warm = client.chat.completions.create(model="gpt-4o", messages=messages)
    assert cold.usage.prompt_tokens == warm.usage.prompt_tokens == prompt_tokens
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert warm.usage.prompt_tokens_details.cached_tokens == 1024 + (prompt_tokens - 1024) // 128 * 128
    # The next turn shares the prefix; another prompt_cache_key routes elsewhere and starts cold.
    turn2 = [*messages, {"role": "assistant", "content": warm.choices[0].message.content}, *USER]
    assert client.chat.completions.create(model="gpt-4o", messages=turn2).usage.prompt_tokens_details\
        .cached_tokens >= 1024 + (prompt_tokens - 1024) // 128 * 128
    keyed = client.chat.completions.create(model="gpt-4o", messages=messages, extra_body={"prompt_cache_key": "t"})
    assert keyed.usage.prompt_tokens_details.cached_tokens == 0
    short = client.chat.completions.create(model="gpt-4o", messages=USER)
    assert client.chat.completions.create(model="gpt-4o", messages=USER).usage.prompt_tokens_details.cached_tokens \
        == 0 == short.usage.prompt_tokens_details.cached_tokens


def test_embeddings(client: openai.OpenAI, servers: tuple[MockServer, ...]) -> None:
    reply = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta", "alpha"], dimensions=256)
    vectors = [d.embedding for d in reply.data]
    assert [len(v) for v in vectors] == [256] * 3 and vectors[0] == vectors[2] and vectors[0] != vectors[1]
    assert math.isclose(math.fsum(x * x for x in vectors[1]), 1.0, rel_tol=1e-4)
    assert reply.usage.prompt_tokens == 3 == reply.usage.total_tokens
    raw = httpx.post(servers[0].url + "/embeddings", json={"model": "text-embedding-3-small", "input": [[1, 2, 3]],
                                                           "encoding_format": "base64"}).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert len(packed) == 1536 * 4 and raw["usage"]["prompt_tokens"] == 3
    assert math.isclose(math.fsum(x * x for x in struct.unpack("<1536f", packed)), 1.0, rel_tol=1e-4)


def test_legacy_completions(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon a time")
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert reply.usage.prompt_tokens == len(tiktoken.get_encoding("cl100k_base").encode("Once upon a time"))
    assert reply.usage.completion_tokens == 16 and reply.choices[0].finish_reason == "length"  # OpenAI's default
    streamed = list(client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon a time", stream=True))
    assert "".join(c.choices[0].text for c in streamed) == reply.choices[0].text


def test_bad_requests_get_openai_errors(client: openai.OpenAI, servers: tuple[MockServer, ...]) -> None:
    with pytest.raises(openai.BadRequestError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=[])
    assert missing.value.status_code == 400 and missing.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as wrong:
        client.chat.completions.create(model="gpt-4o", messages=USER, max_tokens="ten")  # type: ignore[arg-type]
    assert wrong.value.body["code"] == "invalid_type" and wrong.value.body["param"] == "max_tokens"
    broken = httpx.post(servers[0].url + "/chat/completions", content=b'{"model": "gpt-4o", "messages": [',
                        headers={"content-type": "application/json"})
    assert broken.status_code == 400 and set(broken.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.post(servers[0].url + "/chat/completions", json={"messages": USER}).json()["error"]["param"] == "model"
    assert httpx.get(servers[0].url + "/nothing").status_code == 404


def test_request_log_models_and_unprefixed_paths(servers: tuple[MockServer, ...]) -> None:
    root = servers[0].root
    assert httpx.delete(root + "/_mock/requests").json() == {"requests": []}
    body = {"model": "gpt-4o", "messages": USER, "user": "u-1"}
    assert httpx.post(root + "/chat/completions", json=body, headers={"x-request-id": "r1"}).status_code == 200
    [seen] = httpx.get(root + "/_mock/requests").json()["requests"]
    assert seen["path"] == "/chat/completions" and seen["body"] == body and seen["headers"]["x-request-id"] == "r1"
    assert httpx.get(root + "/_mock/stats").json()["requests"] >= 1
    ids = [m["id"] for m in httpx.get(root + "/v1/models").json()["data"]]
    assert "gpt-4o-mini" in ids and "text-embedding-3-small" in ids


def test_injected_failures_surface_as_sdk_errors(servers: tuple[MockServer, ...]) -> None:
    faulty = openai.OpenAI(base_url=servers[1].url, api_key="sk-test", max_retries=0, timeout=0.4)
    seen: set[type] = set()
    for _ in range(5):  # seed 6 draws 429, 500, 429, 500, timeout
        with pytest.raises((openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError)) as err:
            faulty.chat.completions.create(model="gpt-4o", messages=USER)
        seen.add(type(err.value))
        if isinstance(err.value, openai.RateLimitError):
            assert err.value.response.headers["retry-after"] == "1"
            assert err.value.body["code"] == "rate_limit_exceeded"
    assert seen == {openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError}
    # Validation comes first: a bad request is a 400 even when every request is set to fail.
    assert httpx.post(servers[1].url + "/chat/completions", json={"model": "gpt-4o"}).status_code == 400


def test_pacing_and_client_disconnect(servers: tuple[MockServer, ...]) -> None:
    paced = servers[2]
    started = time.perf_counter()
    httpx.post(paced.url + "/chat/completions", json={"model": "gpt-4o", "messages": USER}).raise_for_status()
    assert time.perf_counter() - started >= 0.08
    body = {"model": "gpt-4o", "messages": USER, "stream": True, "max_tokens": 150}
    started = time.perf_counter()
    with httpx.stream("POST", paced.url + "/chat/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert time.perf_counter() - started >= 0.08  # time to first token
    # Dropping the connection stops generation (150 tokens at 200/s would take 0.75 s more): the stream ends as
    # aborted, not completed.
    def ended() -> dict[str, int] | None:
        stats = httpx.get(paced.root + "/_mock/stats").json()
        return stats if {"streams_aborted", "streams_completed"} & stats.keys() else None

    stats = eventually(ended, "the paced stream to end")
    assert stats.get("streams_aborted") == 1, "the server kept streaming to a client that left"
    assert "streams_completed" not in httpx.get(paced.root + "/_mock/stats").json()
