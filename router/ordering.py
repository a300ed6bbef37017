"""Which deployment of a tier to try first: healthy ones before those in cooldown, a prompt prefix kept on the
deployment whose KV cache is warm, otherwise weighted random."""

from __future__ import annotations

import hashlib
import math
import random

from router.health_snapshot import HealthSnapshot
from router.policy import DeploymentSpec

# A deployment keeps its affinity keys while its in-flight load is within this share above the tier's mean.
AFFINITY_LOAD_SLACK = 0.25


def _rendezvous(key: str, dep: DeploymentSpec) -> float:
    """Weighted highest-random-weight score: the same key prefers the same deployment, and adding or removing
    a deployment moves only the keys that must move."""
    digest = hashlib.blake2b(f"{key}|{dep.id}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 1) / (2**64 + 2)
    return dep.weight / -math.log(u)


def _by_affinity(healthy: list[DeploymentSpec], health: HealthSnapshot, affinity: str) -> list[DeploymentSpec]:
    """Rendezvous order, except that deployments carrying more than their share of the load go after the rest."""
    ordered = sorted(healthy, key=lambda d: _rendezvous(affinity, d), reverse=True)
    bound = (1.0 + AFFINITY_LOAD_SLACK) * sum(health.load(d.id) for d in healthy) / len(healthy) + 1
    return [d for d in ordered if health.load(d.id) <= bound] + [d for d in ordered if health.load(d.id) > bound]


def _weighted_shuffle(healthy: list[DeploymentSpec], rng: random.Random) -> list[DeploymentSpec]:
    ordered = []
    while len(healthy) > 1:
        pick = rng.choices(healthy, weights=[d.weight for d in healthy])[0]
        ordered.append(pick)
        healthy.remove(pick)
    return ordered + healthy


def extend_plan(plan: list[DeploymentSpec], deployments: tuple[DeploymentSpec, ...], health: HealthSnapshot,
                rng: random.Random, affinity: str | None) -> None:
    """Append a tier's deployments to ``plan`` in attempt order; those in cooldown go last, as a last resort."""
    if len(deployments) == 1:  # the common case: nothing to order, nothing to allocate
        plan.append(deployments[0])
        return
    healthy = [d for d in deployments if health.healthy(d.id)]
    if affinity is not None and len(healthy) > 1:
        plan += _by_affinity(healthy, health, affinity)
    else:
        plan += _weighted_shuffle(healthy, rng)
    plan += [d for d in deployments if not health.healthy(d.id)]
