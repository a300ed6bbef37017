"""Per-deployment live state: health (consecutive failures put a deployment in cooldown so fallbacks skip it)
and load (requests in flight, which bounds prefix affinity).

Kept per process and keyed by deployment id, so it survives policy reloads. Not shared across replicas on
purpose: each replica sees its own network path to the upstream. The router reads it only as a
``HealthSnapshot`` value.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from router.health_snapshot import HealthSnapshot


@dataclass
class HealthBook:
    failures_to_cooldown: int = 3
    cooldown_s: float = 30.0
    clock: Callable[[], float] = time.monotonic  # tests pass their own to move time without sleeping
    _failures: dict[str, int] = field(default_factory=dict)
    _cooldown_until: dict[str, float] = field(default_factory=dict)
    inflight: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> HealthSnapshot:
        """What ``decide()`` reads: the book's own dicts (see ``HealthSnapshot`` for why no copy) and the time."""
        return HealthSnapshot(self.clock(), self._cooldown_until, self.inflight)

    def started(self, deployment_id: str) -> None:
        self.inflight[deployment_id] = self.inflight.get(deployment_id, 0) + 1

    def finished(self, deployment_id: str) -> None:
        self.inflight[deployment_id] = max(0, self.inflight.get(deployment_id, 0) - 1)

    def success(self, deployment_id: str) -> None:
        if deployment_id in self._failures:
            self._failures[deployment_id] = 0

    def failure(self, deployment_id: str, retry_after: float | None = None) -> None:
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
