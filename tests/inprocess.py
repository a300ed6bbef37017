"""Servers in a thread of the test process: real HTTP on loopback without starting a new interpreter.

Why: a ``tiergate serve`` subprocess costs ~2.3 s of CPU and ~3 s of wall time before it answers (interpreter,
imports, model load); the same app in a thread of the already-warm test process answers in ~0.1-0.3 s. Clients,
proxy and simulator still talk over real sockets, so what a test asserts about the wire is unchanged.

What needs a process stays one (``tests.conftest.start_process``): several workers, signals (SIGHUP reload,
kill -9), a separate environment, exit statuses, and logs that must come from one server only. ``output()`` here
returns what the ``tiergate``, ``uvicorn`` and ``simulator`` loggers wrote while the server ran, which can include
another in-process server's lines (tests that assert a line is absent are then only stricter).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

_LOGGERS = ("tiergate", "uvicorn", "simulator", "proxy", "pipeline", "metering", "router", "upstream")
_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"


@dataclass
class ThreadServer:
    """One ASGI app served by uvicorn on its own event loop in a daemon thread; the same surface as ``Process``
    (``url``, ``port``, ``log``, ``output()``, ``stop()``) minus ``proc``."""

    url: str
    port: int
    log: Path
    _server: uvicorn.Server
    _thread: threading.Thread
    _handler: logging.Handler
    _levels: dict[str, int] = field(default_factory=dict)
    proc: None = None

    def output(self) -> str:
        self._handler.flush()
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.should_exit = True
            self._thread.join(timeout=15)
        _detach(self._handler, self._levels)


def _attach(log: Path) -> tuple[logging.Handler, dict[str, int]]:
    handler = logging.FileHandler(log, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    levels: dict[str, int] = {}
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        levels[name] = logger.level
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)  # what ``tiergate serve`` logs at its default level
        logger.addHandler(handler)
    return handler, levels


def _detach(handler: logging.Handler, levels: dict[str, int]) -> None:
    for name, level in levels.items():
        logger = logging.getLogger(name)
        logger.removeHandler(handler)
        logger.setLevel(level)
    levels.clear()
    handler.close()


def serve_app(app: Any, port: int, log: Path, lifespan: str = "on", timeout_s: float = 45.0) -> ThreadServer:
    """Serve ``app`` on 127.0.0.1:``port``; returns once uvicorn has started (the lifespan startup completed).

    Raises ``RuntimeError`` with the captured log when start-up fails (e.g. a policy the runtime refuses)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    config = uvicorn.Config(app, lifespan=lifespan, loop="asyncio", http="httptools", access_log=False,
                            log_config=None, log_level="info", timeout_keep_alive=30, timeout_graceful_shutdown=5,
                            server_header=False, date_header=False)
    server = uvicorn.Server(config)
    handler, levels = _attach(log)

    def run() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        finally:
            sock.close()

    thread = threading.Thread(target=run, name=f"server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=5)
            handler.flush()
            text = log.read_text(errors="replace") if log.exists() else ""
            _detach(handler, levels)
            raise RuntimeError(f"in-process server on port {port} did not start:\n{text}")
        time.sleep(0.01)
    return ThreadServer(f"http://127.0.0.1:{port}", port, log, server, thread, handler, levels)


def _parse(args: list[str]) -> argparse.Namespace:
    from proxy.cli import build_parser

    return build_parser().parse_args(args)


def in_process_server(args: list[str], port: int, log: Path, timeout_s: float = 45.0) -> ThreadServer | None:
    """``tiergate serve`` / ``tiergate mock-upstream`` with ``args`` in a thread, or None when ``args`` need a
    process (several workers, a non-loopback host)."""
    from text.tokens import configure

    configure()  # what the CLI does before any command: tiktoken reads its offline files
    parsed = _parse(args)
    if getattr(parsed, "workers", 1) != 1 or getattr(parsed, "host", "127.0.0.1") != "127.0.0.1":
        return None
    if args[0] == "serve":
        from proxy.app import create_app

        return serve_app(create_app(parsed.config), port, log, timeout_s=timeout_s)
    if args[0] == "mock-upstream":
        from simulator.cli import options_from_args
        from simulator.server import create_app as create_simulator

        return serve_app(create_simulator(options_from_args(parsed)), port, log, lifespan="off", timeout_s=timeout_s)
    return None
