"""Relay an upstream stream to the client while metering it.

Forwards each payload, keeps the usage chunk for metering (hidden unless the client asked for it, so the proxy
stays transparent), counts the generated text in case the provider never sends usage, and settles exactly once
however the stream ends: completed, cut by the upstream, or abandoned by the client.

Chat streams whose client asked for usage get the request's cost on the usage chunk (``x_tiergate``: SDKs expose
unknown fields, e.g. openai's ``chunk.model_extra``), so that chunk is held until the stream is settled. Streams in
a native format (Responses, Messages events) pass through untouched; their usage is read from the events that carry
it (``response.completed``; ``message_start`` then ``message_delta``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson

from metering.money import format_usd
from metering.record import UsageRecord
from metering.usage import Usage, estimate_usage
from pipeline.errors import Ending
from pipeline.records import response_id_of
from router.policy import DeploymentSpec
from upstream.base import UpstreamError
from upstream.dispatch import public_reason

log = logging.getLogger("tiergate.relay")

Spawn = Callable[[Coroutine[Any, Any, int]], "asyncio.Task[int]"]
# Native events by which a provider says its stream failed (Anthropic's and the Responses API's ``error``, and
# ``response.failed``): relayed to the client as sent, and the request recorded as cut.
_NATIVE_FAILURES = frozenset({"error", "response.failed"})


@dataclass
class StreamState:
    usage: dict[str, Any] | None = None
    text: list[str] = field(default_factory=list)
    response_id: str | None = None  # the answer's own id, from the first payload that has one

    def observe(self, chunk: dict[str, Any]) -> None:
        if self.response_id is None:
            self.response_id = response_id_of(chunk)
        kind = chunk.get("type")  # only the native formats' events name themselves
        if kind is not None:
            self._observe_event(kind, chunk)
            return
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta")
            piece = delta.get("content") if delta else choice.get("text")
            if isinstance(piece, str):
                self.text.append(piece)
            for call in (delta or {}).get("tool_calls") or ():
                fn = call.get("function") or {}
                self.text.append(fn.get("name") or "")
                self.text.append(fn.get("arguments") or "")

    def _observe_event(self, kind: str, event: dict[str, Any]) -> None:
        """A Responses or Messages event: generated text from the deltas, usage from the events that carry it."""
        if kind in ("response.output_text.delta", "response.function_call_arguments.delta"):
            if isinstance(event.get("delta"), str):
                self.text.append(event["delta"])
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            piece = delta.get("text") or delta.get("partial_json") or delta.get("thinking")
            if isinstance(piece, str):
                self.text.append(piece)
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            usage = (event.get("response") or {}).get("usage")
            if isinstance(usage, dict) and usage:
                self.usage = usage
        elif kind == "message_start":
            usage = (event.get("message") or {}).get("usage")
            if isinstance(usage, dict):
                self.usage = dict(usage)
        elif kind == "message_delta":
            # Output counts are cumulative and newer API versions repeat the input counts here: the latest wins.
            later = {k: v for k, v in (event.get("usage") or {}).items() if v is not None}
            self.usage = {**(self.usage or {}), **later}

    def estimated_usage(self, prompt_tokens: int, dep: DeploymentSpec) -> Usage:
        """What the provider will bill when it sent no usage: tiktoken over what we relayed, flagged."""
        return estimate_usage(prompt_tokens, "".join(self.text), dep.upstream_model)


class StreamRelay:
    """One stream's relay. ``payloads()`` is handed to the ingress; ``abandon()`` settles a stream whose
    payloads were never iterated (the client vanished before the response started), so no hold or record
    is ever lost. Once ``payloads()`` is exhausted, ``cost_nanos`` (completed) or ``error`` (cut) says how it
    ended."""

    def __init__(self, first: bytes, rest: AsyncGenerator[bytes, None], dep: DeploymentSpec, client_wants_usage: bool,
                 record_for: Callable[[StreamState, Ending, str | None], UsageRecord],
                 settle: Callable[[UsageRecord], Awaitable[int]], spawn: Spawn, api: str = "chat",
                 x_tiergate: dict[str, Any] | None = None) -> None:
        """``api``: the payloads' format ("chat": OpenAI chunks; else native events, relayed as they come).
        ``x_tiergate``: what the usage chunk is to carry besides the cost (tier, score, model), or None."""
        self._first = first
        self._native = api != "chat"
        self._x_tiergate = x_tiergate
        self._rest = rest
        self._dep = dep
        self._client_wants_usage = client_wants_usage
        self._record_for = record_for
        self._settle = settle
        self._spawn = spawn
        self._state = StreamState()
        self._finishing: asyncio.Task[int] | None = None
        self.cost_nanos: int | None = None  # set when the stream completed
        self.error: str | None = None  # set when the upstream cut it: what the client is told

    def _finish(self, ending: Ending, error: str | None) -> asyncio.Task[int]:
        """Close the upstream and settle, once, in a task of its own: if the client went away, the relaying
        task is being cancelled, and the settlement (and the upstream close) must still complete."""
        if self._finishing is None:
            record = self._record_for(self._state, ending, error)

            async def finish() -> int:
                try:
                    await self._rest.aclose()  # cancels the upstream call if it is still running
                except Exception:
                    log.warning("closing the upstream stream of %s failed", record.request_id, exc_info=True)
                return await self._settle(record)

            self._finishing = self._spawn(finish())
        return self._finishing

    def abandon(self) -> None:
        self._finish("client_disconnected", None)

    async def payloads(self) -> AsyncIterator[bytes]:
        completed = False
        error: str | None = None
        held: dict[str, Any] | None = None  # the latest chunk with usage, sent with the cost once settled
        failed: str | None = None  # a native stream's own error event: the client has it, the ledger records it
        try:
            payload: bytes | None = self._first
            while payload is not None:
                chunk = orjson.loads(payload)
                self._state.observe(chunk)
                if self._native:
                    if failed is None and chunk.get("type") in _NATIVE_FAILURES:
                        failed = f"upstream stream from deployment {self._dep.id} ended early: sent an error event"
                    yield payload
                elif self._x_tiergate is not None and chunk.get("usage"):
                    if held is not None:  # a provider that repeats usage on several chunks: all but the last pass
                        yield orjson.dumps(held)
                    held = chunk
                elif self._client_wants_usage or "usage" not in chunk:
                    yield payload
                elif chunk.get("choices"):
                    # We asked upstream for usage, which adds "usage": null to every chunk; the client did not.
                    del chunk["usage"]
                    yield orjson.dumps(chunk)
                payload = await anext(self._rest, None)
            completed = True
        except Exception as exc:  # upstream cut mid-stream: the client already has bytes, so no retry
            # The client (and the ledger) get the deployment id and the kind of failure; the log keeps the rest.
            reason = public_reason(exc) if isinstance(exc, UpstreamError) else "sent an unusable stream"
            error = f"upstream stream from deployment {self._dep.id} ended early: {reason}"
            log.warning("stream from %s ended early: %s", self._dep.id, str(exc) or type(exc).__name__)
        finally:
            if not completed:
                self._finish("upstream_failed.stream_cut" if error is not None else "client_disconnected", error)
                self.error = error
        if completed:
            ending: Ending = "ok" if failed is None else "upstream_failed.stream_cut"
            self.cost_nanos = await asyncio.shield(self._finish(ending, failed))
            if held is not None:
                held["x_tiergate"] = {"cost_usd": format_usd(self.cost_nanos), **(self._x_tiergate or {})}
                yield orjson.dumps(held)
