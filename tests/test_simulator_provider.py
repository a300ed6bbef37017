"""The simulator in process: the provider the demo config uses, and the pieces both transports share."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from array import array
from typing import Any

import pytest

from simulator.cli import add_commands, options_from_args, run
from simulator.options import SimulatorOptions
from simulator.prefix_cache import PrefixCache, cacheable_tokens
from simulator.provider import SimulatedUpstream
from simulator.structured import value_for
from simulator.text import words
from text.tokens import encoding_for
from upstream.base import UpstreamError

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Plan a three-day trip to Lisbon."}]}


async def _collect(upstream: SimulatedUpstream, body: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(p) async for p in upstream.stream("chat/completions", body)]


def test_send_and_stream_agree() -> None:
    async def run() -> None:
        upstream = SimulatedUpstream()
        reply = await upstream.send("chat/completions", CHAT)
        events = await _collect(upstream, {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
        assert reply.status == 200 and text == reply.body["choices"][0]["message"]["content"]
        assert events[-1]["usage"]["completion_tokens"] == reply.body["usage"]["completion_tokens"]
        assert upstream.simulator.stats["streams_completed"] == 1
        await upstream.close()

    asyncio.run(run())


def test_a_system_message_after_the_user_still_lets_the_model_call_a_tool() -> None:
    """Claude Code lists its agents in a system message after the user's turn: the user still spoke last."""
    tool = {"type": "function", "function": {"name": "glob", "parameters": {"type": "object", "properties": {}}}}

    async def run() -> None:
        upstream = SimulatedUpstream()
        for tail in ([], [{"role": "system", "content": "Agents: none."}]):
            reply = await upstream.send("chat/completions", {**CHAT, "tools": [tool],
                                                             "messages": [*CHAT["messages"], *tail]})
            assert reply.body["choices"][0]["finish_reason"] == "tool_calls"
        answered = [*CHAT["messages"], {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "glob", "arguments": "{}"}}]}, {"role": "tool", "tool_call_id": "c1",
                    "content": "a.py"}, {"role": "system", "content": "Agents: none."}]
        reply = await upstream.send("chat/completions", {**CHAT, "tools": [tool], "messages": answered})
        assert reply.body["choices"][0]["finish_reason"] == "stop"  # after a tool result: text
        await upstream.close()

    asyncio.run(run())


@pytest.mark.parametrize(("kind", "expected", "status"), [("429", "rate_limit", 429), ("500", "server", 500),
                                                          ("timeout", "timeout", 504)])
def test_failures_raise_upstream_errors(kind: str, expected: str, status: int) -> None:
    upstream = SimulatedUpstream(fail_rate=1.0, fail_kind=kind, hang_s=0.01, retry_after_s=2.0)

    async def run() -> UpstreamError:
        with pytest.raises(UpstreamError) as err:
            await upstream.send("chat/completions", CHAT)
        with pytest.raises(UpstreamError):  # streams fail before their first payload
            await _collect(upstream, {**CHAT, "stream": True})
        return err.value

    error = asyncio.run(run())
    assert error.kind == expected and error.status == status and error.retryable
    assert error.body is not None and set(error.body["error"]) == {"message", "type", "param", "code"}
    assert error.retry_after == (2.0 if kind == "429" else None)


def test_invalid_request_is_a_client_error() -> None:
    with pytest.raises(UpstreamError) as err:
        asyncio.run(SimulatedUpstream().send("chat/completions", {"model": "gpt-4o", "messages": "hi"}))
    assert err.value.kind == "client" and err.value.status == 400 and not err.value.retryable
    assert err.value.body["error"]["param"] == "messages"


def test_fail_first_then_recover() -> None:
    upstream = SimulatedUpstream(fail_first=2, fail_kind="500")

    async def run() -> list[str]:
        outcomes = []
        for _ in range(3):
            try:
                await upstream.send("chat/completions", CHAT)
                outcomes.append("ok")
            except UpstreamError as exc:
                outcomes.append(exc.kind)
        return outcomes

    assert asyncio.run(run()) == ["server", "server", "ok"]


