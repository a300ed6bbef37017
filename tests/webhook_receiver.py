"""A real local webhook receiver (aiohttp on a free loopback port) for alert tests: it records each JSON body and
can fail the first ``failures`` posts with 500, to exercise retries.

``async with Webhook() as hook`` serves on the test's own event loop; ``Webhook.in_thread()`` serves on a loop of
its own for tests whose proxy runs in another process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web


class Webhook:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.attempts = 0
        self.bodies: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.attempts <= self.failures:
            return web.Response(status=500)
        self.bodies.append(await request.json())
        return web.Response(text="ok")

    async def __aenter__(self) -> Webhook:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @classmethod
    @contextmanager
    def in_thread(cls, failures: int = 0) -> Iterator[Webhook]:
        hook = cls(failures)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(hook.__aenter__(), loop).result(timeout=10)
        try:
            yield hook
        finally:
            asyncio.run_coroutine_threadsafe(hook.__aexit__(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
