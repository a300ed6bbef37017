"""The simulated provider as a service: validation, fault injection, generation, pacing, and the books tests read.

Transports (the HTTP server, the in-process provider) only translate: they hand a parsed body to ``prepare`` and
render what comes back, so a request behaves the same whichever way it arrives.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from simulator import messages, outcomes, responses
from simulator.embeddings import embed
from simulator.engine import Engine, Generation
from simulator.errors import SimulatedError
from simulator.options import SimulatorOptions
from simulator.prefix_cache import PrefixCache
from simulator.render import chunks
from simulator.validate import validate_chat, validate_completion, validate_embeddings

ENDPOINTS = ("chat/completions", "completions", "embeddings", "responses", "messages")
_VALIDATORS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "chat/completions": validate_chat, "completions": validate_completion, "embeddings": validate_embeddings,
    # The native formats' checks translate too: what they return is the chat engine's input.
    "responses": responses.to_chat, "messages": messages.to_chat,
}


class SimulatedTimeout(SimulatedError):
    """A request chosen to time out: the transport hangs for ``hang_s`` before answering 504."""


def _failure(kind: str, options: SimulatorOptions) -> SimulatedError:
    if kind == "429":
        return SimulatedError(429, "Rate limit reached for requests (simulated by tiergate mock-upstream).",
                              type_="requests", code="rate_limit_exceeded", retry_after=options.retry_after_s)
    if kind == "500":
        return SimulatedError(500, "The server had an error while processing your request (simulated by tiergate "
                              "mock-upstream).", type_="server_error")
    return SimulatedTimeout(504, f"Simulated timeout: no answer for {options.hang_s:g} s.", type_="timeout")


class Simulator:
    """One simulated provider deployment: its prefix cache, failure RNG, counters and request log."""

    def __init__(self, options: SimulatorOptions | None = None) -> None:
        self.options = options or SimulatorOptions()
        self.engine = Engine(PrefixCache(self.options.cache_ttl_s, self.options.cache_max_entries))
        self.stats: Counter[str] = Counter()
        self.requests: deque[dict[str, Any]] = deque(maxlen=self.options.record_max)
        self._fail_rng = random.Random(self.options.fail_seed)
        self._generations = 0

    def record(self, path: str, body: Any, headers: dict[str, str] | None = None) -> None:
        """Keep the request as received, so tests can check what the proxy actually sent upstream."""
        self.stats["requests"] += 1
        self.stats[f"path:{path}"] += 1
        if self.requests.maxlen:
            self.requests.append({"path": path, "body": body, "headers": headers or {}, "time": time.time()})

    def _next_failure(self) -> SimulatedError | None:
        """Deterministic in the request order: the seeded RNG is drawn once (or twice) per generation request."""
        self._generations += 1
        options = self.options
        draw = self._fail_rng.random()
        if self._generations > options.fail_first and draw >= options.fail_rate:
            return None
        kind = options.fail_kind
        if kind == "mixed":
            kind = ("429", "500", "timeout")[self._fail_rng.randrange(3)]
        return _failure(kind, options)

    def prepare(self, endpoint: str, body: Any) -> Generation | dict[str, Any]:
        """Validate, maybe fail, and generate: a ``Generation`` for completions, the whole body for embeddings.

        Raises ``SimulatedError`` for an invalid request (400) or an injected failure (429, 500, timeout).
        """
        try:
            checked = _VALIDATORS[endpoint](body)
            failure = self._next_failure()
            if failure is not None:
                raise failure
        except SimulatedError as exc:
            self.stats[f"error:{exc.status}"] += 1
            raise
        if endpoint == "embeddings":
            return embed(checked)
        if endpoint == "responses":
            return responses.generate(self.engine, body, checked)
        if endpoint == "messages":
            return messages.generate(self.engine, self.engine.cache, body, checked)
        if endpoint != "chat/completions":
            return self.engine.completion(checked)
        gen = self.engine.chat(checked)
        if self.options.outcomes:  # replaying recorded grades (benchmarks/replay)
            return outcomes.replay(gen, checked["messages"], self.options.outcomes, self.options.outcomes_grade)
        return gen

    async def paced(self, gen: Generation) -> AsyncIterator[bytes]:
        """The stream's payloads, delayed by ``ttft_ms`` and then ``tokens_per_s`` as configured."""
        options = self.options
        self.stats["streams_started"] += 1
        if options.ttft_ms:
            await asyncio.sleep(options.ttft_ms / 1000)
        rate = options.tokens_per_s
        try:
            for payload, tokens in chunks(gen):
                if rate and tokens:
                    await asyncio.sleep(tokens / rate)
                yield payload
        except (GeneratorExit, asyncio.CancelledError):
            # Proxy tests check that a client disconnect cancels the upstream call: this is where it shows.
            self.stats["streams_aborted"] += 1
            raise
        self.stats["streams_completed"] += 1

    @staticmethod
    def error_body(endpoint: str, exc: SimulatedError) -> dict[str, Any]:
        """The error as the endpoint's own API shapes it: Anthropic's under ``messages``, else OpenAI's."""
        return messages.error_body(exc) if endpoint == "messages" else exc.body()

    def snapshot(self) -> dict[str, Any]:
        """Counters for ``GET /_mock/stats``."""
        return {**self.stats, "prefix_cache_entries": len(self.engine.cache)}