def test_pacing_and_early_close() -> None:
    upstream = SimulatedUpstream(ttft_ms=60, tokens_per_s=2000)

    async def run() -> tuple[float, float]:
        start = time.perf_counter()
        events = upstream.stream("chat/completions", {**CHAT, "stream": True, "max_tokens": 40})
        await events.__anext__()
        first = time.perf_counter() - start
        async for _ in events:
            pass
        total = time.perf_counter() - start
        early = upstream.stream("chat/completions", {**CHAT, "stream": True})
        await early.__anext__()
        await early.aclose()  # what the proxy does when its client disconnects
        return first, total

    first, total = asyncio.run(run())
    assert first >= 0.055 and total >= 0.06 + 40 / 2000 * 0.9
    assert upstream.simulator.stats["streams_aborted"] == 1 and upstream.simulator.stats["streams_completed"] == 1


def test_provider_records_requests_and_caches_per_instance() -> None:
    long_system = {"role": "system", "content": "policy clause " * 700}
    body = {"model": "gpt-4o", "messages": [long_system, *CHAT["messages"]]}

    async def cached(upstream: SimulatedUpstream) -> int:
        reply = await upstream.send("chat/completions", body)
        return reply.body["usage"]["prompt_tokens_details"]["cached_tokens"]

    one, two = SimulatedUpstream(), SimulatedUpstream()
    assert asyncio.run(cached(one)) == 0 and asyncio.run(cached(one)) >= 1024
    assert asyncio.run(cached(two)) == 0  # another deployment has a cold cache
    assert one.simulator.requests[-1]["body"] == body and one.simulator.requests[-1]["path"] == "chat/completions"


def test_prefix_cache_expiry_and_bound() -> None:
    now = [0.0]
    cache = PrefixCache(ttl_s=300, max_entries=10, clock=lambda: now[0])
    prompt = array("I", range(1500))
    assert cache.lookup_and_store("m", prompt) == 0
    assert cache.lookup_and_store("m", prompt) == cacheable_tokens(1500) == 1408
    assert cache.lookup_and_store("other-model", prompt) == 0
    diverging = array("I", [*range(1200), *range(5000, 5300)])
    assert cache.lookup_and_store("m", diverging) == 1152  # shared up to token 1200: the 1152 boundary
    now[0] = 301.0
    assert cache.lookup_and_store("m", prompt) == 0  # idle past the TTL
    bounded = PrefixCache(max_entries=3)
    bounded.lookup_and_store("m", prompt)  # four boundaries: the oldest is evicted
    assert len(bounded) == 3
    assert cacheable_tokens(1023) == 0 and cacheable_tokens(1024) == 1024 and cacheable_tokens(1151) == 1024


def test_schema_values_have_declared_types() -> None:
    schema = {"type": "object", "required": ["id", "items", "meta", "kind", "ok"], "properties": {
        "id": {"type": "integer", "minimum": 5, "maximum": 9},
        "items": {"type": "array", "minItems": 2, "items": {"type": "object", "properties": {"x": {"type": "number"}}}},
        "meta": {"type": ["object", "null"], "properties": {"tag": {"const": "v1"}}, "required": ["tag"]},
        "kind": {"anyOf": [{"type": "string", "enum": ["a", "b"]}, {"type": "null"}]},
        "ok": {"type": "boolean"}, "unused": {"type": "string"}}}
    value = value_for(schema, "gpt-4o", random.Random(1))
    assert set(value) == {"id", "items", "meta", "kind", "ok"}
    assert 5 <= value["id"] <= 9 and len(value["items"]) == 2 and isinstance(value["items"][0]["x"], float)
    assert value["meta"] == {"tag": "v1"} and value["kind"] in ("a", "b") and isinstance(value["ok"], bool)


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4", "text-davinci-003"])
def test_generated_text_is_one_token_per_piece(model: str) -> None:
    encoding = encoding_for(model)
    for seed in range(40):
        pieces = words(model, seed, 5 + seed * 3)
        assert len(pieces) == 5 + seed * 3 == len(encoding.encode("".join(pieces)))


def test_options_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        SimulatorOptions(fail_rate=1.5)
    with pytest.raises(ValueError):
        SimulatorOptions(fail_kind="teapot")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SimulatorOptions(latency_ms=-1)


def test_cli_registers_mock_upstream() -> None:
    parser = argparse.ArgumentParser(prog="tiergate")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["mock-upstream", "--fail-rate", "0.25", "--fail-kind", "429", "--tokens-per-s", "50"])
    options = options_from_args(args)
    assert args.port == 18000 and args.host == "127.0.0.1" and args.workers == 1 and args.func is run
    assert options == SimulatorOptions(fail_rate=0.25, fail_kind="429", tokens_per_s=50.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["mock-upstream", "--fail-rate", "2"])
