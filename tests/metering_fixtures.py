"""Fixtures for the metering tests: real Redis and PostgreSQL, unique names per run, cleaned up afterwards.

A missing server fails the test under ``CI=true`` and skips it elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

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


class DeadOnRestartRelay:
    """A TCP relay to a Redis port, in its own process. ``restart()`` leaves every connection made so far open but
    dead: what the client writes is swallowed and no reply or FIN comes back, as when Redis restarts behind a
    network hop. New connections reach the (restarted) server. Call ``restart()`` before stopping the server, so
    the server's FINs are not relayed."""

    def __init__(self, target_port: int) -> None:
        port = free_port()
        self.url = f"redis://127.0.0.1:{port}/0"
        self._proc = subprocess.Popen([sys.executable, __file__, "relay", str(port), str(target_port)],
                                      stdout=subprocess.PIPE)
        assert self._proc.stdout is not None and self._proc.stdout.readline() == b"ready\n"

    def restart(self) -> None:
        assert self._proc.stdout is not None
        self._proc.send_signal(signal.SIGUSR1)
        assert self._proc.stdout.readline() == b"restarted\n"

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()


async def _relay(port: int, target_port: int) -> None:
    generation = 0
    dead: list[asyncio.StreamWriter] = []  # referenced, so they stay open

    def restart() -> None:
        nonlocal generation
        generation += 1
        print("restarted", flush=True)

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, client: asyncio.StreamWriter,
                   born: int) -> None:
        try:
            while data := await src.read(65536):
                if born == generation:
                    dst.write(data)
                    await dst.drain()
        except OSError:
            pass
        if born == generation:
            dst.close()
        else:
            dead.append(client)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        born = generation
        await asyncio.gather(pump(reader, up_writer, writer, born), pump(up_reader, writer, writer, born))

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, restart)
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print("ready", flush=True)
    await server.serve_forever()


def private_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own on a free port (tests may stop, restart or flush it), stopped afterwards."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server binary")
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


redis_server = pytest.fixture(private_redis)


T0 = datetime(2026, 11, 5, 12, 0, tzinfo=UTC)


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


if __name__ == "__main__":
    if sys.argv[1] == "relay":
        asyncio.run(_relay(int(sys.argv[2]), int(sys.argv[3])))
