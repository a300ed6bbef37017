"""``decide()``: the pure routing decision. No HTTP, no I/O, no clock: the same request, health snapshot and
random state give the same decision.

The steps, in order: the output bound (``_output_limit``), what the client asked for by model name or header
(``_requested``), the tier the score points to and whether stickiness (the conversation's tier) or prefix affinity
(the tier where other requests warmed the same long prompt prefix) holds another (``_scored_tier``),
the tiers that can serve the request (``_capable``), and the attempt plan over their deployments (``_plan``).
The score picks the lowest adequate tier, capabilities and context length can only raise it, the team's floor and
ceiling bound it, and the plan lists what to try next if the chosen deployment fails.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from metering.usage import worst_case_nanos
from router.features import RequestFeatures
from router.health_snapshot import HealthSnapshot
from router.ordering import extend_plan
from router.policy import DeploymentSpec, Policy, TeamPolicy, TierSpec

Hold = Literal["sticky", "prefix"] | None  # what kept a scored request off its score's tier
RefusalKind = Literal["model_not_found", "pin_forbidden", "tier_forbidden", "no_capable_tier", "max_tokens_exceeded"]
# Worst-case output when neither client nor policy bounds it; only used to size a budget reservation.
_UNBOUNDED_OUTPUT = 4096
# Providers cache prompts of 1,024+ tokens only (OpenAI's minimum; Anthropic's is 1,024 to 4,096 by model).
CACHE_MIN_TOKENS = 1024


def cacheable_prefix(features: RequestFeatures) -> bool:
    """Whether the static prefix (system messages and tools: what requests of different conversations share) is
    long enough for a provider to cache, so that a tier where it is warm is worth holding a request on."""
    return features.system_tokens + features.tool_tokens >= CACHE_MIN_TOKENS


class RoutingRefused(Exception):
    def __init__(self, kind: RefusalKind, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.kind: RefusalKind = kind
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What ``decide()`` needs to know about one request; the caller has scored it and looked up its history."""

    features: RequestFeatures
    model: str  # the body's model: "auto", a tier name or a pin name
    score: float | None = None  # the classifier's score; None when the client chose (or nothing was scored)
    tier_header: str | None = None  # x-tiergate-tier
    affinity: str | None = None  # a prompt-prefix key: keeps the prefix on one deployment (warm KV cache)
    sticky_tier: int | None = None  # the tier the conversation was last served on
    prefix_tier: int | None = None  # the tier a long prompt prefix (any conversation's) was last served on
    router_model: str | None = None  # the id of the model that gave ``score`` (the team's learned one or the default)


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
    # prefix affinity kept the request on the cheaper tier where its long prompt prefix is cached, against the score;
    # ``scored_tier`` is then the tier the score chose (the baseline of what the hold saved)
    prefix_held: bool = False
    scored_tier: TierSpec | None = None
    router_model: str | None = None  # the id of the model that gave ``score``, carried to the usage record


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


def _output_limit(team: TeamPolicy, features: RequestFeatures) -> tuple[int | None, str | None]:
    """The max_tokens to send upstream and why it differs from the client's (None, None: leave the body alone).
    Embeddings produce no output: nothing to bound, and a max_tokens default must not reach their body."""
    if not features.completions:
        return None, None
    limits = team.settings.max_tokens
    requested = features.max_output_tokens
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


def _pinned(policy: Policy, team: TeamPolicy, model: str) -> tuple[DeploymentSpec, ...]:
    """The team's deployments serving pin name ``model``; the refusal says which rule stands in the way."""
    pinned = team.pins.get(model)
    if pinned is not None:
        return pinned
    if not policy.by_name.get(model):
        pinnable = sorted(team.pins)
        raise RoutingRefused(
            "model_not_found",
            f"model {model!r} is not available; team {team.name!r} may use 'auto', tiers {list(team.tier_names)}"
            + (f" or models {pinnable}" if pinnable else "")
            + (f" (or names matching model_aliases {[rule[0] for rule in team.aliases.rules]})"
               if team.aliases.rules else ""),
            param="model",
        )
    routing = team.settings.routing
    if not routing.allow_pinning or (routing.pinnable_models is not None and model not in routing.pinnable_models):
        raise RoutingRefused(
            "pin_forbidden",
            f"team {team.name!r}'s policy (routing.allow_pinning / pinnable_models) does not allow pinning "
            f"{model!r}; use model 'auto' or a tier name {list(team.tier_names)}",
            param="model",
        )
    raise RoutingRefused(
        "pin_forbidden",
        f"model {model!r} is outside team {team.name!r}'s tiers {list(team.tier_names)} (policy: tiers.floor/ceiling)",
        param="model",
    )


