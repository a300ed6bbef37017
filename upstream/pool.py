"""One long-lived client per deployment, sharing a pooled HTTP session; the provider registry builds them.

Clients are built lazily (inside the running event loop) and kept across policy reloads for as long as the
deployment's connection settings do not change.
"""

from __future__ import annotations

import aiohttp

from router.policy import DeploymentSpec
from upstream.base import Upstream
from upstream.registry import ClientSettings, factory


def _signature(dep: DeploymentSpec, timeout_s: float, connect_timeout_s: float) -> tuple[object, ...]:
    sim = tuple(sorted((dep.simulator or {}).items()))
    return (dep.provider, dep.model, dep.api_base, dep.api_key, dep.timeout_s or timeout_s, connect_timeout_s, sim)


class UpstreamPool:
    def __init__(self, timeout_s: float, connect_timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._clients: dict[str, tuple[tuple[object, ...], Upstream]] = {}

    def set_timeouts(self, timeout_s: float, connect_timeout_s: float) -> None:
        """Reloaded defaults: each deployment's client is rebuilt with them at its next call (its signature
        changes); calls already under way finish on the old client."""
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s

    def _http_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=1024, limit_per_host=512, keepalive_timeout=60, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, read_bufsize=1 << 20, skip_auto_headers=("User-Agent",), auto_decompress=True
            )
        return self._session

    def get(self, dep: DeploymentSpec) -> Upstream:
        timeout_s = dep.timeout_s or self._timeout_s
        signature = _signature(dep, timeout_s, self._connect_timeout_s)
        cached = self._clients.get(dep.id)
        if cached is not None and cached[0] == signature:
            return cached[1]
        settings = ClientSettings(timeout_s, self._connect_timeout_s, self._http_session)
        client = factory(dep.provider)(dep, settings)
        self._clients[dep.id] = (signature, client)
        return client

    async def close(self) -> None:
        for _, client in self._clients.values():
            await client.close()
        self._clients.clear()
        if self._session is not None:
            await self._session.close()
