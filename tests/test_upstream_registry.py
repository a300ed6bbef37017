"""The provider registry: the pool builds every client through it, and the simulator plugs in by registering
itself (core code never imports it)."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from router.config_loader import load_policy
from upstream.base import Endpoint, UpstreamReply
from upstream.pool import UpstreamPool
from upstream.registry import ClientSettings, factory, register

ROOT = Path(__file__).resolve().parent.parent


class Echo:
    """A provider registered from outside upstream/, as a third-party client would be."""

    def __init__(self, model: str, timeout_s: float) -> None:
        self.model = model
        self.timeout_s = timeout_s

    async def send(self, endpoint: Endpoint, body: dict[str, Any]) -> UpstreamReply:
        return UpstreamReply({"model": self.model, "endpoint": endpoint, "echo": body})

    async def stream(self, endpoint: Endpoint, body: dict[str, Any]):  # pragma: no cover - not streamed here
        yield b"{}"

    async def close(self) -> None:
        pass


def test_a_registered_provider_serves_its_deployments() -> None:
    def make(dep: Any, settings: ClientSettings) -> Echo:
        return Echo(dep.upstream_model, settings.timeout_s)

    register("echo-test", make)
    dep = dataclasses.replace(load_policy(ROOT / "configs" / "demo.yaml").tiers[0].deployments[0],
                              provider="echo-test", timeout_s=7.0)  # type: ignore[arg-type]
    pool = UpstreamPool(timeout_s=30.0, connect_timeout_s=2.0)
    client = pool.get(dep)
    assert isinstance(client, Echo) and client.timeout_s == 7.0  # the deployment's own timeout wins
    assert pool.get(dep) is client  # one long-lived client per deployment
    reply = asyncio.run(client.send("chat/completions", {"x": 1}))
    assert reply.body == {"model": "gpt-4o-mini", "endpoint": "chat/completions", "echo": {"x": 1}}
    asyncio.run(pool.close())


def test_an_unknown_provider_is_a_lookup_error() -> None:
    with pytest.raises(LookupError, match="no-such-provider"):
        factory("no-such-provider")


def test_the_simulator_is_loaded_only_when_a_policy_uses_it() -> None:
    """Importing the proxy's runtime and the pool loads no simulator module; the first client for a
    ``simulated/...`` deployment imports ``simulator.provider``, which registers itself."""
    code = (
        "import sys\n"
        "import proxy.runtime, upstream.pool, upstream.dispatch, router.decide\n"
        "from router.config_loader import load_policy\n"
        "assert 'simulator.provider' not in sys.modules, 'imported before use'\n"
        "pool = upstream.pool.UpstreamPool(10, 2)\n"
        "client = pool.get(load_policy('configs/demo.yaml').tiers[0].deployments[0])\n"
        "assert type(client).__module__ == 'simulator.provider', type(client)\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
