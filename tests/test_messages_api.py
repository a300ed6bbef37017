"""The official anthropic SDK, unchanged, against a running proxy (real processes, real HTTP, the in-process
simulator as the far end): ``/v1/messages`` plain and streamed, tools, count_tokens, errors as the SDK's exception
classes, a Claude-Code-shaped request, and the ledger agreeing with what the client was shown."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.anthropic_sdk import GROUP, anthropic
from tests.conftest import Server, free_port, start_server
from tests.helpers_simulator import MockServer
from tests.proxy_metering_helpers import sqlite_records, usd
from tests.waiting import eventually

pytestmark = GROUP  # tests.anthropic_sdk: one worker imports the SDK

KEY, TIGHT_KEY = "sk-messages-cc", "sk-messages-tight"
SONNET, HAIKU = "claude-sonnet-4-6", "claude-haiku-4-5-20251001"
BILLING = "x-anthropic-billing-header: cc_version=2.1.37.{}; cc_entrypoint=cli; cch={};"
# Long enough (> 1,024 tokens) for provider prompt caching, and for the simulator's prefix cache.
CLAUDE_CODE_PROMPT = ("You are an interactive CLI tool that helps users with software engineering tasks. "
                      + " ".join(f"Rule {i}: keep answers short, cite file paths, run the tests." for i in range(120)))
TOOLS = [{"name": "get_weather", "description": "Current weather of a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _config(directory: Path) -> Path:
    """The demo ladder, with three deployments on the small tier (prefix affinity has a choice to make), a team
    that aliases Claude's names, and a team whose budget is too small for any request."""
    sim = "simulator: {ttft_ms: 5, tokens_per_s: 2000}"
    text = f"""
metering:
  ledger: sqlite:///{directory}/ledger.db
classifier:
  model: default
tiers:
  - name: small
    deployments:
      - {{id: small-a, model: simulated/gpt-4o-mini, {sim}}}
      - {{id: small-b, model: simulated/gpt-4o-mini, {sim}}}
      - {{id: small-c, model: simulated/gpt-4o-mini, {sim}}}
  - name: mid
    deployments:
      - {{id: mid-sim, model: simulated/gpt-4o, {sim}}}
  - name: frontier
    deployments:
      - {{id: frontier-sim, model: simulated/o1, {sim}}}
teams:
  cc:
    keys:
      - {{id: cc-key, sha256: {_sha(KEY)}}}
    routing:
      thresholds: {{mid: 0.321, frontier: 0.416}}
    max_tokens: {{cap: 2048, on_exceed: clamp}}
    model_aliases:
      "claude-haiku-*": small
      "claude-sonnet-*": auto
      "claude-opus-*": frontier
  tight:
    keys:
      - {{id: tight-key, sha256: {_sha(TIGHT_KEY)}}}
    budgets:
      team: {{daily_usd: "0.000001"}}
    model_aliases:
      "claude-*": small
"""
    path = directory / "messages.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("messages")
    port = free_port()
    process = start_server(["serve", "--config", str(_config(directory)), "--port", str(port)], port,
                            directory / "proxy.log", "/readyz")
    process.db = directory / "ledger.db"  # type: ignore[attr-defined]
    yield process
    process.stop()


@pytest.fixture
def client(proxy: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key=KEY, max_retries=0)


def ledger_row(proxy: Server, request_id: str, team: str = "cc") -> dict[str, Any]:
    """The request's ledger record, once the writer has committed it (records are written in batches)."""
    def rows() -> list[dict[str, Any]]:
        return [r for r in sqlite_records(proxy.db, team) if r["request_id"] == request_id]  # type: ignore[attr-defined]

    found = eventually(rows, f"the ledger record of {request_id}")
    assert len(found) == 1
    return found[0]


