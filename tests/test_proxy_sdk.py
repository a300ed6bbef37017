"""The official openai SDK, unchanged, against a running proxy on the demo config (real HTTP on loopback)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import DEMO_KEYS, Process


@pytest.fixture
def client(demo_proxy: Process) -> openai.OpenAI:
    return openai.OpenAI(base_url=demo_proxy.url + "/v1", api_key=DEMO_KEYS["research"], max_retries=0)


def test_chat_non_stream_routes_and_reports_cost(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "What is the capital of France?"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert raw.headers["x-tiergate-tier"] in {"small", "mid", "frontier"}
    assert float(raw.headers["x-tiergate-score"]) >= 0.0
    assert raw.headers["x-tiergate-model"] == completion.model
    assert float(raw.headers["x-tiergate-cost-usd"]) > 0
    assert raw.headers["x-request-id"].startswith("req_")
    # research has a max_tokens default of 512, injected because the client sent none
    assert raw.headers["x-tiergate-max-tokens"] == "512;default"


def test_stream_with_usage_is_openai_shaped(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "Tell me a short story."}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    assert usage_chunks[0].usage.completion_tokens > 0
    assert chunks[-1] is usage_chunks[0]


def test_stream_without_usage_hides_the_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="small", messages=[{"role": "user", "content": "hello"}], stream=True, max_tokens=20
        )
    )
    assert chunks and all(c.choices for c in chunks)  # the proxy asked for usage upstream; the client did not
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}


def test_stream_sse_bytes(demo_proxy: Process) -> None:
    body = {"model": "small", "stream": True, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", demo_proxy.url + "/v1/chat/completions", json=body,
                      headers={"authorization": f"Bearer {DEMO_KEYS['research']}"}, timeout=30) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(resp.iter_raw())
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert any(e.startswith(b": x-tiergate-cost-usd=") for e in events)
    for event in events[:-1]:
        if event.startswith(b"data: "):
            chunk = json.loads(event[6:])
            assert chunk["object"] == "chat.completion.chunk"
            assert "usage" not in chunk  # the client did not ask for usage: byte-transparent to it


def test_tools_force_tool_call_shape(client: openai.OpenAI) -> None:
    tools = [{
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }]
    completion = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=tools, tool_choice="required"
    )
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)


def test_embeddings_and_completions(client: openai.OpenAI) -> None:
    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0
    comp = client.completions.create(model="small", prompt="Say hi", max_tokens=8)
    assert comp.choices[0].text and comp.usage.completion_tokens <= 8


def test_models_lists_what_the_key_may_use(demo_proxy: Process) -> None:
    support = openai.OpenAI(base_url=demo_proxy.url + "/v1", api_key=DEMO_KEYS["support"], max_retries=0)
    ids = {m.id for m in support.models.list()}
    assert {"auto", "small", "mid"} <= ids
    assert "frontier" not in ids  # support's ceiling is mid


def test_errors_surface_as_sdk_exceptions(client: openai.OpenAI, demo_proxy: Process) -> None:
    bad_key = openai.OpenAI(base_url=demo_proxy.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth:
        bad_key.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}])
    assert auth.value.status_code == 401
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-9000", messages=[{"role": "user", "content": "x"}])
    assert "auto" in missing.value.message and missing.value.code == "model_not_found"
    support = openai.OpenAI(base_url=demo_proxy.url + "/v1", api_key=DEMO_KEYS["support"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as pin:
        support.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert "allow_pinning" in pin.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="auto", messages=[{"role": "wizard", "content": "x"}])
    assert bad.value.status_code == 400 and "role" in bad.value.message
