"""Prefix affinity across conversations: requests of different conversations that resend one long static prefix
(an app's 2k-token system prompt, an agent's tool list) stay on the tier where the provider has it cached, so a
question that scores a little past a threshold does not pay a cold cache on the next tier up (``router.decide``
holds the request unless its score passes the threshold by ``context.prefix_affinity_margin``).

Per (team, prefix key) the KV cache remembers the tier the prefix was last served on, for as long as a provider
keeps a prefix cached. Only prefixes a provider caches at all (1,024+ tokens of system messages and tools) are
remembered or looked up: every other request pays one integer comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvcache.store import KeyValueCache
from metering.record import UsageRecord
from metering.usage import Usage, cost_nanos
from pipeline.request import RequestState
from pipeline.sticky import STICKY_TTL_S
from router.decide import Decision, cacheable_prefix


def affinity_key(state: RequestState, prefix: str | None) -> str | None:
    """The KV key of the request's static prefix, or None when it is too short for a provider to cache (or the
    team turned prefix affinity off)."""
    if (prefix is None or not cacheable_prefix(state.features)
            or state.team.settings.context.prefix_affinity_margin <= 0):
        return None
    return f"prefix:{state.team.name}:{prefix}"


def routed(state: RequestState) -> bool:
    """Whether the score will choose the tier (``auto``, or a name the team aliases to it, and no tier header):
    only then can a warm tier hold the request, so only then is the warm tier looked up."""
    return state.team.aliases.resolve(state.body["model"]) == "auto" and not state.request.tier_header


async def warm_tier(cache: KeyValueCache, key: str) -> int | None:
    cached = await cache.get(key)
    return int(cached) if cached is not None else None


async def remember_tier(cache: KeyValueCache, key: str, tier_index: int) -> None:
    """Any request serves its prefix into the tier's cache, routed or not (a tier header warms it too)."""
    await cache.set(key, str(tier_index).encode(), STICKY_TTL_S)


@dataclass(frozen=True, slots=True)
class HeldCosts:
    """What a prefix-held request would have cost on the tier its score chose, with the same token counts as the
    served answer (as ``counterfactual_cost_nanos`` assumes for the ceiling tier). The truth lies between:
    ``cold`` prices every prompt token uncached (that tier had not seen the prefix lately: the KV cache names
    another), ``warm`` gives it the cached tokens the served tier had (only the tiers' prices differ)."""

    cold_nanos: int
    warm_nanos: int


def held_costs(decision: Decision, record: UsageRecord) -> HeldCosts | None:
    """None unless prefix affinity held the request."""
    if not decision.prefix_held or decision.scored_tier is None:
        return None
    price = decision.scored_tier.deployments[0].price
    cold = Usage(record.prompt_tokens, record.completion_tokens)
    warm = Usage(record.prompt_tokens, record.completion_tokens, cached_tokens=record.cached_tokens)
    return HeldCosts(cost_nanos(cold, price), cost_nanos(warm, price))
