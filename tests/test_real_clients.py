"""The real agent CLIs against the demo policy: Claude Code (``claude -p``, the Messages API) and Codex CLI
(``codex exec``, the Responses API), headless, each in a temp HOME, talking only to 127.0.0.1.

Both are pinned in tests/clients/package-lock.json and installed with ``npm ci --prefix tests/clients`` (scripts/
test.sh); missing binaries skip on a developer machine and fail under CI=true. Between each CLI and the proxy sits a
recording pass-through (``_Tap``: real HTTP both ways, nothing rewritten), so the test can check what the client
sent and was told: every request answered 200 (a field, header or item the proxy refuses shows up here first), a
Codex tool call and its output coming back on the next turn (namespace included when the model chose a namespaced
tool), and for every answer a ledger record with the answer's own id, api messages/responses, team research and
exactly the cost the stream told the client (``x_tiergate.cost_usd``). The CLIs' own usage totals equal the
ledger's tokens.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import DEMO_KEYS, ROOT, Process, free_port

BIN = ROOT / "tests" / "clients" / "node_modules" / ".bin"
ADMIN = {"Authorization": f"Bearer {DEMO_KEYS['admin']}"}
CLIENT_TIMEOUT_S = 240
# Neither CLI may reach anything but the proxy: no telemetry, update checks or error reporting.
QUIET_ENV = {"DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
             "DISABLE_ERROR_REPORTING": "1", "NO_PROXY": "127.0.0.1,localhost", "TZ": "UTC"}


def _binary(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        message = f"{path} is missing: run `npm ci --prefix tests/clients --no-audit --no-fund`"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: the real-client tests must run, not skip)")
        pytest.skip(message)
    return path


# ---- a recording pass-through between a CLI and the proxy ------------------------------------------------------


@dataclass
class Exchange:
    method: str
    path: str
    body: Any
    status: int
    headers: dict[str, str]
    text: str

    def events(self) -> list[dict[str, Any]]:
        """The SSE data payloads of a streamed answer, parsed."""
        out = []
        for line in self.text.splitlines():
            if line.startswith("data: ") and line[6:].strip() not in ("", "[DONE]"):
                out.append(json.loads(line[6:]))
        return out


@dataclass
class _Tap:
    upstream: str
    exchanges: list[Exchange] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        tap = self
        client = httpx.Client(timeout=180)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    chunks: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        chunk = self.rfile.read(size)
                        self.rfile.readline()
                        if size == 0:
                            return b"".join(chunks)
                        chunks.append(chunk)
                return self.rfile.read(int(self.headers.get("content-length") or 0))

            def _forward(self) -> None:
                raw = self._body()
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "transfer-encoding", "connection")}
                answer = client.request(self.command, tap.upstream + self.path, content=raw, headers=headers)
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                tap.exchanges.append(Exchange(self.command, self.path, body, answer.status_code,
                                              dict(answer.headers), answer.text))
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding",
                                           "date", "server"):
                        self.send_header(key, value)
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_DELETE = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def take(self) -> list[Exchange]:
        taken, self.exchanges = self.exchanges, []
        return taken


@pytest.fixture
def tap(demo_proxy: Process) -> Iterator[_Tap]:
    recorder = _Tap(demo_proxy.url)
    recorder.start()
    yield recorder
    recorder.stop()


def _run(args: list[str], home: Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), **QUIET_ENV, **env}
    return subprocess.run(args, check=False, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=CLIENT_TIMEOUT_S)


def _ledger(proxy: Process) -> dict[str, dict[str, Any]]:
    """Today's ledger records of team research, by the answer's id (the proxy flushes before it reads)."""
    response = httpx.get(proxy.url + "/v1/spend/requests", params={"team": "research", "order": "recent",
                                                                    "limit": 200, "hours": 1}, headers=ADMIN,
                         timeout=30)
    assert response.status_code == 200, response.text
    return {row["response_id"]: row for row in response.json()["requests"]}


def _check_billed(proxy: Process, answers: dict[str, Decimal], api: str) -> list[dict[str, Any]]:
    """Each answer (its id -> the cost its stream told the client) has its ledger record: the same id, ``api``,
    team research, that cost to the nano-dollar. Returns the records."""
    ledger = _ledger(proxy)
    records = []
    for answer_id, told in answers.items():
        record = ledger.get(answer_id)
        assert record is not None, f"no ledger record for {answer_id}; ledger has {sorted(ledger)}"
        assert (record["api"], record["team"], record["status"]) == (api, "research", 200)
        assert Decimal(record["cost_usd"]) == told > 0
        records.append(record)
    return records


def _refusals(exchanges: list[Exchange]) -> list[str]:
    return [f"{e.method} {e.path} -> {e.status}: {e.text[:500]}" for e in exchanges if e.status != 200]


# ---- Claude Code --------------------------------------------------------------------------------------------------


def _claude_turn(demo_proxy: Process, tap: _Tap, tmp_path: Path, *flags: str) -> list[Exchange]:
    """One ``claude -p`` run, checked end to end; returns its /v1/messages exchanges."""
    claude = _binary("claude")
    home = tmp_path / "home"
    home.mkdir()
    run = _run([str(claude), "-p", "List the files here, then say hello in five words.", "--output-format", "json",
                *flags], home, tmp_path,
               {"ANTHROPIC_BASE_URL": tap.url, "ANTHROPIC_AUTH_TOKEN": DEMO_KEYS["research"]})
    exchanges = tap.take()
    assert not _refusals(exchanges), _refusals(exchanges)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)
    assert (result["type"], result["subtype"], result["is_error"]) == ("result", "success", False)
    assert result["result"].strip()

    turns = [e for e in exchanges if e.path.split("?")[0] == "/v1/messages"]
    answers: dict[str, Decimal] = {}
    for exchange in turns:
        events = exchange.events()
        (start,) = [e for e in events if e["type"] == "message_start"]
        (delta,) = [e for e in events if e["type"] == "message_delta"]
        answers[start["message"]["id"]] = Decimal(delta["x_tiergate"]["cost_usd"])
    # A tool the simulated model calls may start one of Claude Code's sub-agents, whose requests are not turns of
    # this conversation (seen once: 4 requests, num_turns 2); modelUsage counts them, so the billing check below
    # still covers every request.
    assert len(answers) == len(turns) >= result["num_turns"], [e.path for e in exchanges]
    records = _check_billed(demo_proxy, answers, "messages")
    # What Claude Code counted (Anthropic's usage: input excludes cache reads and writes) is what was billed.
    counted = result["modelUsage"].values()
    assert sum(m["inputTokens"] + m["cacheReadInputTokens"] + m["cacheCreationInputTokens"] for m in counted) == \
        sum(r["prompt_tokens"] for r in records)
    assert sum(m["outputTokens"] for m in counted) == sum(r["completion_tokens"] for r in records)
    return turns


def test_claude_code_print_mode_completes_and_is_billed_as_the_ledger_says(demo_proxy: Process, tap: _Tap,
                                                                         tmp_path: Path) -> None:
    """Claude Code as installed: all its tools, its agent listing as a mid-conversation system message (the
    simulated model may call one of the tools first: every call of the turn is checked by _claude_turn)."""
    first, *_ = _claude_turn(demo_proxy, tap, tmp_path)
    assert any(m["role"] == "system" for m in first.body["messages"]) and len(first.body["tools"]) > 10


def test_claude_code_survives_a_tool_use_round_trip(demo_proxy: Process, tap: _Tap, tmp_path: Path) -> None:
    """With Glob its only tool (read-only: no permission prompt in print mode) the simulated model must call it;
    Claude Code runs it and sends the tool_result back, and the second answer ends the turn."""
    first, second = _claude_turn(demo_proxy, tap, tmp_path, "--tools", "Glob")
    (start,) = [e for e in first.events() if e["type"] == "content_block_start"]
    assert start["content_block"]["type"] == "tool_use" and start["content_block"]["name"] == "Glob"
    *_, called, answered = second.body["messages"]
    assert [(b["type"], b["id"]) for b in called["content"] if b["type"] == "tool_use"] == [
        ("tool_use", start["content_block"]["id"])]
    assert [b["tool_use_id"] for b in answered["content"] if b["type"] == "tool_result"] == [
        start["content_block"]["id"]]


# ---- Codex CLI ------------------------------------------------------------------------------------------------------


def _codex_home(tmp_path: Path, base_url: str) -> Path:
    home = tmp_path / "home"
    (home / ".codex").mkdir(parents=True)
    (home / ".codex" / "config.toml").write_text(f"""\
