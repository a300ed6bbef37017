"""Carry out a Decision's plan: call deployments in order until one answers, within attempt and time bounds.

Retryable failures (429, 5xx, timeouts, connection errors) move to the next deployment; a client error (other
4xx) is the request's own fault and is returned at once. A stream is retried only until its first payload
arrives: once bytes have gone to the client, a retry would duplicate them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from router.policy import DeploymentSpec
from upstream.base import Endpoint, UpstreamError, UpstreamReply
from upstream.health import HealthBook
from upstream.pool import UpstreamPool

log = logging.getLogger("tiergate.dispatch")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Attempt:
    deployment: str
    outcome: str  # "ok" or an UpstreamError kind
    detail: str  # public_reason() of a failure: what a client may be told
    elapsed_ms: float


def public_reason(exc: UpstreamError) -> str:
    """A failed call as a client may read it: the kind of failure and the status class, never the upstream's
    address or its own words (those go to the log)."""
    if exc.kind == "timeout":
        return "timed out"
    if exc.kind == "connection":
        return "connection failed"
    if exc.kind == "rate_limit":
        return "rate limited (429)"
    if exc.status is not None:
        return f"answered {exc.status // 100}xx"
    return "sent an unusable answer"


class AllAttemptsFailed(Exception):
    """Every attempt failed; ``last`` is the error to report, ``attempts`` the history."""

    def __init__(self, last: UpstreamError, attempts: list[Attempt]) -> None:
        super().__init__(last.message)
        self.last = last
        self.attempts = attempts


# One deployment's call: where it goes, what it carries, and the client's headers for a native call (else None).
# A plan can mix formats: a deployment that speaks the client's format natively is sent the client's own body, the
# others the canonical chat body. A plain tuple: a NamedTuple costs ~1 us more to build, on every attempt.
Outgoing = tuple[Endpoint, dict[str, Any], Mapping[str, str] | None]


# The call as one deployment should receive it (endpoint, model name, provider caching hints).
BodyFor = Callable[[DeploymentSpec], Outgoing]


class Dispatcher:
    def __init__(self, pool: UpstreamPool, health: HealthBook, max_attempts: int, budget_s: float,
                 timeout_s: float, tracer: Tracer | None = None) -> None:
        self._pool = pool
        self._timeout_s = timeout_s
        self._health = health
        self._max_attempts = max_attempts
        self._budget_s = budget_s
        self._tracer = tracer  # None: tracing off, no span work at all

    def retune(self, max_attempts: int, budget_s: float, timeout_s: float) -> None:
        """New bounds from a reloaded policy, for calls that start from now on."""
        self._max_attempts = max_attempts
        self._budget_s = budget_s
        self._timeout_s = timeout_s

    @contextlib.contextmanager
    def _attempt_span(self, dep: DeploymentSpec) -> Iterator[Span | None]:
        if self._tracer is None:
            yield None
            return
        attributes = {"tiergate.deployment": dep.id, "gen_ai.request.model": dep.upstream_model,
                      "tiergate.tier": dep.tier}
        with self._tracer.start_as_current_span(f"tiergate.upstream {dep.id}", kind=SpanKind.CLIENT,
                                                attributes=attributes, record_exception=False) as span:
            yield span

    def _plan(self, plan: tuple[DeploymentSpec, ...]) -> tuple[DeploymentSpec, ...]:
        return plan[: self._max_attempts]

    def _failed(self, dep: DeploymentSpec, exc: UpstreamError, started: float, attempts: list[Attempt],
                span: Span | None = None) -> None:
        elapsed = (time.perf_counter() - started) * 1000
        if span is not None:
            span.set_attribute("tiergate.attempt.outcome", exc.kind)
            span.set_status(Status(StatusCode.ERROR, exc.message[:200]))
        attempts.append(Attempt(dep.id, exc.kind, public_reason(exc), elapsed))
        log.warning("upstream attempt failed deployment=%s kind=%s detail=%s", dep.id, exc.kind, exc.message)
        if exc.retryable:
            self._health.failure(dep.id, exc.retry_after, exc.kind)

    async def _bounded(self, dep: DeploymentSpec, call: Awaitable[T]) -> T:
        """One deadline for every kind of upstream (HTTP clients enforce their own too; the in-process simulator
        and litellm's providers are held to the same bound here)."""
        timeout = dep.timeout_s or self._timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await call
        except TimeoutError:
            # This deadline can fire before the HTTP client's own (same length), so it names the URL for the log.
            raise UpstreamError("timeout", f"deployment {dep.id} at {dep.api_base or dep.provider} did not answer "
                                f"within {timeout:g}s") from None

    async def _tracked(self, dep: DeploymentSpec, stream: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        """The stream, counted as in flight on its deployment until it ends or is closed."""
        self._health.started(dep.id)
        try:
            async for payload in stream:
                yield payload
        finally:
            self._health.finished(dep.id)
            await stream.aclose()  # type: ignore[attr-defined]

    async def _first_success(
        self, plan: tuple[DeploymentSpec, ...], call: Callable[[DeploymentSpec], Awaitable[T]]
    ) -> tuple[DeploymentSpec, T, list[Attempt]]:
        """The attempt loop both paths share: ``call`` each deployment of the plan in order until one succeeds,
        within max_attempts and the retry budget; a non-retryable failure ends it at once."""
        attempts: list[Attempt] = []
        deadline = time.monotonic() + self._budget_s
        last: UpstreamError | None = None
        for dep in self._plan(plan):
            if attempts and time.monotonic() >= deadline:
                break
            started = time.perf_counter()
            with self._attempt_span(dep) as span:
                try:
                    result = await call(dep)
                except UpstreamError as exc:
                    self._failed(dep, exc, started, attempts, span)
                    last = exc
                    if not exc.retryable:
                        break
                    continue
            elapsed_ms = (time.perf_counter() - started) * 1000
            self._health.success(dep.id, elapsed_ms)
            attempts.append(Attempt(dep.id, "ok", "", elapsed_ms))
            return dep, result, attempts
        assert last is not None
        raise AllAttemptsFailed(last, attempts)

    async def send(
        self, plan: tuple[DeploymentSpec, ...], body_for: BodyFor
    ) -> tuple[DeploymentSpec, UpstreamReply, list[Attempt]]:
        async def call(dep: DeploymentSpec) -> UpstreamReply:
            self._health.started(dep.id)
            try:
                endpoint, body, headers = body_for(dep)
                client = self._pool.get(dep)
                # headers only when there are some: a plugin's client written before them takes two arguments
                sent = client.send(endpoint, body, headers) if headers else client.send(endpoint, body)
                return await self._bounded(dep, sent)
            finally:
                self._health.finished(dep.id)

        return await self._first_success(plan, call)

    async def open_stream(
        self, plan: tuple[DeploymentSpec, ...], body_for: BodyFor
    ) -> tuple[DeploymentSpec, bytes, AsyncGenerator[bytes, None], list[Attempt]]:
        """Returns the serving deployment, the first payload, the rest of the stream (``aclose`` cancels the
        upstream call) and the attempts."""

        async def call(dep: DeploymentSpec) -> tuple[bytes, AsyncGenerator[bytes, None]]:
            (endpoint, body, headers), client = body_for(dep), self._pool.get(dep)
            stream = self._tracked(dep, client.stream(endpoint, body, headers) if headers
                                   else client.stream(endpoint, body))
            try:
                return await self._bounded(dep, anext(stream)), stream
            except StopAsyncIteration:
                await stream.aclose()
                raise UpstreamError("server", f"deployment {dep.id} closed the stream without data") from None
            except UpstreamError:
                await stream.aclose()
                raise

        dep, (first, stream), attempts = await self._first_success(plan, call)
        return dep, first, stream, attempts