def assert_usage_is_billed(usage: Any, row: dict[str, Any]) -> None:
    """What the client was shown is what the ledger bills: Anthropic's input excludes cache reads and writes."""
    assert row["prompt_tokens"] == (usage.input_tokens + (usage.cache_read_input_tokens or 0)
                                    + (usage.cache_creation_input_tokens or 0))
    assert row["cached_tokens"] == (usage.cache_read_input_tokens or 0)
    assert row["cache_write_tokens"] == (usage.cache_creation_input_tokens or 0)
    assert row["completion_tokens"] == usage.output_tokens
    assert not row["usage_estimated"]


def test_create_routes_an_aliased_model_and_the_ledger_matches(client: anthropic.Anthropic, proxy: Server) -> None:
    raw = client.messages.with_raw_response.create(
        model=SONNET, max_tokens=64, system="You are terse.",
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    message = raw.parse()
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert raw.headers["x-tiergate-tier"] in ("small", "mid", "frontier")
    assert float(raw.headers["x-tiergate-score"]) >= 0  # claude-sonnet-* -> auto: scored like auto
    row = ledger_row(proxy, raw.headers["x-request-id"])
    assert_usage_is_billed(message.usage, row)
    assert usd(raw.headers["x-tiergate-cost-usd"]) * 10**9 == row["cost_nanos"]
    assert row["api"] == "messages" and row["requested_model"] == SONNET
    assert row["response_id"] == message.id  # the id the client quotes finds the record
    assert message._request_id == raw.headers["x-request-id"]  # Anthropic's request-id header, as the SDK reads it


def test_stream_helpers_and_the_ledger(client: anthropic.Anthropic, proxy: Server) -> None:
    with client.messages.stream(model=HAIKU, max_tokens=80,
                                messages=[{"role": "user", "content": "Tell me a short story."}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
        assert stream.response.headers["x-tiergate-tier"] == "small"  # claude-haiku-* -> small
    assert text and final.content[0].text == text
    assert final.id.startswith("msg_") and final.stop_reason in ("end_turn", "max_tokens")
    row = ledger_row(proxy, request_id)
    assert_usage_is_billed(final.usage, row)  # message_delta's exact counts replaced message_start's estimate
    assert row["response_id"] == final.id


def test_raw_stream_events_carry_the_cost(client: anthropic.Anthropic, proxy: Server) -> None:
    response = client.messages.with_raw_response.create(
        model=HAIKU, max_tokens=30, stream=True, messages=[{"role": "user", "content": "Count to five."}])
    events = list(response.parse())
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert "content_block_start" in kinds and "content_block_delta" in kinds and "content_block_stop" in kinds
    start, delta = events[0], events[-2]
    assert start.message.usage.input_tokens > 0  # the estimate, before the upstream's usage arrives
    cost = delta.model_extra["x_tiergate"]["cost_usd"]
    row = ledger_row(proxy, response.headers["x-request-id"])
    assert usd(cost) * 10**9 == row["cost_nanos"]
    assert delta.usage.output_tokens == row["completion_tokens"]
    assert delta.usage.input_tokens + delta.usage.cache_read_input_tokens == row["prompt_tokens"]


def test_tool_use_round_trip(client: anthropic.Anthropic) -> None:
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = client.messages.create(model=HAIKU, max_tokens=200, tools=TOOLS, tool_choice={"type": "any"},
                                   messages=[question])
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict) and "city" in call.input
    second = client.messages.create(model=HAIKU, max_tokens=200, tools=TOOLS, messages=[
        question, {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C, sunny"}]}])
    assert second.stop_reason in ("end_turn", "max_tokens")  # after a tool result the model answers in text
    assert second.content[0].type == "text" and second.content[0].text
    with client.messages.stream(model=HAIKU, max_tokens=200, tools=TOOLS, tool_choice={"type": "tool",
                                "name": "get_weather"}, messages=[question]) as stream:
        streamed = stream.get_final_message()
    block = next(b for b in streamed.content if b.type == "tool_use")
    assert block.name == "get_weather" and "city" in block.input and streamed.stop_reason == "tool_use"


def test_count_tokens(client: anthropic.Anthropic) -> None:
    short = client.messages.count_tokens(model=SONNET, messages=[{"role": "user", "content": "hello"}])
    longer = client.messages.count_tokens(model=SONNET, system=CLAUDE_CODE_PROMPT, tools=TOOLS,
                                          messages=[{"role": "user", "content": "hello"}])
    assert 0 < short.input_tokens < 20 and longer.input_tokens > 1000


def test_errors_are_the_sdk_exception_classes(client: anthropic.Anthropic, proxy: Server) -> None:
    with pytest.raises(anthropic.BadRequestError) as missing:  # the SDK checks max_tokens itself: post the body
        client.post("/v1/messages", cast_to=httpx.Response,
                    body={"model": SONNET, "messages": [{"role": "user", "content": "hi"}]})
    assert missing.value.body["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}
    with pytest.raises(anthropic.BadRequestError) as bad_block:
        client.messages.create(model=SONNET, max_tokens=5, messages=[{"role": "user", "content": [{"type": "video"}]}])
    assert "messages.0.content.0.type" in str(bad_block.value)
    malformed = httpx.post(proxy.url + "/v1/messages", content=b'{"model": ', headers={"x-api-key": KEY})
    assert malformed.status_code == 400 and malformed.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.create(model="gemini-2.5-pro", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.body["error"]["type"] == "not_found_error"
    assert "claude-sonnet-*" in unknown.value.body["error"]["message"]  # names the aliases it could have matched
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=proxy.url, api_key="sk-wrong", max_retries=0).messages.create(
            model=SONNET, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    missing_key = httpx.post(proxy.url + "/v1/messages", json={"model": SONNET, "max_tokens": 5, "messages": []})
    assert missing_key.status_code == 401 and missing_key.json()["error"]["type"] == "authentication_error"
    tight = anthropic.Anthropic(base_url=proxy.url, api_key=TIGHT_KEY, max_retries=2)
    started = time.monotonic()
    with pytest.raises(anthropic.RateLimitError) as over:
        tight.messages.create(model=HAIKU, max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    assert over.value.response.headers["x-should-retry"] == "false"  # a spent budget: the SDK does not retry
    assert time.monotonic() - started < 2


def claude_code_client(proxy: Server, session: str) -> anthropic.Anthropic:
    """The headers Claude Code sends (its key as x-api-key, its version and betas, its session id)."""
    return anthropic.Anthropic(base_url=proxy.url, api_key=KEY, max_retries=0, default_headers={
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,prompt-caching-scope-2026-01-05",
        "user-agent": "claude-cli/2.1.37 (external, cli)", "x-app": "cli",
        "X-Claude-Code-Session-Id": session, "anthropic-dangerous-direct-browser-access": "true"})


def claude_code_system(suffix: str, cch: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": BILLING.format(suffix, cch)},
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": CLAUDE_CODE_PROMPT, "cache_control": {"type": "ephemeral"}}]


def test_claude_code_shaped_requests(proxy: Server) -> None:
    cc = claude_code_client(proxy, "0b6c2f43-6f0b-4bd6-9d1c-1f5b8c3f6a10")
    # the quota probe Claude Code sends at start-up: max_tokens=1 on its small model, served cheaply
    probe = cc.messages.with_raw_response.create(model=HAIKU, max_tokens=1, messages=[
        {"role": "user", "content": "quota"}], metadata={"user_id": "user_" + "a" * 64 + "_account__session_x"},
        extra_query={"beta": "true"})
    message = probe.parse()
    assert message.usage.output_tokens <= 1 and message.stop_reason in ("max_tokens", "end_turn")
    assert probe.headers["x-tiergate-tier"] == "small" and "x-tiergate-score" not in probe.headers  # not scored
    assert usd(probe.headers["x-tiergate-cost-usd"]) < usd("0.0001")
    # a main-loop turn: system blocks with the attribution line and cache_control, tools, thinking, a stream;
    # its 32,000 max_tokens is clamped to the team's cap
    with cc.beta.messages.stream(
            model=SONNET, max_tokens=32000, system=claude_code_system("0d9", "fa690"), tools=TOOLS,
            thinking={"type": "enabled", "budget_tokens": 1024}, betas=["claude-code-20250219"],
            messages=[{"role": "user", "content": [{"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                                                   {"type": "text", "text": "Summarise the repository layout."}]}],
            metadata={"user_id": "user_" + "b" * 64}) as stream:
        final = stream.get_final_message()
        headers = stream.response.headers
    assert final.id.startswith("msg_") and final.content
    assert headers["x-tiergate-max-tokens"] == "2048;clamped"
    row = ledger_row(proxy, headers["x-request-id"])
    assert row["requested_model"] == SONNET and row["api"] == "messages"
    assert_usage_is_billed(final.usage, row)


def test_attribution_line_does_not_defeat_cache_affinity(proxy: Server) -> None:
    """Eight Claude Code sessions, each request with its own attribution line (cch differs per request), the same
    system prompt otherwise: all land on one deployment of the three, and every request after the first reads
    the prompt from that deployment's prefix cache. Control: the same prompts with an unknown first line that
    varies likewise scatter across deployments and never hit a cache."""
    deployments, cached = [], []
    for i in range(8):
        cc = claude_code_client(proxy, f"session-{i}")
        raw = cc.messages.with_raw_response.create(
            model=HAIKU, max_tokens=8, system=claude_code_system(f"{i:03x}", f"{i:05x}"),
            messages=[{"role": "user", "content": f"Question {i}: what does this repository do?"}])
        deployments.append(raw.headers["x-tiergate-deployment"])
        cached.append(raw.parse().usage.cache_read_input_tokens)
    print("attribution lines stripped: deployments", deployments, "cache reads", cached)
    assert len(set(deployments)) == 1
    assert cached[0] == 0 and all(n > 1000 for n in cached[1:])
    control_deployments, control_cached = [], []
    for i in range(8):
        cc = claude_code_client(proxy, f"control-{i}")
        system = [{"type": "text", "text": f"x-other-header: nonce={i:05x};"}, *claude_code_system("0", "0")[1:]]
        raw = cc.messages.with_raw_response.create(
            model=HAIKU, max_tokens=8, system=system,
            messages=[{"role": "user", "content": f"Question {i}: what does this repository do?"}])
        control_deployments.append(raw.headers["x-tiergate-deployment"])
        control_cached.append(raw.parse().usage.cache_read_input_tokens)
    print("control: deployments", control_deployments, "cache reads", control_cached)
    assert len(set(control_deployments)) > 1 and not any(control_cached)


def test_stream_cut_ends_with_an_error_event(tmp_path: Path, start_proxy: Callable[..., Server]) -> None:
    # a process, killed mid-stream below (``python -m simulator``: the mock without the CLI's imports)
    upstream = MockServer("--tokens-per-s", "20", process=True).wait_ready()
    config = tmp_path / "cut.yaml"
    config.write_text(f"""
metering:
  ledger: sqlite:///{tmp_path}/ledger.db
classifier:
  model: length
tiers:
  - name: small
    deployments:
      - {{id: small-0, model: openai/gpt-4o-mini, api_base: {upstream.url}}}
teams:
  t:
    keys:
      - {{id: t-key, sha256: {_sha(KEY)}}}
""")
    try:
        proxy = start_proxy(config)
        client = anthropic.Anthropic(base_url=proxy.url, api_key=KEY, max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as cut, client.messages.stream(
                model="small", max_tokens=400, messages=[{"role": "user", "content": "Write a long essay."}]) as stream:
            for n, _ in enumerate(stream.text_stream):
                if n == 1:
                    assert upstream.process is not None
                    upstream.process.kill()  # the upstream dies mid-stream
                    upstream.process.wait()
    finally:
        upstream.stop()
    assert cut.value.body == {"type": "error", "error": {
        "type": "api_error", "message": "upstream stream from deployment small-0 ended early: connection failed"}}
