"""``decide()``: the pure routing decision. No HTTP, no I/O; the same inputs give the same tier.

The score picks the lowest adequate tier, capabilities and context length can only raise it, the team's floor
and ceiling bound it, and the plan lists what to try next if the chosen deployment fails.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Literal

from metering.usage import worst_case_nanos
from router.features import RequestFeatures
from router.policy import DeploymentSpec, Policy, TeamPolicy, TierSpec
from upstream.health import HealthBook

RefusalKind = Literal["model_not_found", "pin_forbidden", "tier_forbidden", "no_capable_tier", "max_tokens_exceeded"]
# Worst-case output when neither client nor policy bounds it; only used to size a budget reservation.
_UNBOUNDED_OUTPUT = 4096
_RNG = random.Random()  # one per process: seeding a new Random per request showed up in the profile
# A deployment keeps its affinity keys while its in-flight load is within this share above the tier's mean.
AFFINITY_LOAD_SLACK = 0.25


class RoutingRefused(Exception):
    def __init__(self, kind: RefusalKind, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.kind: RefusalKind = kind
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class Decision:
    tier: TierSpec
    plan: tuple[DeploymentSpec, ...]  # attempt order: first is the choice, the rest are fallbacks
    reasons: tuple[str, ...]
    score: float | None
    max_tokens: int | None  # the value to send upstream (None: leave the body as it is)
    max_tokens_note: str | None  # "default" or "clamped" when the policy changed it
    reserve_nanos: int  # the budget reservation: worst-case cost on the dearest deployment of the plan
    counterfactual_tier: TierSpec  # the team's most capable tier: the "no routing" baseline for savings
    sticky_held: bool = False  # stickiness kept the conversation on its tier against the score


def _fits(tier: TierSpec, features: RequestFeatures, output_tokens: int) -> str | None:
    """Why a tier cannot serve the request, or None if it can."""
    missing = features.needs - tier.capabilities
    if missing:
        return f"lacks {', '.join(sorted(missing))}"
    if features.context_tokens + min(output_tokens, 1) > tier.context_window:
        return f"context window {tier.context_window} < {features.context_tokens} prompt tokens"
    return None


def worst_case(features: RequestFeatures, output_budget: int, plan: tuple[DeploymentSpec, ...]) -> int:
    """The most the request can cost, whichever deployment of the plan ends up serving it.

    A failed attempt is not billed, so the bill is one deployment's: the dearest one bounds it. Output is every
    completion the provider generates (``n`` per prompt, every prompt of a batch) at ``output_budget`` tokens
    each. Reasoning tokens need no extra room: OpenAI's ``max_completion_tokens`` and Anthropic's ``max_tokens``
    (thinking included) bound them, and litellm maps ``max_tokens`` onto those limits.
    """
    output = features.completions * output_budget
    return max(worst_case_nanos(features.prompt_tokens, output, price) for price in {dep.price for dep in plan})


def _max_tokens(team: TeamPolicy, requested: int | None) -> tuple[int | None, str | None]:
    limits = team.settings.max_tokens
    if requested is None:
        return (limits.default, "default") if limits.default is not None else (None, None)
    if limits.cap is not None and requested > limits.cap:
        if limits.on_exceed == "reject":
            raise RoutingRefused(
                "max_tokens_exceeded",
                f"max_tokens {requested} is above team {team.name!r}'s cap of {limits.cap}",
                param="max_tokens",
            )
        return limits.cap, "clamped"
    return requested, None


def _rendezvous(key: str, dep: DeploymentSpec) -> float:
    """Weighted highest-random-weight score: the same key prefers the same deployment, and adding or removing
    a deployment moves only the keys that must move."""
    digest = hashlib.blake2b(f"{key}|{dep.id}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 1) / (2**64 + 2)
    return dep.weight / -math.log(u)


def _order(deployments: tuple[DeploymentSpec, ...], health: HealthBook, rng: random.Random,
           affinity: str | None = None) -> list[DeploymentSpec]:
    """Healthy deployments first, deployments in cooldown last (as a last resort). With an affinity key, a
    prefix keeps going to the same deployment (its KV cache is warm) unless that one carries more than its
    share of the load; otherwise weighted random."""
    healthy = [d for d in deployments if health.healthy(d.id)]
    cooling = [d for d in deployments if not health.healthy(d.id)]
    if affinity is not None and len(healthy) > 1:
        ordered = sorted(healthy, key=lambda d: _rendezvous(affinity, d), reverse=True)
        load = [health.inflight.get(d.id, 0) for d in healthy]
        bound = (1.0 + AFFINITY_LOAD_SLACK) * sum(load) / len(load) + 1
        return [d for d in ordered if health.inflight.get(d.id, 0) <= bound] + \
            [d for d in ordered if health.inflight.get(d.id, 0) > bound] + cooling
    ordered = []
    while healthy:
        pick = rng.choices(healthy, weights=[d.weight for d in healthy])[0] if len(healthy) > 1 else healthy[0]
        ordered.append(pick)
        healthy.remove(pick)
    return ordered + cooling


def _score_tier(team: TeamPolicy, score: float) -> int:
    chosen = 0
    for index, threshold in enumerate(team.thresholds):
        if threshold is not None and score >= threshold:
            chosen = index
    return chosen


def _stays(team: TeamPolicy, score: float, chosen: int, sticky: int, margin: float) -> bool:
    """Whether a conversation on tier ``sticky`` stays there though its score now points to ``chosen``:
    switching discards the provider's prompt cache, so the score must clear the boundary by ``margin``."""
    if chosen > sticky:
        threshold = team.thresholds[chosen]
        return threshold is not None and score < threshold + margin
    threshold = team.thresholds[sticky]
    return threshold is None or score >= threshold - margin


