"""Stored responses in the ledger's database (SQLite or PostgreSQL), for deployments without Redis.

Why there: it is the one store every worker and replica already shares and keeps (like the ``alerts``,
``outcomes`` and ``routing_models`` tables), so a conversation continues on whichever replica the next turn reaches.
The ``responses`` table sits beside the ledger's tables (same SQLite file, same PostgreSQL schema) but is reached
through this store's own connection: a stored conversation is read on the request path and must not queue behind
the ledger's group commits, nor the ledger's batches behind a multi-megabyte history.

One row per response: the team and expiry (Unix milliseconds) as columns, so reads, deletes and the sweep filter
without decoding; the record itself as orjson bytes (BLOB / BYTEA). Expired rows are deleted when a read finds
them and by a sweep every ``SWEEP_INTERVAL_S`` in each worker (a bounded batch at a time, so one sweep never holds
the SQLite write lock for long).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kvcache.responses import ResponseStoreUnavailable, StoredResponse

log = logging.getLogger("tiergate.responses")

SWEEP_INTERVAL_S = 600.0
SWEEP_BATCH = 1000
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")  # as the ledger's


def responses_ddl(int_type: str, blob_type: str) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS responses (id TEXT NOT NULL, team TEXT NOT NULL, created_at {int_type} NOT NULL, "
        f"expires_at {int_type} NOT NULL, tier TEXT, deployment TEXT, body {blob_type} NOT NULL, PRIMARY KEY (id))",
        "CREATE INDEX IF NOT EXISTS responses_expires_at ON responses (expires_at)",
    ]


def _statements(p: str) -> dict[str, str]:
    return {
        # Replacing is allowed for the same team only: an id never moves between teams.
        "put": (f"INSERT INTO responses (id, team, created_at, expires_at, tier, deployment, body) "
                f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT (id) DO UPDATE SET "
                "created_at = excluded.created_at, expires_at = excluded.expires_at, tier = excluded.tier, "
                "deployment = excluded.deployment, body = excluded.body WHERE responses.team = excluded.team"),
        "get": f"SELECT expires_at, body FROM responses WHERE id = {p} AND team = {p}",
        "drop_expired": f"DELETE FROM responses WHERE id = {p} AND expires_at <= {p}",
        "delete": f"DELETE FROM responses WHERE id = {p} AND team = {p} AND expires_at > {p}",
        "sweep": (f"DELETE FROM responses WHERE id IN "
                  f"(SELECT id FROM responses WHERE expires_at <= {p} LIMIT {SWEEP_BATCH})"),
    }


class SqlResponseStore:
    """The dialect-free part; a backend supplies ``_execute`` (returns the rowcount) and ``_fetch``."""

    placeholder = "?"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._sql = _statements(self.placeholder)
        self._sweeper: asyncio.Task[None] | None = None

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # The backend's own "database did not answer" exceptions, wrapped as ResponseStoreUnavailable.
    _failures: tuple[type[BaseException], ...] = (OSError,)

    async def _execute(self, sql: str, params: Sequence[Any]) -> int:
        raise NotImplementedError

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def _run(self, sql: str, params: Sequence[Any]) -> int:
        try:
            return await self._execute(sql, params)
        except self._failures as exc:
            raise ResponseStoreUnavailable(f"responses table: {type(exc).__name__}") from exc

    async def _rows(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            return await self._fetch(sql, params)
        except self._failures as exc:
            raise ResponseStoreUnavailable(f"responses table: {type(exc).__name__}") from exc

    async def _close_db(self) -> None:
        raise NotImplementedError

    def start_sweeping(self, interval_s: float = SWEEP_INTERVAL_S) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(interval_s))

    async def put(self, item: StoredResponse, ttl_s: float) -> None:
        value = item.encode()
        expires = self._now_ms() + max(1, int(ttl_s * 1000))
        stored = await self._run(self._sql["put"], (item.id, item.team, item.created_at, expires, item.tier,
                                                        item.deployment, value))
        if stored != 1:
            raise ValueError(f"response id {item.id!r} is already stored for another team")

    async def get(self, response_id: str, team: str) -> StoredResponse | None:
        rows = await self._rows(self._sql["get"], (response_id, team))
        if not rows:
            return None
        expires, body = rows[0]
        now = self._now_ms()
        if int(expires) <= now:
            await self._run(self._sql["drop_expired"], (response_id, now))
            return None
        return StoredResponse.decode(bytes(body))

    async def delete(self, response_id: str, team: str) -> bool:
        return await self._run(self._sql["delete"], (response_id, team, self._now_ms())) == 1

    async def sweep(self) -> int:
        """Delete every expired row, a batch at a time; how many went."""
        total = 0
        while True:
            n = await self._run(self._sql["sweep"], (self._now_ms(),))
            total += n
            if n < SWEEP_BATCH:
                return total

    async def _sweep_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                swept = await self.sweep()
            except Exception as exc:  # noqa: BLE001 -- a database hiccup: expired rows wait for the next sweep
                log.warning("responses: sweep failed (%s); retrying in %.0f s", type(exc).__name__, interval_s)
                continue
            if swept:
                log.info("responses: %d expired stored responses deleted", swept)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
            self._sweeper = None
        await self._close_db()


class SqliteResponseStore(SqlResponseStore):
    """Its own WAL connection to the ledger's file, on one thread (sqlite3 connections are not thread-safe);
    writers of the file serialise on SQLite's lock, which the 30 s busy timeout waits out."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="responses-sqlite")
        self._failures = (sqlite3.Error, OSError)
        self._conn: sqlite3.Connection | None = None

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        from metering.ledger.sqlite import connect  # the ledger's own settings for the file (WAL, synchronous)

        def open_() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = connect(self.path)
            for ddl in responses_ddl("INTEGER", "BLOB"):
                conn.execute(ddl)
            return conn

        self._conn = await self._call(open_)

    async def _execute(self, sql: str, params: Sequence[Any]) -> int:
        assert self._conn is not None
        conn = self._conn
        return int(await self._call(lambda: conn.execute(sql, params).rowcount))  # autocommit

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        assert self._conn is not None
        conn = self._conn
        return list(await self._call(lambda: conn.execute(sql, params).fetchall()))

    async def _close_db(self) -> None:
        if self._conn is not None:
            await self._call(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)


