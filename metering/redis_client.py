"""One way to turn a configured Redis URL into a client, for everything in tiergate that talks to Redis (budget
counters and leases, alert de-duplication, the response / summary / stickiness caches), so that all of them get the
same timeouts, the same retry after a dropped connection and the same failover.

URL forms (``metering.redis`` in the policy file):

- ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) and ``unix://[[user]:password@]/path.sock
  [?db=N]``: one server, parsed by redis-py (``redis.asyncio.Redis.from_url``).
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``, e.g.
  ``redis+sentinel://10.0.0.5:26379,10.0.0.6:26379,10.0.0.7:26379/mymaster/0``: the current master of ``service``
  as Redis Sentinel reports it (``redis.asyncio.sentinel.Sentinel(...).master_for(service)``). The credentials are
  the data nodes'; the sentinels are asked without any. After a failover the next connection asks the sentinels
  again, so a replica follows the promoted master by itself (a demoted master's READONLY answer also reconnects).

Redis Cluster is not supported: a reconciliation after an outage updates every team's counters in one script, which
Cluster allows only if every budget key shares one hash tag, and that shards nothing. Sharding budgets means keys
tagged by team and reconciliations split per team; until one master is the bottleneck, Sentinel is the simpler HA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import NoBackoff

SENTINEL_SCHEME = "redis+sentinel"


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Raises ``ValueError`` naming what is wrong: a URL that cannot work must stop start-up, not every request."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{SENTINEL_SCHEME}:// URLs take no query or fragment")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = []
    for item in filter(None, hosts.split(",")):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"sentinel address {item!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    if not sentinels:
        raise ValueError(f"{SENTINEL_SCHEME}:// needs at least one sentinel host:port")
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if not path or not path[0] or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"{SENTINEL_SCHEME}:// path must be /service or /service/db")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    return SentinelTarget(tuple(sentinels), path[0], int(path[1]) if len(path) == 2 else 0,
                          unquote(username) or None, unquote(password) or None)


class _FollowingConnection(SentinelManagedConnection):
    """Reconnects to whatever master the sentinels name now. redis-py's own (through 8.1, redis/redis-py#3874)
    asks them only when the pool hands out a closed connection; a command's retry after a dropped connection
    reconnects to the address it had, the dead master, so every pooled connection failed one more command."""

    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if not self.is_connected:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health, retry_socket_connect)

    async def connect_to(self, address: tuple[str, int]) -> None:
        self.host, self.port = address  # just asked: connect without asking again
        await super().connect_check_health(self.connection_pool.check_connection, retry_socket_connect=False)


class _SentinelMaster(aioredis.Redis):
    """A master client that also closes its sentinel clients (``master_for``'s client leaves them open)."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        pool = self.connection_pool
        assert isinstance(pool, SentinelConnectionPool)  # master_for's pool, which holds the sentinels
        sentinel = pool.sentinel_manager
        await super().aclose(close_connection_pool)
        await sentinel.aclose()


def open_redis(url: str, *, timeout_s: float = 0.5, health_check_interval_s: int = 30) -> aioredis.Redis:
    """A redis-py asyncio client for ``url`` (any form above). Connecting happens on first use.

    Short timeouts: a request must not hang on a dead or partitioned Redis; budgets fail over (open) or fail fast
    (closed), caches miss. After a Redis restart or failover every pooled connection is dead although a server
    answers; a client without retries failed one request per such connection (fail-closed teams got 503s for
    minutes). One retry on a connection error reconnects: the budget scripts are idempotent (see
    ``metering.budgets.redis_store``), cache reads and writes are, and an alert claim re-sent after a lost reply at
    worst leaves that alert unsent by anyone (it stays in the log). Connections idle for longer than
    ``health_check_interval_s`` are PINGed before use.
    """
    settings: dict[str, Any] = {"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s,
                                "retry": Retry(NoBackoff(), 1), "health_check_interval": health_check_interval_s}
    if not url.startswith(SENTINEL_SCHEME + "://"):
        return aioredis.Redis.from_url(url, **settings)
    target = parse_sentinel_url(url)
    # The sentinels are asked in turn until one knows the master: no retry per sentinel (the next one is the
    # retry), so a partitioned replica spends at most one connect timeout per sentinel finding out.
    asking = {"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s, "retry": Retry(NoBackoff(), 0)}
    sentinel = Sentinel(target.sentinels, sentinel_kwargs=asking)
    master: aioredis.Redis = sentinel.master_for(target.service, redis_class=_SentinelMaster,
                                                 connection_class=_FollowingConnection, db=target.db,
                                                 username=target.username, password=target.password, **settings)
    return master
