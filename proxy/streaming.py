"""Server-sent events framing, byte-compatible with OpenAI's: ``data: <json>\\n\\n`` ... ``data: [DONE]\\n\\n``.

The gateway yields bare JSON payloads; this module adds the framing, the proxy's own comment lines (ignored by
SSE parsers, including every OpenAI SDK), and an OpenAI-shaped error event if the upstream breaks mid-stream.
"""

from __future__ import annotations

from typing import AsyncIterator

import orjson

from proxy.gateway import Streamed

DONE = b"data: [DONE]\n\n"


def comment(name: str, value: str) -> bytes:
    return f": {name}={value}\n\n".encode()


async def sse(streamed: Streamed) -> AsyncIterator[bytes]:
    for name, value in streamed.lead.items():
        yield comment(name, value)
    async for payload in streamed.payloads:
        yield b"data: " + payload + b"\n\n"
    error = streamed.trailer.get("error")
    if error is not None:
        body = {"error": {"message": error, "type": "api_error", "param": None, "code": "upstream_stream_error"}}
        yield b"data: " + orjson.dumps(body) + b"\n\n"
        return
    for name, value in streamed.trailer.items():
        yield comment(name, value)
    yield DONE
