"""A Redis Sentinel group of the test's own: a master, a replica and three sentinels (Debian's ``redis-sentinel``),
on loopback ports or on addresses inside network namespaces. Tests kill its master; the shared Redis on 6379 is
never touched.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.conftest import require_service
from tests.waiting import eventually

SERVICE = "mymaster"


@dataclass(frozen=True)
class Node:
    """Where one server listens; ``ns``: the network namespace it runs in (None: the test's own)."""

    host: str
    port: int
    ns: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def client(self, timeout_s: float = 1.0) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, socket_timeout=timeout_s, decode_responses=True,
                           socket_connect_timeout=timeout_s)

    def info(self, section: str) -> dict:
        with self.client() as client:
            return client.info(section)

    def popen(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        """``argv`` in this node's namespace (``ip netns exec`` execs it: the pid is the server's own)."""
        prefix = ["ip", "netns", "exec", self.ns] if self.ns else []
        with log.open("ab") as out:
            return subprocess.Popen([*prefix, *argv], stdout=out, stderr=subprocess.STDOUT)


def require_sentinel() -> None:
    require_service("redis-sentinel", shutil.which("redis-sentinel") is not None and
                    shutil.which("redis-server") is not None, "the Debian package redis-sentinel")


@dataclass
class SentinelGroup:
    directory: Path
    master: Node
    replica: Node
    sentinels: list[Node]
    down_after_ms: int = 1000
    procs: dict[Node, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """What tiergate is configured with (``metering.redis_client``)."""
        return f"redis+sentinel://{','.join(s.address for s in self.sentinels)}/{SERVICE}/0"

    def start(self, timeout_s: float = 30.0) -> SentinelGroup:
        """``launch()`` then ``wait_healthy()``."""
        return self.launch().wait_healthy(timeout_s)

    def launch(self) -> SentinelGroup:
        """Start every server without waiting for them to find each other (each listens within milliseconds;
        the replica's sync and the sentinels' discovery take seconds, which a caller may spend starting
        something else before ``wait_healthy()``)."""
        require_sentinel()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._server(self.master)
        self._server(self.replica, "--replicaof", self.master.host, str(self.master.port))
        for n, node in enumerate(self.sentinels):
            conf = self.directory / f"sentinel-{n}.conf"  # Sentinel rewrites its file: each its own, writable
            conf.write_text("\n".join([
                f"port {node.port}", f"bind {node.host}", "protected-mode no", f"dir {self.directory}",
                f"sentinel monitor {SERVICE} {self.master.host} {self.master.port} 2",
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
                f"sentinel failover-timeout {SERVICE} 5000", f"sentinel parallel-syncs {SERVICE} 1", ""]))
            self.procs[node] = node.popen(["redis-sentinel", str(conf)], self.directory / f"sentinel-{n}.log")
        return self

    def wait_healthy(self, timeout_s: float = 30.0) -> SentinelGroup:
        eventually(self._healthy, "the replica in sync and every sentinel seeing it and its peers", timeout_s)
        return self

    def _server(self, node: Node, *extra: str) -> None:
        argv = ["redis-server", "--port", str(node.port), "--bind", node.host, "--protected-mode", "no",
                "--save", "", "--appendonly", "no", "--dir", str(self.directory), *extra]
        self.procs[node] = node.popen(argv, self.directory / f"redis-{node.port}.log")

    def _healthy(self) -> bool:
        try:
            if self.replica.info("replication").get("master_link_status") != "up":
                return False
            for node in self.sentinels:
                with node.client() as client:
                    state = client.sentinel_master(SERVICE)
                if state["num-slaves"] < 1 or state["num-other-sentinels"] < len(self.sentinels) - 1:
                    return False
            return True
        except redis.RedisError:
            return False

    def current_master(self) -> Node | None:
        """The master the sentinels agree on (None while they disagree or none answers)."""
        seen = set()
        for node in self.sentinels:
            try:
                with node.client() as client:
                    host, port = client.sentinel_get_master_addr_by_name(SERVICE)
            except (redis.RedisError, TypeError):
                return None
            seen.add((host, int(port)))
        if len(seen) != 1:
            return None
        host, port = seen.pop()
        return next(n for n in (self.master, self.replica) if (n.host, n.port) == (host, port))

    def master_url(self) -> str:
        """A plain URL of the current master, for reading what tiergate wrote."""
        node = self.current_master()
        assert node is not None, "the sentinels do not agree on a master"
        return f"redis://{node.address}/0"

    def kill_master(self) -> Node:
        """SIGKILL the current master (no persistence: its data is gone); returns it."""
        node = self.current_master()
        assert node is not None
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return node

    def wait_promoted(self, old: Node, timeout_s: float = 30.0) -> Node:
        """Until every sentinel names another master and that server says it is one; returns it."""
        def promoted() -> Node | None:
            node = self.current_master()
            if node is None or node == old:
                return None
            try:
                return node if node.info("replication").get("role") == "master" else None
            except redis.RedisError:
                return None

        return eventually(promoted, "Sentinel to promote the replica", timeout_s)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.procs.clear()