model = "gpt-5-codex"
model_provider = "tiergate"
check_for_update_on_startup = false

[analytics]
enabled = false

[model_providers.tiergate]
name = "tiergate"
base_url = "{base_url}/v1"
env_key = "TIERGATE_API_KEY"
wire_api = "responses"
""")
    return home


def _calls(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in items if i.get("type") in ("function_call", "custom_tool_call")]


def _codex_turn(codex: Path, tap: _Tap, proxy: Process, tmp_path: Path, prompt: str) -> list[dict[str, Any]]:
    """One ``codex exec`` run, checked end to end; returns the tool calls the model made."""
    home = _codex_home(tmp_path, tap.url)
    work = tmp_path / "work"
    work.mkdir()
    run = _run([str(codex), "exec", "--json", "--skip-git-repo-check", "-C", str(work), prompt], home, work,
               {"TIERGATE_API_KEY": DEMO_KEYS["research"]})
    exchanges = [e for e in tap.take() if e.path.startswith("/v1/")]
    assert not _refusals(exchanges), _refusals(exchanges)
    assert run.returncode == 0, run.stdout + run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    kinds = [e["type"] for e in events]
    assert "turn.completed" in kinds and "turn.failed" not in kinds, run.stdout
    assert any(e["type"] == "item.completed" and e["item"]["type"] == "agent_message" and e["item"]["text"].strip()
               for e in events), run.stdout

    turns = [e for e in exchanges if e.path == "/v1/responses"]
    answers: dict[str, Decimal] = {}
    outputs: list[list[dict[str, Any]]] = []
    for exchange in turns:
        # Codex always offers its hosted web_search: the research team's policy drops it and says so.
        assert exchange.headers.get("x-tiergate-dropped-tools") == "web_search"
        (done,) = [e for e in exchange.events() if e["type"] == "response.completed"]
        answers[done["response"]["id"]] = Decimal(done["response"]["x_tiergate"]["cost_usd"])
        outputs.append(done["response"]["output"])
    # The simulated model calls a tool when the user just spoke and answers in text after the tool's output: the
    # call (with its namespace, if any) and its output come back on the next turn, as Codex replays them.
    made = _calls(outputs[0])
    assert len(turns) >= 2 and made, [o for o in outputs]
    replayed = turns[1].body["input"]
    for call in made:
        (again,) = [i for i in _calls(replayed) if i["call_id"] == call["call_id"]]
        assert (again["name"], again.get("namespace")) == (call["name"], call.get("namespace"))
        assert any(i.get("type") in ("function_call_output", "custom_tool_call_output")
                   and i["call_id"] == call["call_id"] for i in replayed)

    records = _check_billed(proxy, answers, "responses")
    (usage,) = [e["usage"] for e in events if e["type"] == "turn.completed"]
    assert usage["input_tokens"] == sum(r["prompt_tokens"] for r in records)  # OpenAI's: cached included
    assert usage["cached_input_tokens"] == sum(r["cached_tokens"] for r in records)
    assert usage["output_tokens"] == sum(r["completion_tokens"] for r in records)
    return made


def test_codex_exec_survives_a_tool_call_round_trip_and_is_billed_as_the_ledger_says(
        demo_proxy: Process, tap: _Tap, tmp_path: Path) -> None:
    """Which of Codex's tools the simulated model calls depends on the prompt (its date and working directory
    included); a few prompts are tried until one calls a namespaced tool (multi_agent_v1's), each run checked in
    full. That the namespace comes back is also checked deterministically below."""
    codex = _binary("codex")
    called: list[dict[str, Any]] = []
    for attempt in range(3):
        run_dir = tmp_path / f"run{attempt}"
        run_dir.mkdir()
        called += _codex_turn(codex, tap, demo_proxy, run_dir, f"Task {attempt}: say hello in five words.")
        if any(call.get("namespace") for call in called):
            break
    assert called


def test_a_namespaced_tool_call_round_trip_through_the_openai_sdk(demo_proxy: Process) -> None:
    """Codex's namespace tool shape through the openai SDK on the chat-only demo tiers: with only namespaced tools
    offered, the model must call one, which comes back as the SDK's function_call with ``namespace``; its output
    sent back (with the call replayed, as Codex does with store=false) gets a text answer."""
    client = openai.OpenAI(base_url=demo_proxy.url + "/v1", api_key=DEMO_KEYS["research"], max_retries=0)
    namespace = {"type": "namespace", "name": "multi_agent_v1", "description": "Tools for sub-agents.",
                 "tools": [{"type": "function", "name": "spawn_agent", "description": "Start a sub-agent.",
                            "parameters": {"type": "object", "properties": {"message": {"type": "string"}},
                                           "required": ["message"], "additionalProperties": False}}]}
    first = client.responses.create(model="gpt-5-codex", input="Start a helper.", tools=[namespace],  # type: ignore[list-item]
                                    store=False)
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert (call.name, call.namespace) == ("spawn_agent", "multi_agent_v1")
    assert isinstance(json.loads(call.arguments)["message"], str)
    second = client.responses.create(
        model="gpt-5-codex", tools=[namespace], store=False,  # type: ignore[list-item]
        input=[{"type": "message", "role": "user", "content": "Start a helper."},
               call.model_dump(exclude_none=True),  # type: ignore[list-item]
               {"type": "function_call_output", "call_id": call.call_id, "output": "agent 7 started"}])
    assert second.output_text.strip() and not [i for i in second.output if i.type == "function_call"]


def test_codex_config_can_turn_its_web_search_off(tmp_path: Path) -> None:
    """The other way to run Codex on a team whose policy refuses hosted tools: ``web_search = "disabled"`` in its
    config.toml, and the request it sends carries no hosted tool (captured here, never answered)."""
    codex = _binary("codex")
    seen: list[dict[str, Any]] = []

    class Capture(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(400)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "captured", "type": "invalid_request_error"}}')

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", free_port()), Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        home = _codex_home(tmp_path, f"http://127.0.0.1:{server.server_address[1]}")
        config = home / ".codex" / "config.toml"
        config.write_text('web_search = "disabled"\n' + config.read_text())
        _run([str(codex), "exec", "--skip-git-repo-check", "-C", str(tmp_path), "hi"], home, tmp_path,
             {"TIERGATE_API_KEY": DEMO_KEYS["research"]})
    finally:
        server.shutdown()
        server.server_close()
    assert seen, "codex sent nothing"
    kinds = {tool["type"] for tool in seen[0]["tools"]}
    assert "web_search" not in kinds and "function" in kinds

