"""Prefix affinity across conversations: requests of different conversations that resend one long static prefix
(an app's 2k-token system prompt, an agent's tool list) stay on the tier where the provider has it cached, so a
question that scores a little past a threshold does not pay a cold cache on the next tier up (``router.decide``
holds the request unless its score passes the threshold by ``context.prefix_affinity_margin``).

Per (team, prefix key) the KV cache remembers the tier the prefix was last served on, for as long as a provider
keeps a prefix cached. Only prefixes a provider caches at all (1,024+ tokens of system messages and tools) are
remembered or looked up: every other request pays one integer comparison.
"""

from __future__ import annotations

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


def baseline_nanos(decision: Decision, record: UsageRecord) -> int | None:
    """What a prefix-held request would have cost on the tier its score chose, every prompt token at the uncached
    input price (the prefix was last served elsewhere, so that tier's cache is taken as cold): None unless held.
    Same token counts as the served answer, as ``counterfactual_cost_nanos`` assumes for the ceiling tier."""
    if not decision.prefix_held or decision.scored_tier is None:
        return None
    usage = Usage(record.prompt_tokens, record.completion_tokens)
    return cost_nanos(usage, decision.scored_tier.deployments[0].price)
