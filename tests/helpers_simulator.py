"""``tiergate mock-upstream`` for tests that drive the simulator directly (same flags as ``python -m simulator``).

It runs in a thread of the test process (``tests.inprocess``: real HTTP on loopback, ~0.1 s to start instead of an
interpreter's ~2-3 s); ``process=True`` runs it in a process of its own (``tests.forked``) for a test that needs one.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.forked import ForkedProcess
from tests.inprocess import ThreadServer, serve_app
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MockServer:
    """A running mock upstream; ``url`` is its base URL with ``/v1``, ``root`` without."""

    def __init__(self, *flags: str, process: bool = False) -> None:
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = self.root + "/v1"
        self.process: ForkedProcess | None = None
        self.server: ThreadServer | None = None
        self._logs = tempfile.TemporaryDirectory(prefix="mock-upstream-")
        log = Path(self._logs.name) / "mock.log"
        if process:
            self.process = ForkedProcess(["mock-upstream", "--port", str(self.port), *flags], REPO, log)
            return
        from proxy.cli import build_parser
        from simulator.cli import options_from_args
        from simulator.server import create_app

        args = build_parser().parse_args(["mock-upstream", "--port", str(self.port), *flags])
        self.server = serve_app(create_app(options_from_args(args)), self.port, log, lifespan="off")

    def wait_ready(self, timeout: float = 15.0) -> MockServer:
        def answers() -> bool:
            try:
                return httpx.get(self.root + "/healthz", timeout=0.5).status_code == 200
            except httpx.HTTPError:
                return False

        eventually(answers, "mock-upstream answering /healthz", timeout, proc=self.process)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        elif self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._logs.cleanup()


@contextmanager
def running(*servers: MockServer) -> Iterator[None]:
    """Wait for servers started together (so subprocess start-ups overlap), yield, and stop them."""
    try:
        for server in servers:
            server.wait_ready()
        yield
    finally:
        for server in servers:
            server.stop()
