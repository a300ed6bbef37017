"""Per-deployment live state: health (consecutive failures put a deployment in cooldown so fallbacks skip it)
and load (requests in flight, which bounds prefix affinity).

Kept per process and keyed by deployment id, so it survives policy reloads. Not shared across replicas on
purpose: each replica sees its own network path to the upstream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class _State:
    failures: int = 0
    cooldown_until: float = 0.0


@dataclass
class HealthBook:
    failures_to_cooldown: int = 3
    cooldown_s: float = 30.0
    _states: dict[str, _State] = field(default_factory=dict)
    inflight: dict[str, int] = field(default_factory=dict)

    def started(self, deployment_id: str) -> None:
        self.inflight[deployment_id] = self.inflight.get(deployment_id, 0) + 1

    def finished(self, deployment_id: str) -> None:
        self.inflight[deployment_id] = max(0, self.inflight.get(deployment_id, 0) - 1)

    def healthy(self, deployment_id: str, now: float | None = None) -> bool:
        state = self._states.get(deployment_id)
        if state is None:
            return True
        return (now if now is not None else time.monotonic()) >= state.cooldown_until

    def success(self, deployment_id: str) -> None:
        state = self._states.get(deployment_id)
        if state is not None:
            state.failures = 0

    def failure(self, deployment_id: str, retry_after: float | None = None) -> None:
        state = self._states.setdefault(deployment_id, _State())
        state.failures += 1
        now = time.monotonic()
        if retry_after:
            state.cooldown_until = max(state.cooldown_until, now + min(retry_after, self.cooldown_s * 4))
        if state.failures >= self.failures_to_cooldown:
            state.cooldown_until = max(state.cooldown_until, now + self.cooldown_s)
            state.failures = 0
