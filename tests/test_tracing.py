"""Traces: the proxy runs in this process (uvicorn in a thread) with an in-memory span exporter, against real
mock-upstream servers, and the span tree and GenAI attributes are asserted."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import free_port, mock_config
from tests.inprocess import serve_app
from tests.waiting import eventually

AUTH = {"authorization": "Bearer sk-test"}
EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def provider() -> None:
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        sdk = TracerProvider()
        trace.set_tracer_provider(sdk)
        current = sdk
    current.add_span_processor(SimpleSpanProcessor(EXPORTER))


@pytest.fixture
def inprocess_proxy(tmp_path: Path, start_mock) -> Iterator[str]:
    from proxy.app import create_app

    broken = start_mock("--fail-rate", "1", "--fail-kind", "500")
    healthy = start_mock()
    config = mock_config(tmp_path, {"small": [broken.url], "mid": [healthy.url]})
    port = free_port()
    server = serve_app(create_app(str(config)), port, tmp_path / "proxy.log")  # returns once started
    EXPORTER.clear()
    yield server.url
    server.stop()


def _spans_of(request_id: str) -> tuple[object, list]:
    """The request's root span and its children, once the root has ended (it ends after the response's last byte)."""
    def ended() -> tuple[object, list] | None:
        spans = EXPORTER.get_finished_spans()
        roots = [s for s in spans if s.attributes.get("tiergate.request_id") == request_id]
        if not roots:
            return None
        root = roots[0]
        return root, [s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id]

    return eventually(ended, f"the root span of {request_id}")


def test_routed_and_fallen_back_request_spans(inprocess_proxy: str) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}
    resp = httpx.post(inprocess_proxy + "/v1/chat/completions", json=body,
                      headers={**AUTH, "x-request-id": "trace-1"}, timeout=30)
    assert resp.status_code == 200
    root, children = _spans_of("trace-1")
    names = [s.name for s in children]
    assert root.name == "chat auto"
    for expected in ("tiergate.classify", "tiergate.route", "tiergate.metering"):
        assert expected in names
    attempts = [s for s in children if s.name.startswith("tiergate.upstream")]
    assert [a.name for a in attempts] == ["tiergate.upstream small-0", "tiergate.upstream mid-0"]
    assert attempts[0].status.status_code.name == "ERROR" and attempts[1].status.status_code.name == "UNSET"
    attrs = root.attributes
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == "auto"
    assert attrs["gen_ai.response.model"] == "gpt-4o" and attrs["tiergate.tier"] == "mid"
    assert attrs["gen_ai.usage.input_tokens"] == resp.json()["usage"]["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == resp.json()["usage"]["completion_tokens"]
    assert attrs["tiergate.cost_usd"] == resp.headers["x-tiergate-cost-usd"]
    assert attrs["tiergate.team"] == "t" and "tiergate.score" in attrs
    assert not any("hello" in str(v) for s in [root, *children] for v in s.attributes.values())  # no prompt text


def test_streamed_request_span_ends_with_usage(inprocess_proxy: str) -> None:
    body = {"model": "mid", "stream": True, "messages": [{"role": "user", "content": "stream please"}]}
    with httpx.stream("POST", inprocess_proxy + "/v1/chat/completions", json=body,
                      headers={**AUTH, "x-request-id": "trace-2"}, timeout=30) as resp:
        raw = resp.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    root, children = _spans_of("trace-2")
    assert root.attributes["gen_ai.usage.output_tokens"] > 0
    assert root.attributes["tiergate.usage_estimated"] is False
    assert "tiergate.metering" in [s.name for s in children]
    assert root.end_time >= max(s.end_time for s in children)


def test_close_exports_the_batched_spans_before_an_exit_that_runs_no_handlers() -> None:
    """A multi-worker server's workers end with os._exit (forked by multiprocessing's fork server): the SDK's own
    exit handler never runs there, so the provider built from the environment is flushed by Tracing.close."""
    import subprocess
    import sys

    script = ("import os\n"
              "from pipeline.telemetry import Tracing\n"
              "tracing = Tracing.configure()\n"
              "tracing.tracer.start_span('chat gpt-4o').end()\n"
              "tracing.close()\n"
              "os._exit(0)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OTEL_TRACES_EXPORTER": "console"})
    assert done.returncode == 0, done.stderr
    assert '"name": "chat gpt-4o"' in done.stdout
