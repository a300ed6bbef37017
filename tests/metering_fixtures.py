"""Fixtures for the metering tests: real Redis and PostgreSQL, unique names per run, cleaned up afterwards.

A missing server fails the test under ``CI=true`` and skips it elsewhere.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest

PG_URL = os.environ.get("TIERGATE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TIERGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unavailable(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required under CI=true")
    pytest.skip(f"{what} not available")


def unique(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema name on the test server; dropped with everything in it afterwards."""
    try:
        import psycopg

        conn = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:  # noqa: BLE001 - any failure means "no server"
        unavailable(f"PostgreSQL at {PG_URL} ({exc})")
    schema = unique("tg_meter")
    try:
        yield schema
    finally:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix on the test Redis; every key under it is deleted afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        unavailable(f"Redis at {REDIS_URL} ({exc})")
    prefix = unique("tgtest")
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throw-away redis-server on its own port (no persistence), which tests may stop and restart."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        unavailable("redis-server binary")
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


T0 = datetime(2026, 11, 5, 12, 0, tzinfo=timezone.utc)


def make_record(i: int = 0, **overrides: Any):
    from metering.record import UsageRecord

    fields: dict[str, Any] = dict(
        request_id=f"req-{i}",
        started_at=T0,
        ended_at=T0 + timedelta(milliseconds=850),
        team="team-a",
        key_id="key-1",
        requested_model="auto",
        model="gpt-4o-mini",
        tier="small",
        deployment="openai-mini",
        purpose="chat",
        status=200,
        prompt_tokens=100,
        completion_tokens=20,
        cost_nanos=27_000,
        counterfactual_cost_nanos=450_000,
        latency_ms=850,
        ttft_ms=120,
    )
    fields.update(overrides)
    return UsageRecord(**fields)