def _requested(policy: Policy, team: TeamPolicy, request: RouteRequest,
               reasons: list[str]) -> tuple[tuple[DeploymentSpec, ...] | None, int | None]:
    """What the client chose: pinned deployments, or a tier (by model name or header), or neither (None, None)."""
    model = team.aliases.resolve(request.model)
    if model != request.model:
        reasons.append(f"model {request.model!r} -> {model!r} (model_aliases)")
    wanted: int | None = None
    if model != "auto":
        wanted = policy.tier_by_name.get(model)
        if wanted is None:
            pinned = _pinned(policy, team, model)
            reasons.append(f"pinned to {model!r}")
            return pinned, None
        reasons.append(f"tier {model!r} requested by model name")
    header = request.tier_header
    if header:
        index = policy.tier_by_name.get(header)
        if index is None or not team.settings.routing.allow_tier_header:
            raise RoutingRefused(
                "tier_forbidden",
                f"x-tiergate-tier {header!r} is not allowed for team {team.name!r} (tiers {list(team.tier_names)})",
            )
        wanted = index
        reasons.append(f"tier {header!r} requested by header")
    if wanted is not None and not team.floor <= wanted <= team.ceiling:
        raise RoutingRefused(
            "tier_forbidden",
            f"tier {policy.tiers[wanted].name!r} is outside team {team.name!r}'s tiers {list(team.tier_names)} "
            "(policy: tiers.floor/ceiling)",
        )
    return None, wanted


def _score_tier(team: TeamPolicy, score: float) -> int:
    chosen = 0
    for index, threshold in enumerate(team.thresholds):
        if threshold is not None and score >= threshold:
            chosen = index
    return chosen


def _stays(team: TeamPolicy, score: float, chosen: int, warm: int, margin: float) -> bool:
    """Whether a request on (or sent to) tier ``warm``, whose provider prompt cache is warm, stays there though
    its score points to ``chosen``: switching discards the cache, so the score must clear the boundary between
    the two tiers by ``margin``. Upward that is the first threshold above ``warm`` (the one the score crossed
    first), not ``chosen``'s: a score past it by more than the margin leaves, however many tiers it skips."""
    if chosen > warm:  # ``chosen`` was picked by its threshold, so one is set in (warm, chosen]
        crossed = next(t for t in team.thresholds[warm + 1:chosen + 1] if t is not None)
        return score < crossed + margin
    threshold = team.thresholds[warm]
    return threshold is None or score >= threshold - margin


def _scored_tier(policy: Policy, team: TeamPolicy, request: RouteRequest,
                 reasons: list[str]) -> tuple[int, int, Hold]:
    """The tier to serve: the one the score points to (it may lie above the ceiling: the caller clamps), or the
    one a warm prompt cache holds the request on; then the score's tier, and which hold (if any) overrode it.

    The conversation's own tier comes first (its cache covers the whole history). Without one, a long prefix
    shared with other requests holds the request only on a *cheaper* tier than its score's: on a dearer one its
    cached input would still cost more than the cheaper tier's uncached input (gpt-4o's cache reads are 8x
    gpt-4o-mini's full price) and its output dearer, so holding it up would only spend."""
    score = request.score
    chosen = max(team.floor, _score_tier(team, score if score is not None else 0.0))
    if score is None:
        reasons.append("no score")
        return chosen, chosen, None
    reasons.append(f"score {score:.3f} -> tier {policy.tiers[chosen].name!r}")
    context = team.settings.context
    sticky = request.sticky_tier
    if sticky is not None:
        if (sticky != chosen and team.floor <= sticky <= team.ceiling
                and _stays(team, score, chosen, sticky, context.stickiness_margin)):
            reasons.append(f"kept on tier {policy.tiers[sticky].name!r}: its prompt cache is warm")
            return sticky, chosen, "sticky"
        return chosen, chosen, None
    warm = request.prefix_tier
    if (warm is not None and team.floor <= warm <= team.ceiling and warm < chosen
            and cacheable_prefix(request.features)
            and _stays(team, score, chosen, warm, context.prefix_affinity_margin)):
        reasons.append(f"kept on tier {policy.tiers[warm].name!r}: its cache holds this prompt prefix")
        return warm, chosen, "prefix"
    return chosen, chosen, None