def decide(
    policy: Policy,
    team: TeamPolicy,
    features: RequestFeatures,
    score: float | None,
    requested_model: str,
    tier_header: str | None,
    health: HealthBook,
    rng: random.Random | None = None,
    affinity: str | None = None,
    sticky_tier: int | None = None,
    stickiness_margin: float = 0.0,
) -> Decision:
    """Choose tier and deployment plan for one request; raises ``RoutingRefused``."""
    rng = rng or _RNG
    tiers = policy.tiers
    routing = team.settings.routing
    reasons: list[str] = []
    # Embeddings produce no output: nothing to bound, and a max_tokens default must not reach their body.
    max_tokens, note = _max_tokens(team, features.max_output_tokens) if features.completions else (None, None)
    output_budget = max_tokens if max_tokens is not None else _UNBOUNDED_OUTPUT
    allowed = range(team.floor, team.ceiling + 1)
    allowed_names = [tiers[i].name for i in allowed]

    pinned: tuple[DeploymentSpec, ...] | None = None
    wanted_tier: int | None = None
    sticky_held = False
    if requested_model != "auto" and policy.tier_index(requested_model) is not None:
        wanted_tier = policy.tier_index(requested_model)
        reasons.append(f"tier {requested_model!r} requested by model name")
    elif requested_model != "auto":
        candidates = policy.by_name.get(requested_model)
        if not candidates:
            names = sorted({d.upstream_model for i in allowed for d in tiers[i].deployments} | set(allowed_names))
            raise RoutingRefused(
                "model_not_found",
                f"model {requested_model!r} is not available; team {team.name!r} may use 'auto', "
                f"tiers {allowed_names} or models {names}",
                param="model",
            )
        if not routing.allow_pinning or (
            routing.pinnable_models is not None and requested_model not in routing.pinnable_models
        ):
            raise RoutingRefused(
                "pin_forbidden",
                f"team {team.name!r}'s policy (routing.allow_pinning / pinnable_models) does not allow pinning "
                f"{requested_model!r}; use model 'auto' or a tier name {allowed_names}",
                param="model",
            )
        pinned = tuple(d for d in candidates if d.tier_index in allowed)
        if not pinned:
            raise RoutingRefused(
                "pin_forbidden",
                f"model {requested_model!r} is outside team {team.name!r}'s tiers {allowed_names} (policy: tiers.floor/ceiling)",
                param="model",
            )
        reasons.append(f"pinned to {requested_model!r}")
    if pinned is None and tier_header:
        index = policy.tier_index(tier_header)
        if index is None or not routing.allow_tier_header:
            raise RoutingRefused(
                "tier_forbidden",
                f"x-tiergate-tier {tier_header!r} is not allowed for team {team.name!r} (tiers {allowed_names})",
            )
        wanted_tier = index
        reasons.append(f"tier {tier_header!r} requested by header")
    if wanted_tier is not None and wanted_tier not in allowed:
        raise RoutingRefused(
            "tier_forbidden",
            f"tier {tiers[wanted_tier].name!r} is outside team {team.name!r}'s tiers {allowed_names} "
            "(policy: tiers.floor/ceiling)",
        )

    if pinned is not None:
        tier = tiers[pinned[0].tier_index]
        plan = _order(pinned, health, rng, affinity)
    else:
        if wanted_tier is None:
            wanted_tier = max(team.floor, _score_tier(team, score if score is not None else 0.0))
            reasons.append(f"score {score:.3f} -> tier {tiers[wanted_tier].name!r}" if score is not None else "no score")
            if (score is not None and sticky_tier is not None and sticky_tier != wanted_tier
                    and sticky_tier in allowed and _stays(team, score, wanted_tier, sticky_tier, stickiness_margin)):
                wanted_tier = sticky_tier
                sticky_held = True
                reasons.append(f"kept on tier {tiers[sticky_tier].name!r}: its prompt cache is warm")
        start = min(max(wanted_tier, team.floor), team.ceiling)
        capable = []
        for index in range(start, team.ceiling + 1):
            why_not = _fits(tiers[index], features, output_budget)
            if why_not is None:
                capable.append(tiers[index])
            elif not capable:
                reasons.append(f"skipped {tiers[index].name!r}: {why_not}")
        if not capable:
            raise RoutingRefused(
                "no_capable_tier",
                f"no tier within team {team.name!r}'s policy ({allowed_names}) can serve this request: "
                + "; ".join(reasons[-len(allowed_names):]),
            )
        tier = capable[0]
        plan = _order(tier.deployments, health, rng, affinity)
        for fallback in capable[1:]:
            plan += _order(fallback.deployments, health, rng, affinity)
        if routing.allow_downgrade_on_failure:
            for index in range(tier.index - 1, team.floor - 1, -1):
                if _fits(tiers[index], features, output_budget) is None:
                    plan += _order(tiers[index].deployments, health, rng, affinity)
    # The dispatcher tries no more than max_attempts deployments: the plan (and so the reservation) stops there.
    plan = plan[: policy.config.server.max_attempts]
    first = plan[0]
    reasons.append(f"deployment {first.id!r}")
    return Decision(
        tier=tier,
        plan=tuple(plan),
        reasons=tuple(reasons),
        score=score,
        max_tokens=max_tokens,
        max_tokens_note=note,
        reserve_nanos=worst_case(features, output_budget, tuple(plan)),
        counterfactual_tier=tiers[team.ceiling],
        sticky_held=sticky_held,
    )
