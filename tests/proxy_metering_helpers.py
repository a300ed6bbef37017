"""Helpers shared by the end-to-end metering and budget tests (real proxy + mock-upstream processes).

Configs are built as data and dumped to YAML, with a unique team name per test (Redis budget counters and
PostgreSQL rows outlive a test run, so names must never repeat).
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

ROOT = Path(__file__).resolve().parent.parent

# gpt-4o-mini in litellm's table, $ per token (the hand-computed reference prices).
MILLION = Decimal(1_000_000)
MINI_INPUT = Decimal("0.15") / MILLION
MINI_CACHED = Decimal("0.075") / MILLION
MINI_OUTPUT = Decimal("0.60") / MILLION
NANO = Decimal("0.000000001")

ADMIN_KEY = "sk-admin-" + uuid.uuid4().hex[:8]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@dataclass
class TeamSpec:
    name: str
    key: str
    budgets: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}


def new_team(prefix: str = "team", budgets: dict[str, Any] | None = None, **extra: Any) -> TeamSpec:
    name = unique(prefix)
    return TeamSpec(name=name, key="sk-" + uuid.uuid4().hex, budgets=budgets, extra=extra or None)


ADMIN_AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}


def write_config(path: Path, tiers: dict[str, list[str]], teams: list[TeamSpec], ledger: str,
                 redis: str | None = None, models: list[str] | None = None, server: dict[str, Any] | None = None,
                 alert_webhook: str | None = None, metering: dict[str, Any] | None = None) -> Path:
    """A policy with mock-upstream-served tiers (cheapest first, priced gpt-4o-mini / gpt-4o / o1 by position)."""
    models = models or ["gpt-4o-mini", "gpt-4o", "o1"]
    config: dict[str, Any] = {
        "server": {"upstream_timeout_s": 10, "cooldown_s": 30, **(server or {})},
        "metering": {"ledger": ledger, **({"redis": redis} if redis else {}),
                     **({"alert_webhook": alert_webhook} if alert_webhook else {}), **(metering or {})},
        "classifier": {"model": "length"},
        "admin_keys": [{"id": "admin", "sha256": sha(ADMIN_KEY)}],
        "tiers": [
            {"name": tier, "deployments": [
                {"id": f"{tier}-{n}", "model": f"openai/{models[min(i, len(models) - 1)]}", "api_base": f"{url}/v1"}
                for n, url in enumerate(urls)
            ]}
            for i, (tier, urls) in enumerate(tiers.items())
        ],
        "teams": {},
    }
    for team in teams:
        entry: dict[str, Any] = {"keys": [{"id": f"{team.name}-key", "sha256": sha(team.key)}]}
        if team.budgets:
            entry["budgets"] = team.budgets
        entry.update(team.extra or {})
        config["teams"][team.name] = entry
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def chat(messages_text: str, model: str = "small", max_tokens: int | None = 16, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": messages_text}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    body.update(extra)
    return body


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def tomorrow() -> str:
    """The exclusive ``end`` of a report of today."""
    return (datetime.now(UTC).date() + timedelta(days=1)).isoformat()


def report(proxy_url: str, auth: dict[str, str], **params: str) -> httpx.Response:
    params = {"start": today(), "end": tomorrow(), **params}
    return httpx.get(proxy_url + "/v1/spend/report", params=params, headers=auth, timeout=30)


def totals(proxy_url: str, team: str) -> dict[str, Any]:
    resp = report(proxy_url, ADMIN_AUTH, team=team, group_by="team")
    assert resp.status_code == 200, resp.text
    return resp.json()["totals"]


def usd(text: str) -> Decimal:
    return Decimal(text)


def cost_of(usage: dict[str, Any], input_price: Decimal = MINI_INPUT, cached_price: Decimal = MINI_CACHED,
            output_price: Decimal = MINI_OUTPUT) -> Decimal:
    """Hand-computed cost of an OpenAI usage block, in dollars, rounded to the nano-dollar (half-even)."""
    prompt = usage["prompt_tokens"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    completion = usage["completion_tokens"]
    dollars = (prompt - cached) * input_price + cached * cached_price + completion * output_price
    return dollars.quantize(NANO)


def parse_sse(raw: bytes) -> tuple[list[dict[str, Any]], dict[str, str], bool]:
    """(data payloads as JSON, ``: name=value`` comments, whether ``[DONE]`` came)."""
    payloads: list[dict[str, Any]] = []
    comments: dict[str, str] = {}
    done = False
    for event in raw.decode().split("\n\n"):
        for line in event.splitlines():
            if line.startswith("data: "):
                data = line[len("data: "):]
                if data == "[DONE]":
                    done = True
                else:
                    payloads.append(orjson.loads(data))
            elif line.startswith(":"):
                name, _, value = line[1:].strip().partition("=")
                comments[name] = value
    return payloads, comments, done


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiergate(*args: str) -> subprocess.CompletedProcess[str]:
    """``tiergate ARGS`` in this process (``tests.finops_helpers.tiergate``): the CLI's exit code and output without
    seconds of interpreter start-up per call."""
    from tests.finops_helpers import tiergate as run

    return run(*args)


def sqlite_records(db: Path, team: str) -> list[dict[str, Any]]:
    """The raw ``records`` rows of one team (schema: metering/ledger/schema.py), read-only, oldest first."""
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM records WHERE team = ? ORDER BY started_at", (team,))]
    finally:
        conn.close()


def open_holds(counter: dict[bytes, bytes]) -> list[bytes]:
    """Holds still reserving money in a Redis budget hash (``r:<id>`` fields; a settled one may linger as ``done``)."""
    return [k for k, v in counter.items() if k.startswith(b"r:") and v != b"done"]


def drop_redis_state(url: str, team: str) -> None:
    """Delete every Redis key of a (uniquely named) team: budget counters, holds, settle marks, alert markers."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"tg:*:{team}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def redis_up(url: str) -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except Exception:
        return False


