"""The stream relay with each format's events: usage read from the events that carry it (Anthropic's in two parts),
native events passed through byte for byte, a provider's own error event recorded as a cut, and a chat stream's
usage chunk held until settled so it can carry the billed cost (``x_tiergate``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from pipeline.relay import StreamRelay, StreamState
from router.config_loader import parse_policy
from simulator.provider import SimulatedUpstream

POLICY = """
tiers:
  - name: small
    deployments:
      - {id: small-0, model: simulated/gpt-4o-mini}
teams:
  t:
    keys:
      - {id: k, sha256: "0000000000000000000000000000000000000000000000000000000000000000"}
"""


async def _payloads(items: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    for item in items:
        yield orjson.dumps(item)


def _relay(events: list[dict[str, Any]], api: str, x_tiergate: dict[str, Any] | None = None,
           wants_usage: bool = False) -> tuple[list[bytes], StreamRelay, list[tuple[str, Any]]]:
    dep = parse_policy(POLICY).tiers[0].deployments[0]
    endings: list[tuple[str, Any]] = []

    def record_for(state: StreamState, ending: str, error: str | None) -> Any:
        endings.append((ending, state.usage))
        return type("Record", (), {"request_id": "r1"})()

    async def settle(record: Any) -> int:
        await asyncio.sleep(0.01)  # the ledger write: the held chunk must wait for it
        return 1_234_567

    async def run() -> tuple[list[bytes], StreamRelay]:
        tasks: set[asyncio.Task[int]] = set()

        def spawn(work: Any) -> asyncio.Task[int]:
            task = asyncio.get_running_loop().create_task(work)
            tasks.add(task)
            return task

        first, *rest = events
        relay = StreamRelay(orjson.dumps(first), _payloads(rest), dep, wants_usage, record_for, settle,  # type: ignore[arg-type]
                            spawn, api, x_tiergate)
        out = [p async for p in relay.payloads()]
        await asyncio.gather(*tasks)
        return out, relay

    out, relay = asyncio.run(run())
    return out, relay, endings


def _simulated(endpoint: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        return [orjson.loads(p) async for p in SimulatedUpstream().stream(endpoint, {**body, "stream": True})]  # type: ignore[arg-type]

    return asyncio.run(run())


def test_messages_usage_is_merged_from_message_start_and_message_delta() -> None:
    events = _simulated("messages", {"model": "claude-haiku-4-5", "max_tokens": 40,
                                     "messages": [{"role": "user", "content": "hi"}]})
    out, relay, endings = _relay(events, "messages")
    assert out == [orjson.dumps(e) for e in events]  # untouched
    (ending, usage), = endings
    start = events[0]["message"]["usage"]
    delta = next(e for e in events if e["type"] == "message_delta")["usage"]
    assert ending == "ok" and relay.cost_nanos == 1_234_567
    assert usage["input_tokens"] == start["input_tokens"] and usage["output_tokens"] == delta["output_tokens"] > 1
    assert usage["cache_read_input_tokens"] == 0 and "cache_creation_input_tokens" in usage


def test_responses_usage_comes_from_response_completed() -> None:
    events = _simulated("responses", {"model": "gpt-4o-mini", "input": "hi"})
    out, _, endings = _relay(events, "responses")
    assert len(out) == len(events) and endings == [("ok", events[-1]["response"]["usage"])]


def test_a_native_error_event_is_relayed_and_recorded_as_a_cut() -> None:
    events = _simulated("messages", {"model": "claude-haiku-4-5", "max_tokens": 40,
                                     "messages": [{"role": "user", "content": "hi"}]})[:4]
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    out, relay, endings = _relay([*events, overloaded], "messages")
    assert orjson.loads(out[-1]) == overloaded  # the client has the provider's own error event
    assert endings[0][0] == "upstream_failed.stream_cut" and relay.error is None  # no second error from us


def test_chat_usage_chunk_waits_for_the_settled_cost() -> None:
    events = _simulated("chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                                             "stream_options": {"include_usage": True}})
    out, relay, _ = _relay(events, "chat", {"tier": "small", "score": 0.25, "model": "gpt-4o-mini"}, True)
    last = orjson.loads(out[-1])
    assert last["choices"] == [] and last["usage"] == events[-1]["usage"]
    assert last["x_tiergate"] == {"cost_usd": "0.001234567", "tier": "small", "score": 0.25, "model": "gpt-4o-mini"}
    assert all(b"x_tiergate" not in p for p in out[:-1]) and relay.cost_nanos == 1_234_567
