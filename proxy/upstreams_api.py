"""``GET /v1/upstreams`` (admin): every deployment of the policy with its health and latency as this worker sees
them, from the runtime's ``upstream.health.HealthBook``: cooldown left, consecutive failures towards the next
cooldown, requests in flight, successes and failures since start, the last failures (kind and age) and P50/P95 of
the recent successful attempts (a non-streamed answer to its last byte, a stream to its first payload).

Why per worker: the book is per process on purpose (each sees its own path to the upstream), so with ``--workers
N`` one answer is one worker's view; ``pid`` says which. Admin only: it names every team's deployments.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from metering.percentile import nearest_rank as percentile_of
from pipeline.errors import TiergateError
from proxy.endpoints import authenticated, runtime
from proxy.render import json_response
from router.policy import DeploymentSpec, Policy
from upstream.health import LATENCY_WINDOW, DeploymentHealth


def nearest_rank(values: Sequence[float], percentile: int) -> float | None:
    """``metering.percentile.nearest_rank`` of the latency window, None before the first sample (the JSON says
    ``null``, not 0 ms)."""
    return percentile_of(values, percentile) if values else None


def deployments(policy: Policy) -> Iterator[DeploymentSpec]:
    """Each deployment once: the chat tiers' in ladder order, then pinned-only and embedding ones."""
    seen: set[str] = set()
    pools = [tier.deployments for tier in policy.tiers] + list(policy.by_name.values())
    pools += [deps for team in policy.teams.values() for deps in team.embeddings.pins.values()]
    for pool in pools:
        for dep in pool:
            if dep.id not in seen:
                seen.add(dep.id)
                yield dep


def _row(dep: DeploymentSpec, h: DeploymentHealth) -> dict[str, Any]:
    p50, p95 = nearest_rank(h.latencies_ms, 50), nearest_rank(h.latencies_ms, 95)
    return {
        "id": dep.id, "tier": dep.tier, "model": dep.upstream_model, "provider": dep.provider,
        "status": "cooldown" if h.cooldown_s > 0 else "degraded" if h.consecutive_failures else "healthy",
        "cooldown_remaining_s": round(h.cooldown_s, 3), "consecutive_failures": h.consecutive_failures,
        "inflight": h.inflight, "successes": h.successes, "failures": h.failures,
        "latency_ms": {"samples": len(h.latencies_ms), "p50": None if p50 is None else round(p50, 1),
                       "p95": None if p95 is None else round(p95, 1)},
        "recent_failures": [{"seconds_ago": round(ago, 1), "kind": kind} for ago, kind in h.recent_failures],
    }


async def upstreams(request: Request) -> Response:
    if not authenticated(request).admin:
        raise TiergateError("admin_key_required", "upstream health is read with an admin key")
    rt = runtime(request)
    rows = [_row(dep, rt.health.view(dep.id)) for dep in deployments(rt.store.policy)]
    return json_response({"pid": os.getpid(), "latency_window": LATENCY_WINDOW, "upstreams": rows})
