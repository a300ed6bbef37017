"""Per-deployment live state: health (consecutive failures put a deployment in cooldown so fallbacks skip it),
load (requests in flight, which bounds prefix affinity) and what ops read of it (``GET /v1/upstreams``): a bounded
window of recent answer latencies and of recent failures.

Kept per process and keyed by deployment id, so it survives policy reloads. Not shared across replicas on
purpose: each replica sees its own network path to the upstream. The router reads it only as a
``HealthSnapshot`` value.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from router.health_snapshot import HealthSnapshot

# Bounded so the request path only appends (O(1), no growth): enough for a steady P95, small enough to sort per read.
LATENCY_WINDOW = 256
RECENT_FAILURES = 20


@dataclass(frozen=True, slots=True)
class Failure:
    at: float  # the book's clock (monotonic)
    kind: str  # an UpstreamError kind: timeout, connection, rate_limit, server, ...


@dataclass(frozen=True, slots=True)
class DeploymentHealth:
    """One deployment as this process sees it now (``HealthBook.view``)."""

    deployment_id: str
    cooldown_s: float  # seconds of cooldown left; 0 when healthy
    consecutive_failures: int  # towards the next cooldown
    inflight: int
    successes: int  # attempts answered since the process started
    failures: int  # retryable failures (timeout, 429, 5xx, connection): the ones that lead to a cooldown
    latencies_ms: tuple[float, ...]  # the most recent successful attempts, oldest first
    recent_failures: tuple[tuple[float, str], ...]  # (seconds ago, kind), newest first


@dataclass
class HealthBook:
    failures_to_cooldown: int = 3
    cooldown_s: float = 30.0
    clock: Callable[[], float] = time.monotonic  # tests pass their own to move time without sleeping
    _failures: dict[str, int] = field(default_factory=dict)
    _cooldown_until: dict[str, float] = field(default_factory=dict)
    inflight: dict[str, int] = field(default_factory=dict)
    _latency: dict[str, deque[float]] = field(default_factory=dict)
    _recent: dict[str, deque[Failure]] = field(default_factory=dict)
    _ok: dict[str, int] = field(default_factory=dict)
    _failed: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> HealthSnapshot:
        """What ``decide()`` reads: the book's own dicts (see ``HealthSnapshot`` for why no copy) and the time."""
        return HealthSnapshot(self.clock(), self._cooldown_until, self.inflight)

    def started(self, deployment_id: str) -> None:
        self.inflight[deployment_id] = self.inflight.get(deployment_id, 0) + 1

    def finished(self, deployment_id: str) -> None:
        self.inflight[deployment_id] = max(0, self.inflight.get(deployment_id, 0) - 1)

    def success(self, deployment_id: str, elapsed_ms: float | None = None) -> None:
        """An attempt answered; ``elapsed_ms`` is how long it took (a stream: until its first payload)."""
        if deployment_id in self._failures:
            self._failures[deployment_id] = 0
        self._ok[deployment_id] = self._ok.get(deployment_id, 0) + 1
        if elapsed_ms is not None:
            window = self._latency.get(deployment_id)
            if window is None:
                window = self._latency[deployment_id] = deque(maxlen=LATENCY_WINDOW)
            window.append(elapsed_ms)

    def failure(self, deployment_id: str, retry_after: float | None = None, kind: str = "error") -> None:
        failures = self._failures.get(deployment_id, 0) + 1
        now = self.clock()
        until = self._cooldown_until.get(deployment_id, 0.0)
        if retry_after:
            until = max(until, now + min(retry_after, self.cooldown_s * 4))
        if failures >= self.failures_to_cooldown:
            until = max(until, now + self.cooldown_s)
            failures = 0
        self._failures[deployment_id] = failures
        if until:
            self._cooldown_until[deployment_id] = until
        self._failed[deployment_id] = self._failed.get(deployment_id, 0) + 1
        recent = self._recent.get(deployment_id)
        if recent is None:
            recent = self._recent[deployment_id] = deque(maxlen=RECENT_FAILURES)
        recent.append(Failure(now, kind))

    def view(self, deployment_id: str) -> DeploymentHealth:
        """Copies, for a reader that may await while holding them."""
        now = self.clock()
        return DeploymentHealth(
            deployment_id=deployment_id,
            cooldown_s=max(0.0, self._cooldown_until.get(deployment_id, 0.0) - now),
            consecutive_failures=self._failures.get(deployment_id, 0),
            inflight=self.inflight.get(deployment_id, 0),
            successes=self._ok.get(deployment_id, 0),
            failures=self._failed.get(deployment_id, 0),
            latencies_ms=tuple(self._latency.get(deployment_id, ())),
            recent_failures=tuple((now - f.at, f.kind) for f in reversed(self._recent.get(deployment_id, ()))),
        )