def _capable(policy: Policy, team: TeamPolicy, start: int, features: RequestFeatures, output_budget: int,
             reasons: list[str]) -> list[TierSpec]:
    """The tiers from ``start`` up to the ceiling that can serve the request, cheapest first."""
    capable = []
    for tier in policy.tiers[start:team.ceiling + 1]:
        why_not = _fits(tier, features, output_budget)
        if why_not is None:
            capable.append(tier)
        elif not capable:
            reasons.append(f"skipped {tier.name!r}: {why_not}")
    if not capable:
        raise RoutingRefused(
            "no_capable_tier",
            f"no tier within team {team.name!r}'s policy ({list(team.tier_names)}) can serve this request: "
            + "; ".join(reasons[-len(team.tier_names):]),
        )
    return capable


def _plan(policy: Policy, team: TeamPolicy, capable: list[TierSpec], request: RouteRequest, output_budget: int,
          health: HealthSnapshot, rng: random.Random) -> list[DeploymentSpec]:
    """Attempt order: the chosen tier's deployments, then richer capable tiers', then (if the team allows a
    downgrade on failure) cheaper tiers that fit. It stops at max_attempts: the dispatcher tries no more, so the
    reservation must not cover more either."""
    limit = policy.config.server.max_attempts
    plan: list[DeploymentSpec] = []
    for tier in capable:
        extend_plan(plan, tier.deployments, health, rng, request.affinity)
        if len(plan) >= limit:
            return plan
    if team.settings.routing.allow_downgrade_on_failure:
        for tier in reversed(policy.tiers[team.floor:capable[0].index]):
            if _fits(tier, request.features, output_budget) is None:
                extend_plan(plan, tier.deployments, health, rng, request.affinity)
                if len(plan) >= limit:
                    break
    return plan


def decide(policy: Policy, team: TeamPolicy, request: RouteRequest, health: HealthSnapshot,
           rng: random.Random) -> Decision:
    """Choose tier and deployment plan for one request; raises ``RoutingRefused``."""
    features = request.features
    max_tokens, note = _output_limit(team, features)
    output_budget = max_tokens if max_tokens is not None else _UNBOUNDED_OUTPUT
    reasons: list[str] = []
    pinned, wanted = _requested(policy, team, request, reasons)
    hold: Hold = None
    scored_tier: TierSpec | None = None
    if pinned is not None:
        tier = policy.tiers[pinned[0].tier_index]
        plan: list[DeploymentSpec] = []
        extend_plan(plan, pinned, health, rng, request.affinity)
    else:
        if wanted is None:
            wanted, scored, hold = _scored_tier(policy, team, request, reasons)
        capable = _capable(policy, team, min(wanted, team.ceiling), features, output_budget, reasons)
        tier = capable[0]
        if hold == "prefix":  # unless the warm tier cannot serve it: then it went up anyway
            scored_tier = policy.tiers[min(scored, team.ceiling)]
            if tier.index >= scored_tier.index:
                hold, scored_tier = None, None
        plan = _plan(policy, team, capable, request, output_budget, health, rng)
    del plan[policy.config.server.max_attempts:]
    reasons.append(f"deployment {plan[0].id!r}")
    attempts = tuple(plan)
    return Decision(
        tier=tier,
        plan=attempts,
        reasons=tuple(reasons),
        score=request.score,
        max_tokens=max_tokens,
        max_tokens_note=note,
        reserve_nanos=worst_case(features, output_budget, attempts),
        counterfactual_tier=policy.tiers[team.ceiling],
        sticky_held=hold == "sticky",
        prefix_held=hold == "prefix",
        scored_tier=scored_tier,
        router_model=request.router_model,
    )
