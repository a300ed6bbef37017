"""Routing of ``/v1/embeddings``: the pure decision for an embedding request. No HTTP, no I/O, no clock.

Embeddings have deployments of their own (the policy's ``embeddings:``, compiled into each team's
``EmbeddingTable``), so they never pass through the chat classifier or the chat tiers: the requested model name,
or ``auto`` (the team's default embedding model), picks the deployments, and every other deployment of the team
serving the same upstream model follows as a fallback (the same model gives the same vectors wherever it runs).
The answer is a ``router.decide.Decision`` so the pipeline reserves, dispatches and settles it like any request:
no score, no output bound, the budget held at the input (embedding) price of the dearest deployment of the plan.
"""

from __future__ import annotations

import random

from router.decide import Decision, RouteRequest, RoutingRefused, worst_case
from router.health_snapshot import HealthSnapshot
from router.ordering import extend_plan
from router.policy import EMBEDDING_TIER, EMBEDDING_TIER_INDEX, DeploymentSpec, Policy, TeamPolicy, TierSpec


def requested_name(team: TeamPolicy, model: str) -> str | None:
    """The embedding name ``model`` means for ``team``: through the team's ``model_aliases`` (``router.aliases``;
    a name the team may send always means itself), and ``auto`` (sent, or an alias's target) means the team's
    default embedding model."""
    target = team.aliases.resolve(model)
    return team.embeddings.default if target == "auto" else target


def not_found_message(policy: Policy, team: TeamPolicy, model: str) -> str:
    """Why ``model`` cannot embed for ``team``, listing what it may use instead."""
    names = sorted(team.embeddings.pins)
    if not names:
        return (f"team {team.name!r} has no embedding models: declare embedding deployments under 'embeddings:' "
                "in the policy")
    what = "a chat model, not an embedding model" if model in policy.by_name or model in policy.tier_by_name \
        else "not available"
    return f"model {model!r} is {what}; team {team.name!r} may embed with 'auto' or models {names}"


def _plan(team: TeamPolicy, named: tuple[DeploymentSpec, ...], request: RouteRequest, health: HealthSnapshot,
          rng: random.Random, limit: int) -> list[DeploymentSpec]:
    """The named deployments first, then the team's others serving the same upstream model, within the
    deployments whose window fits the longest input (the provider refuses longer ones)."""
    fits = [d for d in named if request.features.context_tokens <= d.context_window]
    plan: list[DeploymentSpec] = []
    if fits:
        extend_plan(plan, tuple(fits), health, rng, request.affinity)
    planned = {d.id for d in plan}
    same = tuple(d for d in team.embeddings.pins.get(named[0].upstream_model, ())
                 if d.id not in planned and request.features.context_tokens <= d.context_window)
    if same:
        extend_plan(plan, same, health, rng, request.affinity)
    return plan[:limit]


def route_embedding(policy: Policy, team: TeamPolicy, request: RouteRequest, health: HealthSnapshot,
                    rng: random.Random) -> Decision:
    """Deployments to try for an embeddings request of ``team``; raises ``RoutingRefused`` (``model_not_found``
    for a chat or unknown model name, ``no_capable_tier`` for an input longer than every window)."""
    name = requested_name(team, request.model)
    named = team.embeddings.pins.get(name) if name is not None else None
    if not named:
        raise RoutingRefused("model_not_found", not_found_message(policy, team, request.model), param="model")
    plan = _plan(team, named, request, health, rng, policy.config.server.max_attempts)
    if not plan:
        windows = sorted({d.context_window for d in named})
        raise RoutingRefused("no_capable_tier", f"an input of {request.features.context_tokens} tokens is longer "
                             f"than {name!r} takes (context window {windows[-1]} tokens per input)")
    # The tier of the decision is the plan itself: the ledger's tier for an embedding, and its "no routing"
    # baseline (savings are nil: the client named the model, or its team's default, and got it).
    tier = TierSpec(name=EMBEDDING_TIER, index=EMBEDDING_TIER_INDEX, deployments=tuple(plan), capabilities=frozenset(),
                    context_window=min(d.context_window for d in plan))
    how = ("" if name == request.model else " (team default)" if request.model == "auto"
           else f" (model_aliases: {request.model!r})")
    reasons = (f"embedding model {name!r}{how}", f"deployment {plan[0].id!r}")
    return Decision(tier=tier, plan=tuple(plan), reasons=reasons, score=None, max_tokens=None, max_tokens_note=None,
                    reserve_nanos=worst_case(request.features, 0, tuple(plan)), counterfactual_tier=tier)