class PostgresResponseStore(SqlResponseStore):
    """A small pool of its own in the ledger's schema; every statement is one autocommitted round trip."""

    placeholder = "%s"

    def __init__(self, url: str, schema: str = "public", clock: Callable[[], float] = time.time,
                 pool_size: int = 4) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"invalid schema name {schema!r}")
        super().__init__(clock)
        import psycopg
        from psycopg_pool import AsyncConnectionPool, PoolTimeout

        self._failures = (psycopg.Error, PoolTimeout, OSError)
        self.schema = schema
        self._pool = AsyncConnectionPool(url, min_size=1, max_size=pool_size, open=False,
                                         kwargs={"options": f"-c search_path={schema}", "autocommit": True})

    async def open(self) -> None:
        await self._pool.open(wait=True, timeout=10.0)
        async with self._pool.connection() as conn, conn.transaction():
            # Several hosts may start at once; CREATE ... IF NOT EXISTS is not race-free on its own.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tiergate-responses-schema'))")
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            for ddl in responses_ddl("BIGINT", "BYTEA"):
                await conn.execute(ddl)

    async def _execute(self, sql: str, params: Sequence[Any]) -> int:
        async with self._pool.connection() as conn:
            return (await conn.execute(sql, params)).rowcount

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self._pool.connection() as conn:
            return await (await conn.execute(sql, params)).fetchall()

    async def _close_db(self) -> None:
        await self._pool.close()


async def open_sql_response_store(ledger_url: str, schema: str = "public",
                                  clock: Callable[[], float] = time.time) -> SqlResponseStore:
    """The store in the database of ``ledger_url`` (``sqlite:///path`` or ``postgresql://...``), opened, its
    table created, its sweep running."""
    store: SqliteResponseStore | PostgresResponseStore
    if ledger_url.startswith("sqlite:///"):
        store = SqliteResponseStore(ledger_url[len("sqlite:///"):], clock)
    elif ledger_url.startswith(("postgresql://", "postgres://")):
        store = PostgresResponseStore(ledger_url, schema, clock)
    else:
        raise ValueError(f"unsupported ledger URL {ledger_url!r}: use sqlite:///PATH or postgresql://...")
    await store.open()
    store.start_sweeping()
    return store
