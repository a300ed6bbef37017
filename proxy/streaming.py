"""Server-sent events framing, byte-compatible with OpenAI's: ``data: <json>\\n\\n`` ... ``data: [DONE]\\n\\n``.

The gateway yields bare JSON payloads; this module adds the framing, the proxy's own comment lines (ignored by
SSE parsers, including every OpenAI SDK), and an OpenAI-shaped error event if the upstream breaks mid-stream.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import orjson
from starlette.responses import StreamingResponse

from pipeline.errors import error_object
from proxy.errors import ERRORS
from proxy.gateway import Streamed

DONE = b"data: [DONE]\n\n"


def comment(name: str, value: str) -> bytes:
    return f": {name}={value}\n\n".encode()


async def sse(streamed: Streamed) -> AsyncIterator[bytes]:
    for name, value in streamed.lead.items():
        yield comment(name, value)
    async for payload in streamed.relay.payloads():
        yield b"data: " + payload + b"\n\n"
    trailer = streamed.relay.trailer
    error = trailer.get("error")
    if error is not None:
        spec = ERRORS["upstream_failed.stream_cut"]
        yield b"data: " + orjson.dumps(error_object(error, spec.type, None, spec.code)) + b"\n\n"
        return
    for name, value in trailer.items():
        yield comment(name, value)
    yield DONE


class SSEResponse(StreamingResponse):
    """An SSE response that settles its stream even if it is never sent (the client left before it began)."""

    def __init__(self, streamed: Streamed, headers: dict[str, str]) -> None:
        super().__init__(sse(streamed), media_type="text/event-stream", headers=headers)
        self._streamed = streamed

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._streamed.relay.abandon()  # a no-op when the relay already settled