def postgres_up(dsn: str) -> bool:
    try:
        import psycopg

        with psycopg.connect(dsn, connect_timeout=2):
            return True
    except Exception:
        return False


def spawn(args: list[str], log: Path, ready_path: str, cwd: Path = ROOT, timeout_s: float = 45.0,
          process: bool = False):
    """``tiergate <args>`` ready when ``ready_path`` answers 200; ``--port`` must be in ``args``. Usable from
    module-scoped fixtures. In this process (``tests.conftest.start_server``) unless ``process`` (a test that kills
    it) or ``cwd`` is not the repository (relative paths in the policy resolve against the process's directory)."""
    from tests.conftest import start_process, start_server

    port = int(args[args.index("--port") + 1])
    if cwd == ROOT:
        return start_server(args, port, log, ready_path, process=process, timeout_s=timeout_s)
    return start_process(args, port, log, ready_path, cwd=cwd, timeout_s=timeout_s)


class Procs:
    """Starts mocks and proxies and stops every one of them at ``close()`` (module-scoped fixtures)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Any] = []

    def mock(self, *flags: str):
        port = free_port()
        proc = spawn(["mock-upstream", "--port", str(port), *flags], self.directory / f"mock-{port}.log", "/healthz")
        self.started.append(proc)
        return proc

    def proxy(self, config: Path, cwd: Path = ROOT, port: int | None = None, process: bool = False):
        port = port or free_port()
        proc = spawn(["serve", "--config", str(config), "--port", str(port)], self.directory / f"proxy-{port}.log",
                     "/readyz", cwd=cwd, process=process)
        self.started.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.started:
            proc.stop()


class Webhook:
    """A Slack-style webhook receiver on a free loopback port, in a thread: keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received = []  # type: list[dict[str, Any]]

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length") or 0)
                received.append(orjson.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
