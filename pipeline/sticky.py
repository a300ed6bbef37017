"""Tier stickiness: a long conversation stays on the tier it was served by, so the provider's prompt cache it
warmed keeps paying off (``router.decide`` holds the tier unless the score moves past ``stickiness_margin``)."""

from __future__ import annotations

from typing import Any

from kvcache.store import KeyValueCache
from pipeline.request import RequestState
from router.decide import CACHE_MIN_TOKENS
from router.prefix import conversation_key

# Providers cache prompts of 1,024+ tokens only; shorter conversations gain nothing from staying on a tier.
STICKY_MIN_TOKENS = CACHE_MIN_TOKENS
STICKY_TTL_S = 300.0  # provider caches go cold after ~5 minutes idle


def sticky_key(state: RequestState, client_body: dict[str, Any]) -> str | None:
    """The conversation's key (the client's session when it sent one, else from its messages, not trimmed ones),
    or None when it should not stick: only a routed request (``auto``, or a name the team aliases to it) has a
    tier to hold."""
    team = state.team
    if (team.aliases.resolve(state.body["model"]) != "auto" or state.features.prompt_tokens < STICKY_MIN_TOKENS
            or team.settings.context.stickiness_margin <= 0):
        return None
    return "sticky:" + conversation_key(team.name, client_body, state.request.session)


async def sticky_tier(cache: KeyValueCache, key: str) -> int | None:
    cached = await cache.get(key)
    return int(cached) if cached is not None else None


async def remember_tier(cache: KeyValueCache, key: str, tier_index: int) -> None:
    await cache.set(key, str(tier_index).encode(), STICKY_TTL_S)
