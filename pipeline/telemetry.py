"""OpenTelemetry tracing, configured from the standard ``OTEL_*`` environment variables.

Spans follow the GenAI semantic conventions plus ``tiergate.*`` attributes; prompt text is never recorded.
With no exporter configured, ``Tracing.enabled`` is False and the request path skips span work entirely, so
tracing costs nothing when it is off.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from metering.money import format_usd
from metering.record import UsageRecord

_OPERATIONS = {"chat/completions": "chat", "completions": "text_completion", "embeddings": "embeddings"}


def _provider_from_env() -> trace.TracerProvider | None:
    """A TracerProvider for the configured exporter, or None when tracing is off."""
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if exporter_name in ("", "none") and not (endpoint and exporter_name != "none"):
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "tiergate")})
    provider = TracerProvider(resource=resource)
    if exporter_name == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # reads OTEL_EXPORTER_OTLP_* itself
    return provider


class Tracing:
    def __init__(self, tracer: trace.Tracer | None, owned: trace.TracerProvider | None = None) -> None:
        self.tracer = tracer
        self.enabled = tracer is not None
        self._owned = owned  # a provider built here from the environment, which ``close`` flushes

    def close(self) -> None:
        """Export the spans still batched. The SDK would do it at interpreter exit, but a multi-worker server's
        workers end with ``os._exit`` (forked by multiprocessing's fork server), which runs no exit handlers."""
        shutdown = getattr(self._owned, "shutdown", None)
        if shutdown is not None:
            shutdown()

    @classmethod
    def configure(cls) -> Tracing:
        """Use a provider already installed (tests, embedding apps), else build one from the environment."""
        current = trace.get_tracer_provider()
        if type(current).__name__ == "TracerProvider":  # an SDK provider someone installed
            return cls(current.get_tracer("tiergate"))
        provider = _provider_from_env()
        if provider is None:
            return cls(None)
        trace.set_tracer_provider(provider)
        return cls(provider.get_tracer("tiergate"), provider)

    def start_request(self, endpoint: str, body: dict[str, Any], request_id: str, team: str | None) -> Span | None:
        if self.tracer is None:
            return None
        operation = _OPERATIONS.get(endpoint, endpoint)
        span = self.tracer.start_span(f"{operation} {body.get('model', '')}", kind=SpanKind.SERVER)
        span.set_attribute("gen_ai.operation.name", operation)
        span.set_attribute("gen_ai.request.model", str(body.get("model", "")))
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if isinstance(limit, int):
            span.set_attribute("gen_ai.request.max_tokens", limit)
        span.set_attribute("tiergate.request_id", request_id)
        if team:
            span.set_attribute("tiergate.team", team)
        return span

    @contextlib.contextmanager
    def active(self, span: Span | None) -> Iterator[None]:
        """Make ``span`` the parent of spans started inside (same task)."""
        if span is None:
            yield
            return
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield
        finally:
            otel_context.detach(token)

    @contextlib.contextmanager
    def span(self, name: str, parent: Span | None = None, **attributes: Any) -> Iterator[Span | None]:
        """A child span; with ``parent`` given it works outside the request's task (stream settlement)."""
        if self.tracer is None:
            yield None
            return
        ctx = trace.set_span_in_context(parent) if parent is not None else None
        with self.tracer.start_as_current_span(name, context=ctx, attributes=attributes) as span:
            yield span


def finish_request(span: Span | None, record: UsageRecord | None, provider: str | None = None,
                   error: BaseException | None = None, failed: bool = False) -> None:
    """Copy the outcome onto the request span and end it; ``failed``: the record is of a request not served
    in full (its status says how, in the ingress's terms)."""
    if span is None:
        return
    if record is not None:
        attrs: dict[str, Any] = {
            "gen_ai.response.model": record.model,
            "gen_ai.usage.input_tokens": record.prompt_tokens,
            "gen_ai.usage.output_tokens": record.completion_tokens,
            "tiergate.tier": record.tier,
            "tiergate.deployment": record.deployment,
            "tiergate.cost_usd": format_usd(record.cost_nanos),
            "tiergate.savings_usd": format_usd(record.counterfactual_cost_nanos - record.cost_nanos),
            "tiergate.cached_tokens": record.cached_tokens,
            "tiergate.usage_estimated": record.usage_estimated,
            "http.response.status_code": record.status,
        }
        if provider:
            attrs["gen_ai.system"] = provider
            attrs["gen_ai.provider.name"] = provider
        if record.score is not None:
            attrs["tiergate.score"] = record.score
        span.set_attributes(attrs)
        if failed:
            span.set_status(Status(StatusCode.ERROR, record.error or str(record.status)))
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end()
