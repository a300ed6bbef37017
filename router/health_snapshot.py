"""Deployment health and load as ``decide()`` sees them: a value, so the decision reads no clock and no live
state of its own and a test can state the situation it wants in one line."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """Cooldowns and requests in flight per deployment id, at monotonic time ``now``.

    ``upstream.health.HealthBook.snapshot`` hands out its own dicts rather than copies: a copy per request would
    cost the hot path, and ``decide()`` is synchronous, so nothing changes them while it reads. Whoever keeps a
    snapshot across an ``await`` must copy the mappings.
    """

    now: float = 0.0
    cooldown_until: Mapping[str, float] = field(default_factory=dict)  # a deployment is healthy from this time on
    inflight: Mapping[str, int] = field(default_factory=dict)

    def healthy(self, deployment_id: str) -> bool:
        return self.cooldown_until.get(deployment_id, 0.0) <= self.now

    def load(self, deployment_id: str) -> int:
        return self.inflight.get(deployment_id, 0)
