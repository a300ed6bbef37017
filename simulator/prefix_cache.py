"""Provider prompt caching the way OpenAI and Anthropic report it.

OpenAI caches prompts of 1,024 tokens or more, in 128-token increments beyond the first 1,024, routed by a hash of
the prefix (plus ``prompt_cache_key`` when given) and dropped after 5-10 minutes idle. A request whose leading
tokens match a recently seen prefix reports the longest such boundary in ``prompt_tokens_details.cached_tokens``.

Each boundary is stored as a chained digest (boundary k hashes boundary k-1's digest plus the next 128 tokens), so
one entry stands for the whole prefix up to it and a lookup is a few dictionary probes, not a token comparison.
Entries live in an LRU ordered by last use: expiry pops from the front and the entry count is bounded.

Anthropic caches only where the request asks (``cache_control`` breakpoints, ``breakpoints``): the prefix up to a
breakpoint is written on first sight (billed as a cache write) and read on repeat within the TTL.
"""

from __future__ import annotations

import hashlib
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable

MIN_CACHED_TOKENS = 1024
INCREMENT = 128


def _boundary_digests(namespace: bytes, tokens: array) -> list[bytes]:
    """Digests of each cacheable prefix of ``tokens``, shortest first."""
    digests: list[bytes] = []
    if len(tokens) < MIN_CACHED_TOKENS:
        return digests
    digest = hashlib.blake2b(namespace + tokens[:MIN_CACHED_TOKENS].tobytes(), digest_size=16).digest()
    digests.append(digest)
    for start in range(MIN_CACHED_TOKENS, len(tokens) - INCREMENT + 1, INCREMENT):
        digest = hashlib.blake2b(digest + tokens[start : start + INCREMENT].tobytes(), digest_size=16).digest()
        digests.append(digest)
    return digests


def cacheable_tokens(prompt_tokens: int) -> int:
    """The longest prefix of a prompt this size that could be cached (0 below the 1,024-token minimum)."""
    if prompt_tokens < MIN_CACHED_TOKENS:
        return 0
    return MIN_CACHED_TOKENS + (prompt_tokens - MIN_CACHED_TOKENS) // INCREMENT * INCREMENT


class PrefixCache:
    """Which prompt prefixes this simulated provider has "seen recently"; one per server process or provider."""

    def __init__(self, ttl_s: float = 300.0, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic):
        self._ttl = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, float] = OrderedDict()  # digest -> last use

    def __len__(self) -> int:
        return len(self._entries)

    def lookup_and_store(self, namespace: str, tokens: array) -> int:
        """Cached tokens for this prompt, then remember its prefixes (a hit refreshes them, as at OpenAI)."""
        digests = _boundary_digests(namespace.encode("utf-8", "surrogatepass") + b"\x00", tokens)
        if not digests:
            return 0
        now = self._clock()
        self._expire(now)
        cached = 0
        for i in range(len(digests) - 1, -1, -1):
            if digests[i] in self._entries:
                cached = MIN_CACHED_TOKENS + i * INCREMENT
                break
        for digest in digests:
            self._entries[digest] = now
            self._entries.move_to_end(digest)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return cached

    def breakpoints(self, namespace: str, tokens: array, ends: list[int], minimum: int) -> tuple[int, int]:
        """Anthropic's explicit caching: ``ends`` are the prompt lengths at each ``cache_control`` breakpoint.
        Returns (read, written): the longest breakpoint prefix seen before (read from the cache), and the tokens
        past it up to the last breakpoint (written now). Prefixes shorter than ``minimum`` are never cached."""
        ends = sorted({e for e in ends if minimum <= e <= len(tokens)})
        if not ends:
            return 0, 0
        now = self._clock()
        self._expire(now)
        base = namespace.encode("utf-8", "surrogatepass") + b"\x01"  # never equal to an OpenAI-style digest
        digests = [hashlib.blake2b(base + tokens[:end].tobytes(), digest_size=16).digest() for end in ends]
        read = next((end for end, d in zip(reversed(ends), reversed(digests)) if d in self._entries), 0)
        for digest in digests:
            self._entries[digest] = now
            self._entries.move_to_end(digest)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return read, ends[-1] - read

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            digest, last_use = next(iter(entries.items()))
            if now - last_use <= self._ttl:
                return
            del entries[digest]
