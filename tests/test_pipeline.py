"""The pipeline without HTTP (issue 13, item 1): requests go straight into ``Pipeline.run`` with real parts under it
(the dispatcher over in-process simulator deployments, or a real loopback HTTP upstream; ``metering.service.Meter``
over an in-process budget store and a temporary SQLite ledger; the in-process cache). Each test reads what the
result value says and what the ledger recorded.

Also: ``pipeline/`` imports no web framework and holds no HTTP status or header name.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kvcache.store import MemoryCache
from metering.record import UsageRecord
from metering.service import Meter
from pipeline.budget import BudgetPolicies
from pipeline.errors import TiergateError
from pipeline.pipeline import Pipeline
from pipeline.request import Request
from pipeline.result import Served, Streaming
from pipeline.routing import Routing
from pipeline.telemetry import Tracing
from pipeline.upstream_call import apply_max_tokens
from proxy.errors import status_of
from router.config_loader import parse_policy
from router.decide import Decision
from router.features import chat_features
from router.policy import Policy
from router.scoring import LengthScorer
from upstream.dispatch import Dispatcher
from upstream.health import HealthBook
from upstream.pool import UpstreamPool

ROOT = Path(__file__).resolve().parent.parent
KEY = hashlib.sha256(b"sk-t").hexdigest()
ADMIN = hashlib.sha256(b"sk-admin").hexdigest()
HELLO = [{"role": "user", "content": "Say hello."}]


def policy_text(team: str = "", small: str = "model: simulated/gpt-4o-mini", mid: str = "model: simulated/gpt-4o"
                ) -> str:
    return f"""\
server: {{cooldown_after_failures: 1000}}
tiers:
  - name: small
    deployments:
      - id: small-0
        {small}
  - name: mid
    deployments:
      - id: mid-0
        {mid}
admin_keys:
  - {{id: ops, sha256: '{ADMIN}'}}
