"""SQLite ledger: the embedded default, one file in WAL mode.

``synchronous=NORMAL`` in WAL mode keeps every commit across a process crash (only a power cut can drop the
last transactions), which together with the spool is the promise we make. One writer thread owns the write
connection; reports open their own read connection, which WAL lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple

from metering.feedback import feedback_ddl
from metering.ledger.alert_log import alerts_ddl, insert_alert_sql
from metering.ledger.group_commit import GroupCommitLedger, WriterOptions
from metering.ledger.rollup import MEASURES, rollup
from metering.ledger.schema import (
    API_TYPE,
    RECORD_COLUMNS,
    REQUEST_INDEX,
    RESPONSE_INDEX,
    ROLLUPS,
    STARTED_AT_INDEX,
    Entry,
    migration_sql,
    record_values,
    rollup_ddl,
    upsert_sql,
)
from metering.outcomes import outcomes_ddl
from metering.retrain_claims import retrain_claims_ddl
from metering.routing_models import routing_models_ddl

_T = TypeVar("_T")
_Args = TypeVarTuple("_Args")

_RECORD_TYPES = {
    "score": "REAL", "prompt_tokens": "INTEGER", "completion_tokens": "INTEGER", "cached_tokens": "INTEGER",
    "cache_write_tokens": "INTEGER", "reasoning_tokens": "INTEGER", "usage_estimated": "INTEGER",
    "cost_nanos": "INTEGER", "counterfactual_cost_nanos": "INTEGER", "latency_ms": "INTEGER", "ttft_ms": "INTEGER",
    "status": "INTEGER", "system_tokens": "INTEGER", "context_saved_tokens": "INTEGER", "api": API_TYPE,
}
_RECORDS_DDL = "CREATE TABLE IF NOT EXISTS records ({}, PRIMARY KEY (entry_id)) WITHOUT ROWID".format(
    ", ".join(f"{c} {_RECORD_TYPES.get(c, 'TEXT')}" for c in RECORD_COLUMNS)
)
_INSERT = "INSERT OR IGNORE INTO records ({}) VALUES ({})".format(
    ", ".join(RECORD_COLUMNS), ", ".join("?" * len(RECORD_COLUMNS))
)
_UPSERTS = {table: upsert_sql(table, dims, "?") for table, dims in ROLLUPS}
_INSERT_ALERT = insert_alert_sql("?")


def _adapt(value: Any) -> Any:
    # Explicit ISO text: sqlite3's implicit datetime adapters are deprecated, and ISO UTC text sorts correctly.
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


def connect(path: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    conn.execute(_RECORDS_DDL)
    conn.execute(REQUEST_INDEX)
    conn.execute(STARTED_AT_INDEX)
    for table, dims in ROLLUPS:
        conn.execute(rollup_ddl(table, dims, "TEXT", "INTEGER"))
    for ddl in alerts_ddl("TEXT", "TEXT", "INTEGER"):
        conn.execute(ddl)
    for ddl in routing_models_ddl("TEXT", "BLOB", "INTEGER"):
        conn.execute(ddl)
    for ddl in outcomes_ddl("TEXT", "REAL"):
        conn.execute(ddl)
    for ddl in feedback_ddl("TEXT", "REAL"):
        conn.execute(ddl)
    for ddl in retrain_claims_ddl("TEXT", "INTEGER"):
        conn.execute(ddl)
    migrate(conn)
    conn.execute(RESPONSE_INDEX)  # after the migration: an older table gets the column there


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _rebuild_with_key(table: str, dims: tuple[str, ...]) -> list[str]:
    """SQLite cannot change a primary key in place: copy the table into one made with the new key."""
    cols = ", ".join(dims + MEASURES)
    return [rollup_ddl(f"{table}_rekeyed", dims, "TEXT", "INTEGER"),
            f"INSERT INTO {table}_rekeyed ({cols}) SELECT {cols} FROM {table}",
            f"DROP TABLE {table}", f"ALTER TABLE {table}_rekeyed RENAME TO {table}"]


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a ledger file made by an earlier version up to date (``schema.migration_sql``), in one transaction
    that also decides it: of several processes opening the file at once, the first migrates, the rest find
    nothing to do."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql in migration_sql(_columns(conn, "records"), _columns(conn, "rollup_daily"), _RECORD_TYPES,
                                 _rebuild_with_key):
            conn.execute(sql)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def insert_alerts(conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> list[bool]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        inserted = [conn.execute(_INSERT_ALERT, row).rowcount == 1 for row in rows]
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return inserted


def transact(conn: sqlite3.Connection, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[tuple[Any, ...]]:
    """``statements`` in one ``BEGIN IMMEDIATE`` transaction (writers serialised); the last one's rows."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows: list[tuple[Any, ...]] = []
        for sql, params in statements:
            rows = conn.execute(sql, params).fetchall()
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return rows


def insert_batch(conn: sqlite3.Connection, entries: Sequence[Entry]) -> int:
    """One ``BEGIN IMMEDIATE`` transaction: new records, then the rollup deltas of exactly those."""
    records = [r for _, r in entries]
    rows = [tuple(_adapt(v) for v in record_values(e, r)) for e, r in entries]
    conn.execute("BEGIN IMMEDIATE")
    try:
        before = conn.total_changes
        conn.executemany(_INSERT, rows)
        if conn.total_changes - before == len(rows):
            inserted = list(records)  # the common case: all new, one C-level loop
        else:
            # Some were already stored (a replayed spool): redo row by row to learn which, so rollups add only those.
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            inserted = [r for r, row in zip(records, rows) if conn.execute(_INSERT, row).rowcount == 1]
        for (table, _), deltas in zip(ROLLUPS, rollup(inserted)):
            conn.executemany(_UPSERTS[table], [(*key, *values) for key, values in deltas.items()])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(inserted)


class SqliteLedger(GroupCommitLedger):
    dialect = "sqlite"

    def __init__(self, path: str | Path, spool_dir: str | Path | None = "",
                 options: WriterOptions = WriterOptions()) -> None:
        """``spool_dir=""`` puts the spool beside the database (``<path>.spool/``); ``None`` disables it."""
        self.path = Path(path)
        if spool_dir == "":
            spool_dir = self.path.with_name(self.path.name + ".spool")
        super().__init__(spool_dir, options)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def _call(self, fn: Callable[[*_Args], _T], *args: *_Args) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _open_db(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def open_() -> sqlite3.Connection:
            conn = connect(self.path)
            create_schema(conn)
            return conn

        self._conn = await self._call(open_)

    async def _close_db(self) -> None:
        if self._conn is not None:
            await self._call(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def _insert(self, entries: Sequence[Entry]) -> int:
        assert self._conn is not None
        return await self._call(insert_batch, self._conn, entries)

    async def _insert_alerts(self, rows: Sequence[Sequence[Any]]) -> list[bool]:
        # On the writer's thread and connection: alerts are rare, and one writer per file avoids lock waits.
        assert self._conn is not None
        return await self._call(insert_alerts, self._conn, rows)

    async def _execute(self, sql: str, params: Sequence[Any]) -> None:
        assert self._conn is not None
        conn = self._conn
        await self._call(conn.execute, sql, tuple(params))  # autocommit (isolation_level=None)

    async def _transact(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[tuple[Any, ...]]:
        assert self._conn is not None  # the writer's thread and connection, as for alerts
        return await self._call(transact, self._conn, statements)

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30.0)
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()

        return await asyncio.to_thread(run)

