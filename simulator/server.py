"""The standalone simulated upstream: a raw ASGI app on uvicorn (httptools, uvloop), no framework.

Benchmarks subtract this server's latency from the proxy's, so it does the least work per request: one orjson
parse, the shared engine, one orjson dump, no routing layer or validation models.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from simulator.engine import Generation
from simulator.errors import SimulatedError, invalid
from simulator.options import SimulatorOptions
from simulator.render import response_body
from simulator.service import ENDPOINTS, SimulatedTimeout, Simulator
from simulator.text import vocabulary
from text.tokens import DEFAULT_MODEL
from text.tokens import configure as configure_text

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

OPTIONS_ENV = "TIERGATE_MOCK_OPTIONS"  # how options reach uvicorn's worker processes
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o1", "o3", "o3-mini", "o4-mini",
          "gpt-3.5-turbo", "gpt-3.5-turbo-instruct", "text-embedding-3-small", "text-embedding-3-large")
_MODELS_BODY = orjson.dumps(
    {"object": "list", "data": [{"id": m, "object": "model", "created": 1715367049, "owned_by": "system"}
                                for m in MODELS]}
)
_BAD_JSON = invalid("We could not parse the JSON body of your request. The OpenAI API expects a JSON payload.")


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = _JSON) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, exc: SimulatedError, endpoint: str = "") -> None:
    headers = list(_JSON)
    if exc.retry_after is not None:
        headers += [(b"retry-after", b"%d" % max(1, round(exc.retry_after))),
                    (b"retry-after-ms", b"%d" % round(exc.retry_after * 1000))]
    await _respond(send, exc.status, orjson.dumps(Simulator.error_body(endpoint, exc)), headers)


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    while message.get("more_body"):
        message = await receive()
        body += message.get("body", b"")
    return body


class MockUpstreamApp:
    """The ASGI callable; ``simulator`` is exposed so in-process tests can read its books directly."""

    def __init__(self, options: SimulatorOptions) -> None:
        self.simulator = Simulator(options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        route = path[4:] if path.startswith("/v1/") else path[1:]
        method: str = scope["method"]
        if method == "POST" and route in ENDPOINTS:
            await self._generate(route, scope, receive, send)
        elif method == "GET" and route == "models":
            await _respond(send, 200, _MODELS_BODY)
        elif method == "GET" and route.startswith("models/"):
            model = {"id": route[7:], "object": "model", "created": 1715367049, "owned_by": "system"}
            await _respond(send, 200, orjson.dumps(model))
        elif method == "GET" and route in ("healthz", "health"):
            await _respond(send, 200, b'{"status":"ok"}')
        elif route == "_mock/requests" and method in ("GET", "DELETE"):
            if method == "DELETE":
                self.simulator.requests.clear()
            await _respond(send, 200, orjson.dumps({"requests": list(self.simulator.requests)}))
        elif route == "_mock/stats" and method == "GET":
            await _respond(send, 200, orjson.dumps(self.simulator.snapshot()))
        else:
            status = 405 if route in ENDPOINTS or route == "models" else 404
            await _error(send, SimulatedError(status, f"Unknown request URL: {method} {path}.", code="unknown_url"))

    async def _generate(self, endpoint: str, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await _read_body(receive)
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.simulator.record(scope["path"], raw.decode("utf-8", "replace"), _headers(scope))
            self.simulator.stats["error:400"] += 1
            await _error(send, _BAD_JSON, endpoint)
            return
        sim = self.simulator
        sim.record(scope["path"], body, _headers(scope))
        try:
            result = sim.prepare(endpoint, body)
        except SimulatedTimeout as exc:
            await _hang(receive, sim.options.hang_s)
            await _error(send, exc, endpoint)
            return
        except SimulatedError as exc:
            await _error(send, exc, endpoint)
            return
        if isinstance(result, Generation) and body.get("stream"):
            await self._stream(result, receive, send, _native_frame if result.api != "chat" else _data_frame)
            return
        if sim.options.latency_ms:
            await asyncio.sleep(sim.options.latency_ms / 1000)
        await _respond(send, 200, orjson.dumps(response_body(result) if isinstance(result, Generation) else result))

    async def _stream(self, gen: Generation, receive: Receive, send: Send, frame: Callable[[bytes], bytes]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        disconnected = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, disconnected))
        events = self.simulator.paced(gen)
        try:
            async for payload in events:
                if disconnected.is_set():
                    break  # uvicorn drops writes after a disconnect silently: stop generating instead
                await send({"type": "http.response.body", "body": frame(payload), "more_body": True})
            else:
                # OpenAI's chat streams end with [DONE]; Responses and Messages streams end with their last event.
                await send({"type": "http.response.body", "body": b"data: [DONE]\n\n" if gen.api == "chat" else b""})
        finally:
            await events.aclose()
            watcher.cancel()


def _data_frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


_TYPE_AT = len(b'{"type":"')


def _native_frame(payload: bytes) -> bytes:
    """Responses and Messages events name themselves: ``event: <type>`` before the data, as OpenAI and Anthropic
    send them. The renderers put ``type`` first, so the name is read without parsing the payload."""
    name = payload[_TYPE_AT : payload.index(b'"', _TYPE_AT)]
    return b"event: " + name + b"\ndata: " + payload + b"\n\n"


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


async def _watch_disconnect(receive: Receive, disconnected: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    disconnected.set()


async def _hang(receive: Receive, seconds: float) -> None:
    """Hold the request open like a stuck provider, but let go as soon as the client gives up."""
    disconnected = asyncio.Event()
    watcher = asyncio.create_task(_watch_disconnect(receive, disconnected))
    try:
        await asyncio.wait_for(disconnected.wait(), seconds)
    except TimeoutError:
        pass
    finally:
        watcher.cancel()


def create_app(options: SimulatorOptions | None = None) -> MockUpstreamApp:
    """The ASGI app for ``options`` (defaults: instant, never failing).

    Loads the default tokenizer now: lazily it would add ~0.4 s to the first request, which benchmarks would
    count as the proxy's latency.
    """
    configure_text()
    vocabulary(DEFAULT_MODEL)
    return MockUpstreamApp(options or SimulatorOptions())


def app_from_env() -> MockUpstreamApp:
    """uvicorn factory for multi-worker mode, where each worker process builds its own app."""
    raw = os.environ.get(OPTIONS_ENV)
    return create_app(SimulatorOptions(**orjson.loads(raw)) if raw else None)


def serve(host: str = "127.0.0.1", port: int = 18000, options: SimulatorOptions | None = None,
          workers: int = 1) -> None:
    """Run the server until interrupted. Each worker has its own prefix cache and request log."""
    import uvicorn

    settings: dict[str, Any] = {
        "host": host, "port": port, "http": "httptools", "access_log": False, "log_level": "warning",
        "lifespan": "off", "backlog": 4096,
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
    }
    if workers <= 1:
        uvicorn.run(create_app(options), **settings)
        return
    os.environ[OPTIONS_ENV] = orjson.dumps((options or SimulatorOptions()).to_dict()).decode()
    uvicorn.run("simulator.server:app_from_env", factory=True, workers=workers, **settings)
