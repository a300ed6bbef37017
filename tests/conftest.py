"""Shared fixtures: real processes (proxy, mock upstream) on free loopback ports, and real Redis/PostgreSQL.

A test that needs a server which is not answering skips on a developer machine but FAILS under CI (CI=true):
a green CI must mean the integration tests really ran.
"""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.forked import ForkedProcess, child_env
from tests.inprocess import ThreadServer, in_process_server

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("TIERGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get("TIERGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
DEMO_KEYS = {"research": "sk-demo-research", "support": "sk-demo-support", "admin": "sk-demo-admin"}


def _share_default_ssl_context(transport: Any) -> None:
    """Every httpx client (each ``httpx.get``, each SDK client) loads the CA bundle into a new SSL context: 30-70 ms
    per client on this machine, hundreds of times a run, although tests speak plain HTTP on loopback. Clients built
    with the default verify/cert share one context instead (an SSLContext is safe to share; none is modified).
    httpx exposes no hook for this, so its transport module's reference is replaced (test process only)."""
    original = transport.create_ssl_context
    shared: dict[bool, Any] = {}

    def create(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
        if verify is not True or cert is not None:
            return original(verify=verify, cert=cert, trust_env=trust_env)
        if trust_env not in shared:
            shared[trust_env] = original(verify=verify, cert=cert, trust_env=trust_env)
        return shared[trust_env]

    transport.create_ssl_context = create


# httpx, and httpx2: the fork the openai and anthropic SDKs build their clients on.
for _transport in ("httpx._transports.default", "httpx2._transports.default"):
    _share_default_ssl_context(importlib.import_module(_transport))


def require_service(name: str, reachable: bool, detail: str = "") -> None:
    if reachable:
        return
    message = f"{name} is not reachable{': ' + detail if detail else ''}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: integration tests must run, not skip)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Process:
    url: str
    port: int
    proc: subprocess.Popen[bytes] | ForkedProcess
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_process(args: list[str], port: int, log: Path, ready_path: str, env: dict[str, str] | None = None,
                  cwd: Path = ROOT, timeout_s: float = 45.0, fresh: bool = False) -> Process:
    """``tiergate <args>`` as a process of its own, returned once ``ready_path`` answers 200: forked from a warm
    interpreter (``tests.forked``) unless it must start as a fresh one (``fresh``, or an ``env`` to start with)."""
    full_env = {**child_env(), **(env or {})}
    proc: subprocess.Popen[bytes] | ForkedProcess
    if fresh or env is not None:
        with log.open("ab") as handle:
            proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", *args], cwd=cwd, stdout=handle,
                                    stderr=subprocess.STDOUT, env=full_env)
    else:
        proc = ForkedProcess(args, cwd, log, env=full_env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{args[0]} exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(url + ready_path, timeout=1.0).status_code == 200:
                return Process(url=url, port=port, proc=proc, log=log)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"{args[0]} did not become ready in {timeout_s}s:\n{log.read_text(errors='replace')}")


Server = Process | ThreadServer


def start_server(args: list[str], port: int, log: Path, ready_path: str, env: dict[str, str] | None = None,
                 process: bool = False, timeout_s: float = 45.0) -> Server:
    """``tiergate <args>`` in a thread of this process when nothing needs a process (see ``tests.inprocess``), else
    as a subprocess. ``process=True`` (signals, pids, exit statuses, one server's own log) or an ``env`` forces one."""
    if not process and env is None:
        server = in_process_server(args, port, log, timeout_s)
        if server is not None:
            if httpx.get(server.url + ready_path, timeout=5.0).status_code != 200:
                server.stop()
                raise RuntimeError(f"{args[0]} started but {ready_path} is not 200:\n{server.output()}")
            return server
    return start_process(args, port, log, ready_path, env, timeout_s=timeout_s)


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator:
    """``start_proxy(config_path, workers=1, env=None, process=False)`` running ``tiergate serve`` (in this process
    unless it needs its own: ``start_server``)."""
    started: list[Server] = []

    def start(config: Path, workers: int = 1, env: dict[str, str] | None = None, process: bool = False) -> Server:
        port = free_port()
        args = ["serve", "--config", str(config), "--port", str(port), "--workers", str(workers)]
        server = start_server(args, port, tmp_path / f"proxy-{port}.log", "/readyz", env, process)
        started.append(server)
        return server

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def start_mock(tmp_path: Path) -> Iterator:
    """``start_mock(*flags, process=False)`` running ``tiergate mock-upstream`` (``process=True``: a subprocess the
    test can kill)."""
    started: list[Server] = []

    def start(*flags: str, process: bool = False) -> Server:
        port = free_port()
        server = start_server(["mock-upstream", "--port", str(port), *flags], port, tmp_path / f"mock-{port}.log",
                              "/healthz", process=process)
        started.append(server)
        return server

    yield start
    for process in started:
        process.stop()


def demo_config(tmp_path: Path, classifier: str = "default", extra_research: str = "") -> Path:
    """configs/demo.yaml with its ledger moved into the test's temp dir."""
    text = (ROOT / "configs" / "demo.yaml").read_text()
    text = text.replace("sqlite:///var/tiergate-demo.db", f"sqlite:///{tmp_path}/ledger.db")
    text = text.replace("  model: default ", f"  model: {classifier} ")
    if extra_research:
        text = text.replace("  research:\n", "  research:\n" + extra_research, 1)
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def demo_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One demo proxy per test module; tests must not depend on its ledger state."""
    tmp = tmp_path_factory.mktemp("demo")
    port = free_port()
    args = ["serve", "--config", str(demo_config(tmp)), "--port", str(port)]
    server = start_server(args, port, tmp / "proxy.log", "/readyz")
    yield server
    server.stop()


def mock_config(tmp_path: Path, tiers: dict[str, list[str]], team_extra: str = "", server_extra: str = "",
                name: str = "mock.yaml") -> Path:
    """A policy whose tiers are served by mock-upstream URLs: ``{"small": [url, ...], ...}`` cheapest first.

    Models are priced as gpt-4o-mini / gpt-4o / o1 by position. Team ``t`` has key ``sk-test``.
    """
    models = ["gpt-4o-mini", "gpt-4o", "o1"]
    lines = [
        "server:",
        "  upstream_timeout_s: 5",
        "  cooldown_s: 30",
        server_extra,
        "metering:",
        f"  ledger: sqlite:///{tmp_path}/ledger.db",
        "classifier:",
        "  model: default",
        "tiers:",
    ]
    for index, (tier, urls) in enumerate(tiers.items()):
        lines += [f"  - name: {tier}", "    deployments:"]
        for n, url in enumerate(urls):
            lines += [f"      - id: {tier}-{n}", f"        model: openai/{models[min(index, 2)]}",
                      f"        api_base: {url}/v1"]
    lines += [
        "teams:",
        "  t:",
        "    keys:",
        "      - id: t-key",
        "        sha256: " + __import__("hashlib").sha256(b"sk-test").hexdigest(),
        team_extra,
    ]
    path = tmp_path / name
    path.write_text("\n".join(line for line in lines if line) + "\n")
    return path