teams:
  t:
    keys:
      - {{id: k, sha256: '{KEY}'}}
{team}"""


class Harness:
    """A pipeline over ``policy``; ``records`` are the ones it settled, ``ledger`` reads the SQLite file."""

    def __init__(self, policy: Policy, meter: Meter, db: Path) -> None:
        server = policy.config.server
        self.policy = policy
        self.pool = UpstreamPool(server.upstream_timeout_s, server.connect_timeout_s)
        health = HealthBook(failures_to_cooldown=server.cooldown_after_failures, cooldown_s=server.cooldown_s)
        tracing = Tracing(None)
        dispatcher = Dispatcher(self.pool, health, server.max_attempts, server.retry_budget_s,
                                server.upstream_timeout_s)
        self.meter = meter
        self.records: list[UsageRecord] = []
        self.pipeline = Pipeline(dispatcher, Routing(LengthScorer(), health, tracing), meter, BudgetPolicies(),
                                 MemoryCache(), tracing, lambda record, *held: self.records.append(record), status_of)
        self._db = db

    def request(self, body: dict[str, Any], kind: str = "chat/completions", key: str = KEY,
                tags: dict[str, str] | None = None, request_id: str = "r1") -> Request:
        return Request(kind=kind, body=body, principal=self.policy.keys[key], policy=self.policy,  # type: ignore
                       request_id=request_id, tags=tags or {})

    async def ledger(self) -> list[tuple[str, int, str, int]]:
        await self.pipeline.drain()
        await self.meter.ledger.flush()
        with sqlite3.connect(self._db) as conn:
            return conn.execute("SELECT request_id, status, deployment, cost_nanos FROM records "
                                "ORDER BY request_id").fetchall()


@asynccontextmanager
async def harness(tmp_path: Path, text: str, redis_url: str | None = None) -> AsyncIterator[Harness]:
    db = tmp_path / "ledger.db"
    meter = await Meter.open(f"sqlite:///{db}", redis_url, spool_dir=tmp_path / "spool")
    h = Harness(parse_policy(text), meter, db)
    try:
        yield h
    finally:
        await h.pipeline.drain()
        await h.pool.close()
        await meter.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---- served, streamed, cached ---------------------------------------------------------------------------------------

def test_a_served_request_says_what_happened_and_is_recorded_once(tmp_path: Path) -> None:
    async def go() -> None:
        async with harness(tmp_path, policy_text("    max_tokens: {default: 50}\n")) as h:
            result = await h.pipeline.run(h.request({"model": "auto", "messages": HELLO}))
            assert isinstance(result, Served)
            notes = result.notes
            assert (notes.tier, notes.deployment, notes.model) == ("small", "small-0", "gpt-4o-mini")
            assert notes.score is not None and notes.attempts == 1 and not notes.cache_hit
            assert (notes.max_tokens, notes.max_tokens_note) == (50, "default")
            assert result.body["choices"][0]["message"]["content"]
            [record] = h.records
            assert notes.cost_nanos == record.cost_nanos > 0
            assert await h.ledger() == [("r1", 200, "small-0", record.cost_nanos)]
    run(go())


def test_a_stream_meters_what_it_relayed(tmp_path: Path) -> None:
    async def go() -> None:
        async with harness(tmp_path, policy_text()) as h:
            result = await h.pipeline.run(h.request({"model": "mid", "messages": HELLO, "stream": True}))
            assert isinstance(result, Streaming) and result.notes.cost_nanos is None
            payloads = [p async for p in result.relay.payloads()]
            assert payloads and result.relay.error is None
            [record] = h.records
            assert result.relay.cost_nanos == record.cost_nanos > 0 and record.completion_tokens > 0
            assert await h.ledger() == [("r1", 200, "mid-0", record.cost_nanos)]
    run(go())


def test_the_response_cache_answers_a_repeat_at_no_cost(tmp_path: Path) -> None:
    team = "    context: {response_cache: true}\n"
    body = {"model": "small", "messages": HELLO, "temperature": 0}

    async def go() -> None:
        async with harness(tmp_path, policy_text(team)) as h:
            first = await h.pipeline.run(h.request(body, request_id="r1"))
            second = await h.pipeline.run(h.request(body, request_id="r2"))
            assert isinstance(first, Served) and isinstance(second, Served)
            assert not first.notes.cache_hit and second.notes.cache_hit
            assert second.notes.cost_nanos == 0 and second.body == first.body
            assert [r[:3] for r in await h.ledger()] == [("r1", 200, "small-0"), ("r2", 200, "response-cache")]
    run(go())


# ---- refusals -------------------------------------------------------------------------------------------------------

def test_refusals_carry_their_codes_and_write_no_record(tmp_path: Path) -> None:
    async def go() -> None:
        async with harness(tmp_path, policy_text("    required_tags: [owner]\n")) as h:
            cases = [
                (h.request({"model": "claude-9", "messages": HELLO}, tags={"owner": "a"}),
                 "routing_refused.model_not_found"),
                (h.request({"model": "auto", "messages": HELLO}, key=ADMIN), "team_key_required"),
                (h.request({"model": "auto", "messages": HELLO}), "invalid_request.missing_tags"),
            ]
            for request, code in cases:
                with pytest.raises(TiergateError) as refused:
                    await h.pipeline.run(request)
                assert refused.value.code == code
            assert h.records == [] and await h.ledger() == []
    run(go())


def test_over_budget_is_refused_and_recorded(tmp_path: Path) -> None:
    team = "    budgets: {team: {daily_usd: '0.0000001'}}\n"

    async def go() -> None:
        async with harness(tmp_path, policy_text(team)) as h:
            with pytest.raises(TiergateError) as refused:
                await h.pipeline.run(h.request({"model": "mid", "messages": HELLO}))
            assert refused.value.code == "budget_exceeded"
            assert await h.ledger() == [("r1", 429, "", 0)]
    run(go())


def test_over_budget_with_downgrade_is_served_by_the_floor(tmp_path: Path) -> None:
    team = "    budgets: {team: {daily_usd: '0.0000001'}, on_exceeded: downgrade}\n"

    async def go() -> None:
        async with harness(tmp_path, policy_text(team)) as h:
            result = await h.pipeline.run(h.request({"model": "mid", "messages": HELLO}))
            assert isinstance(result, Served)
            assert result.notes.budget_downgraded and result.notes.tier == "small"
            assert [r[:3] for r in await h.ledger()] == [("r1", 200, "small-0")]
    run(go())


def test_a_budget_store_that_is_down_is_a_generic_refusal_for_a_fail_closed_team(tmp_path: Path) -> None:
    """The store's error names its address; the client's message does not (issue 13, fix c)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once the socket is closed
    team = "    budgets: {team: {daily_usd: '10'}, redis_failure: closed}\n"

    async def go() -> None:
        async with harness(tmp_path, policy_text(team), redis_url=f"redis://127.0.0.1:{port}/0") as h:
            with pytest.raises(TiergateError) as refused:
                await h.pipeline.run(h.request({"model": "small", "messages": HELLO}))
            assert refused.value.code == "budget_store_unavailable"
            assert "'t'" in refused.value.message and "redis_failure" in refused.value.message
            assert str(port) not in refused.value.message and "127.0.0.1" not in refused.value.message
    run(go())


# ---- upstream failures --------------------------------------------------------------------------------------------

def test_a_failed_upstream_is_an_upstream_failed_error_with_its_record(tmp_path: Path) -> None:
    failing = "model: simulated/gpt-4o-mini\n        simulator: {fail_rate: 1.0, fail_kind: '500'}"

    async def go() -> None:
        async with harness(tmp_path, policy_text(small=failing)) as h:
            with pytest.raises(TiergateError) as failed:
                await h.pipeline.run(h.request({"model": "gpt-4o-mini", "messages": HELLO}))
            assert failed.value.code == "upstream_failed.error"
            assert failed.value.message == "upstream failed (small-0 answered 5xx)"
            assert await h.ledger() == [("r1", 502, "small-0", 0)]
    run(go())


