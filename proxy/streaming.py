"""Server-sent events framing, byte-compatible with OpenAI's: ``data: <json>\\n\\n`` ... ``data: [DONE]\\n\\n``.

The pipeline yields bare JSON payloads; this module adds the framing, the proxy's own comment lines (ignored by
SSE parsers, including every OpenAI SDK), and an OpenAI-shaped error event if the upstream breaks mid-stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.responses import StreamingResponse

from metering.money import format_usd
from pipeline.errors import error_object
from pipeline.result import Streaming
from proxy.errors import ERRORS

DONE = b"data: [DONE]\n\n"
_CUT = ERRORS["upstream_failed.stream_cut"]


def comment(name: str, value: str) -> bytes:
    return f": {name}={value}\n\n".encode()


async def sse(streaming: Streaming) -> AsyncIterator[bytes]:
    if streaming.notes.context is not None:  # said before the first payload: a client reading events sees it first
        yield comment("x-tiergate-context", streaming.notes.context)
    relay = streaming.relay
    async for payload in relay.payloads():
        yield b"data: " + payload + b"\n\n"
    if relay.error is not None:
        yield b"data: " + orjson.dumps(error_object(relay.error, _CUT.type, None, _CUT.code)) + b"\n\n"
        return
    if relay.cost_nanos is not None:
        yield comment("x-tiergate-cost-usd", format_usd(relay.cost_nanos))
    yield DONE


class SSEResponse(StreamingResponse):
    """An SSE response that settles its stream even if it is never sent (the client left before it began).

    ``events`` is the stream framed in the ingress's own format (``sse`` for OpenAI's; the Responses and Messages
    ingresses frame theirs), drawn from ``streaming.relay``."""

    def __init__(self, streaming: Streaming, headers: dict[str, str],
                 events: AsyncIterator[bytes] | None = None) -> None:
        super().__init__(events if events is not None else sse(streaming), media_type="text/event-stream",
                         headers=headers)
        self._streaming = streaming

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._streaming.relay.abandon()  # a no-op when the relay already settled
