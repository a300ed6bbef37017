"""The simulator as an in-process upstream, so ``configs/demo.yaml`` runs without keys or a second process.

Same service as the HTTP server (validation, faults, generation, pacing); only the transport differs: failures
become ``UpstreamError`` with the kind the proxy's fallback logic expects instead of HTTP statuses.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from simulator.engine import Generation
from simulator.errors import SimulatedError
from simulator.options import SimulatorOptions
from simulator.render import response_body
from simulator.service import SimulatedTimeout, Simulator
from upstream.base import Endpoint, ErrorKind, UpstreamError, UpstreamReply
from upstream.registry import ClientSettings, register

if TYPE_CHECKING:
    from router.policy import DeploymentSpec


def _upstream_error(exc: SimulatedError, endpoint: str) -> UpstreamError:
    """The failure the HTTP upstream client would raise had the same answer come over the wire."""
    kind: ErrorKind
    if exc.status == 429:
        kind = "rate_limit"
    elif isinstance(exc, SimulatedTimeout):
        kind = "timeout"
    else:
        kind = "server" if exc.status >= 500 else "client"
    return UpstreamError(kind, exc.message, status=exc.status, retry_after=exc.retry_after,
                         body=Simulator.error_body(endpoint, exc))


class SimulatedUpstream:
    """An ``Upstream`` answered by the simulator; one instance is one deployment with its own prefix cache."""

    def __init__(self, options: SimulatorOptions | None = None, **overrides: Any) -> None:
        """``overrides`` are ``SimulatorOptions`` fields, so a YAML deployment block can pass them straight in."""
        base = options or SimulatorOptions()
        self.simulator = Simulator(SimulatorOptions(**{**base.to_dict(), **overrides}) if overrides else base)

    @property
    def options(self) -> SimulatorOptions:
        return self.simulator.options

    async def _prepare(self, endpoint: Endpoint, body: dict[str, Any], headers: Mapping[str, str] | None
                       ) -> Generation | dict[str, Any]:
        # A shallow copy: the log must show what was sent even if the caller reuses its dict afterwards.
        self.simulator.record(endpoint, dict(body) if isinstance(body, dict) else body, dict(headers or {}))
        try:
            return self.simulator.prepare(endpoint, body)
        except SimulatedTimeout as exc:
            await asyncio.sleep(self.options.hang_s)  # a caller's own timeout normally cancels this first
            raise _upstream_error(exc, endpoint) from None
        except SimulatedError as exc:
            raise _upstream_error(exc, endpoint) from None

    async def send(self, endpoint: Endpoint, body: dict[str, Any], headers: Mapping[str, str] | None = None
                   ) -> UpstreamReply:
        """A whole response after ``latency_ms``. Raises ``UpstreamError``. ``headers`` are only recorded."""
        result = await self._prepare(endpoint, body, headers)
        if self.options.latency_ms:
            await asyncio.sleep(self.options.latency_ms / 1000)
        return UpstreamReply(response_body(result) if isinstance(result, Generation) else result)

    async def stream(self, endpoint: Endpoint, body: dict[str, Any], headers: Mapping[str, str] | None = None
                     ) -> AsyncIterator[bytes]:
        """Chunk payloads paced by ``ttft_ms`` and ``tokens_per_s``; closing the iterator stops generation."""
        result = await self._prepare(endpoint, body, headers)
        if not isinstance(result, Generation):
            raise UpstreamError("client", f"'{endpoint}' cannot be streamed.", status=400)
        events = self.simulator.paced(result)
        try:
            async for payload in events:
                yield payload
        finally:
            await events.aclose()

    async def close(self) -> None:
        """Nothing to release: no connections, and the cache goes with the instance."""


def _client(dep: DeploymentSpec, settings: ClientSettings) -> SimulatedUpstream:
    """``simulated/<model>`` deployments: the policy's ``simulator`` options; the pool's timeouts do not apply (the
    dispatcher bounds every call)."""
    return SimulatedUpstream(**(dep.simulator or {}))


# The provider registry imports this module the first time a policy has a simulated deployment (upstream.registry).
register("simulated", _client)