def test_a_fallback_serves_and_counts_its_attempts(tmp_path: Path) -> None:
    failing = "model: simulated/gpt-4o-mini\n        simulator: {fail_rate: 1.0, fail_kind: '500'}"
    team = "    routing: {allow_downgrade_on_failure: false}\n"

    async def go() -> None:
        async with harness(tmp_path, policy_text(team, small=failing)) as h:
            result = await h.pipeline.run(h.request({"model": "small", "messages": HELLO}))
            assert isinstance(result, Served)
            assert (result.notes.deployment, result.notes.tier, result.notes.attempts) == ("mid-0", "mid", 2)
    run(go())


@asynccontextmanager
async def answering(payload: bytes) -> AsyncIterator[str]:
    """A real HTTP upstream on loopback that answers every call with 200 and ``payload``."""
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=payload, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("payload", [b"[]", b'"text"', b'{"choices": 5}', b'{"choices": [7]}'])
def test_a_200_that_is_not_a_completion_is_a_502_with_its_record(tmp_path: Path, payload: bytes) -> None:
    """Was: ``usage_of`` raised outside the call's error handling: a 500, no record, an unsettled hold (fix a)."""
    team = "    budgets: {team: {daily_usd: '10'}}\n"

    async def go() -> None:
        async with answering(payload) as url:
            text = policy_text(team, small=f"model: openai/gpt-4o-mini\n        api_base: {url}")
            async with harness(tmp_path, text) as h:
                with pytest.raises(TiergateError) as failed:  # pinned to small-0's model: no fallback
                    await h.pipeline.run(h.request({"model": "gpt-4o-mini", "messages": HELLO}))
                assert failed.value.code == "upstream_failed.error"
                assert failed.value.message == "upstream failed (small-0 sent an unusable answer)"
                assert await h.ledger() == [("r1", 502, "small-0", 0)]
                states = await h.meter.budget_states("t", BudgetPolicies().of(h.policy)["t"])
                assert [s.reserved_nanos for s in states] == [0]  # the hold was settled
    run(go())


# ---- the upstream body --------------------------------------------------------------------------------------------

def _decision(max_tokens: int, note: str | None) -> Decision:
    policy = parse_policy(policy_text())
    body = {"model": "small", "messages": HELLO}
    request = Request(kind="chat/completions", body=body, principal=policy.keys[KEY], policy=policy, request_id="r",
                      tags={})
    routing = Routing(LengthScorer(), HealthBook(), Tracing(None))
    decision = routing.decide(request, policy.teams["t"], chat_features(body), "small", None)
    return replace(decision, max_tokens=max_tokens, max_tokens_note=note)


def test_a_clamped_limit_reaches_every_limit_field_the_client_sent() -> None:
    """Was: only ``max_completion_tokens`` was clamped when both were sent (fix b)."""
    clamped = _decision(100, "clamped")
    assert apply_max_tokens({"max_tokens": 900, "max_completion_tokens": 800}, clamped) == {
        "max_tokens": 100, "max_completion_tokens": 100}
    assert apply_max_tokens({"max_completion_tokens": 800}, clamped) == {"max_completion_tokens": 100}
    assert apply_max_tokens({}, _decision(50, "default")) == {"max_tokens": 50}
    untouched = {"max_tokens": 20}
    assert apply_max_tokens(untouched, _decision(20, None)) is untouched


# ---- the package's shape ------------------------------------------------------------------------------------------

def _pipeline_sources() -> list[Path]:
    return sorted((ROOT / "pipeline").glob("*.py"))


def test_pipeline_imports_no_web_framework() -> None:
    names = {name for path in _pipeline_sources() for node in ast.walk(ast.parse(path.read_text()))
             for name in ([a.name for a in node.names] if isinstance(node, ast.Import)
                          else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])}
    assert not {n for n in names if n.split(".")[0] in ("starlette", "proxy", "uvicorn", "httpx", "fastapi")}
    # and nothing it imports brings one in
    code = ("import sys, pipeline.pipeline; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'proxy', 'uvicorn')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pipeline_holds_no_http_status_or_header_name() -> None:
    found = []
    for path in _pipeline_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Constant):
                continue
            if type(node.value) is int and 100 <= node.value <= 599:
                found.append(f"{path.name}:{node.lineno} {node.value}")
            if isinstance(node.value, str) and (node.value.lower().startswith(("x-tiergate-", "x-should-", "retry-"))
                                                or node.value.lower() in ("content-type", "cache-control")):
                found.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert found == []
