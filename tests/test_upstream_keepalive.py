"""A pooled connection the upstream has already closed is not a failed call.

uvicorn (the simulator, vLLM and most Python model servers) closes an idle keep-alive connection after 5 s; the
proxy's pool keeps idle connections for 60 s. A request written onto a connection the server is closing comes back
as a disconnect before any response: the upstream never saw it. Measured in tests/fleet (a 0.3 s burst of 502s on
a one-deployment tier) before the client retried such a call on a fresh connection.
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from upstream.base import UpstreamError
from upstream.http import HttpUpstream

ANSWER = orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "usage": {}})


class ClosingServer:
    """Answers the first request of each connection with a keep-alive response; a second request on the same
    connection finds it closing (the server's keep-alive timer fired as the request arrived): the socket is closed
    without an answer. Counts connections and the requests it answered."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0

    async def _read_request(self, reader: asyncio.StreamReader) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length")), 0)
        await reader.readexactly(length)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await self._read_request(reader)
        self.requests += 1
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: keep-alive\r\n"
                     b"content-length: " + str(len(ANSWER)).encode() + b"\r\n\r\n" + ANSWER)
        await writer.drain()
        try:
            await self._read_request(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


async def _two_calls_with_a_pause(stream: bool) -> tuple[ClosingServer, list[object]]:
    server = ClosingServer()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    results: list[object] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(keepalive_timeout=60)) as session:
        upstream = HttpUpstream(session, f"http://127.0.0.1:{port}/v1", None, timeout_s=5, connect_timeout_s=1)
        for _ in range(2):
            try:
                if stream:
                    results.append([chunk async for chunk in upstream.stream("chat/completions", {"model": "m"})])
                else:
                    results.append((await upstream.send("chat/completions", {"model": "m"})).body)
            except UpstreamError as exc:
                results.append(exc)
    listener.close()
    await listener.wait_closed()
    return server, results


@pytest.mark.parametrize("stream", [False, True], ids=["send", "stream"])
def test_a_connection_closed_by_the_upstream_while_idle_is_replaced_not_failed(stream: bool) -> None:
    server, results = asyncio.run(_two_calls_with_a_pause(stream))
    assert not [r for r in results if isinstance(r, UpstreamError)], results
    assert server.requests == 2 and server.connections == 2  # the second call answered, on a new connection
