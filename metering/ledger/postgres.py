"""PostgreSQL ledger: several proxy hosts sharing one bill, through a psycopg 3 async connection pool.

Each batch is three statements in one transaction, each a single round trip carrying the batch as one JSON
array (``jsonb_populate_recordset``): records with ``ON CONFLICT DO NOTHING RETURNING entry_id`` (idempotent
spool replay), then the rollup deltas of the returned entries only. Deltas are sorted, so two hosts upserting the same
rollup rows lock them in the same order and do not deadlock.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson
from psycopg_pool import AsyncConnectionPool

from metering.feedback import feedback_ddl
from metering.ledger.alert_log import alerts_ddl, insert_alert_sql
from metering.ledger.group_commit import GroupCommitLedger, WriterOptions
from metering.ledger.rollup import DAILY_DIMS, MEASURES, TAG_DIMS, rollup
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
)
from metering.outcomes import outcomes_ddl
from metering.retrain_claims import retrain_claims_ddl
from metering.routing_models import routing_models_ddl

_RECORD_TYPES = {
    "day": "DATE", "started_at": "TIMESTAMPTZ", "ended_at": "TIMESTAMPTZ", "tags": "JSONB",
    "score": "DOUBLE PRECISION", "usage_estimated": "BOOLEAN", "status": "INTEGER",
    **{c: "BIGINT" for c in ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens",
                             "reasoning_tokens", "cost_nanos", "counterfactual_cost_nanos", "latency_ms", "ttft_ms",
                             "system_tokens", "context_saved_tokens")},
    "api": API_TYPE,
}
_RECORDS_DDL = "CREATE TABLE IF NOT EXISTS records ({}, PRIMARY KEY (entry_id))".format(
    ", ".join(f"{c} {_RECORD_TYPES.get(c, 'TEXT')}" for c in RECORD_COLUMNS)
)
_INSERT_RECORDS = (  # columns named: a migrated table's order is its history's (schema.py keeps them equal anyway)
    f"INSERT INTO records ({', '.join(RECORD_COLUMNS)}) SELECT {', '.join(RECORD_COLUMNS)} "
    "FROM jsonb_populate_recordset(NULL::records, %s) "
    "ON CONFLICT (entry_id) DO NOTHING RETURNING entry_id"
)


def _upsert_json(table: str, dims: tuple[str, ...]) -> str:
    cols = ", ".join(dims + MEASURES)
    adds = ", ".join(f"{m} = {table}.{m} + excluded.{m}" for m in MEASURES)
    return (f"INSERT INTO {table} ({cols}) SELECT {cols} FROM jsonb_populate_recordset(NULL::{table}, %s) "
            f"ON CONFLICT ({', '.join(dims)}) DO UPDATE SET {adds}")


_UPSERTS = {"rollup_daily": _upsert_json("rollup_daily", DAILY_DIMS),
            "rollup_tag": _upsert_json("rollup_tag", TAG_DIMS)}
_INSERT_ALERT = insert_alert_sql("%s")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _rekey(table: str, dims: tuple[str, ...]) -> list[str]:
    return [f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey, ADD PRIMARY KEY ({', '.join(dims)})"]


def _json_default(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(type(value))


def _records_json(entries: Sequence[Entry]) -> str:
    rows = []
    for e, r in entries:
        row = dict(zip(RECORD_COLUMNS, record_values(e, r)))
        row["tags"] = dict(r.tags)
        rows.append(row)
    return orjson.dumps(rows, default=_json_default).decode()


class PostgresLedger(GroupCommitLedger):
    dialect = "postgresql"
    placeholder = "%s"
    tag_rows = "jsonb_each_text({tags})"

    def __init__(self, url: str, spool_dir: str | Path | None, schema: str = "public",
                 options: WriterOptions = WriterOptions(), pool_size: int = 4) -> None:
        """``spool_dir`` is local to this host (each host replays its own); ``None`` waits on commits instead."""
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"invalid schema name {schema!r}")
        super().__init__(spool_dir, options)
        self.schema = schema
        self._pool = AsyncConnectionPool(
            url, min_size=1, max_size=pool_size, open=False,
            kwargs={"options": f"-c search_path={schema}", "autocommit": False},
        )

    def _day_param(self, day: date) -> Any:
        return day

    def _ts_param(self, at: datetime) -> Any:
        return at

    async def _open_db(self) -> None:
        await self._pool.open(wait=True, timeout=10.0)
        async with self._pool.connection() as conn:
            # Several hosts may start at once; CREATE ... IF NOT EXISTS is not race-free on its own.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tiergate-ledger-schema'))")
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            await conn.execute(_RECORDS_DDL)
            await conn.execute(REQUEST_INDEX)
            await conn.execute(STARTED_AT_INDEX)
            for table, dims in ROLLUPS:
                await conn.execute(rollup_ddl(table, dims, "DATE", "BIGINT"))
            for ddl in alerts_ddl("TIMESTAMPTZ", "DATE", "BIGINT"):
                await conn.execute(ddl)
            for ddl in routing_models_ddl("TIMESTAMPTZ", "BYTEA", "BIGINT"):
                await conn.execute(ddl)
            for ddl in outcomes_ddl("TIMESTAMPTZ", "DOUBLE PRECISION"):
                await conn.execute(ddl)
            for ddl in feedback_ddl("TIMESTAMPTZ", "DOUBLE PRECISION"):
                await conn.execute(ddl)
            for ddl in retrain_claims_ddl("TIMESTAMPTZ", "BIGINT"):
                await conn.execute(ddl)
            # under the same lock: of several hosts opening an older ledger, the first migrates it
            have: dict[str, set[str]] = {"records": set(), "rollup_daily": set()}
            cur = await conn.execute("SELECT table_name, column_name FROM information_schema.columns "
                                     "WHERE table_schema = %s AND table_name IN ('records', 'rollup_daily')",
                                     (self.schema,))
            for table, column in await cur.fetchall():
                have[table].add(column)
            for sql in migration_sql(have["records"], have["rollup_daily"], _RECORD_TYPES, _rekey):
                await conn.execute(sql)
            await conn.execute(RESPONSE_INDEX)  # after the migration: an older table gets the column there

    async def _close_db(self) -> None:
        await self._pool.close()

    async def _insert(self, entries: Sequence[Entry]) -> int:
        async with self._pool.connection() as conn:
            cur = await conn.execute(_INSERT_RECORDS, (_records_json(entries),))
            ids = {row[0] for row in await cur.fetchall()}
            inserted = []
            for e, r in entries:
                if e in ids:
                    ids.discard(e)  # an entry replayed twice within one batch was inserted once
                    inserted.append(r)
            for (table, dims), deltas in zip(ROLLUPS, rollup(inserted)):
                if deltas:
                    rows = [dict(zip(dims + MEASURES, (*key, *values))) for key, values in deltas.items()]
                    await conn.execute(_UPSERTS[table], (orjson.dumps(rows).decode(),))
        return len(inserted)

    async def _insert_alerts(self, rows: Sequence[Sequence[Any]]) -> list[bool]:
        async with self._pool.connection() as conn:  # one transaction, committed when the block ends
            return [(await conn.execute(_INSERT_ALERT, row)).rowcount == 1 for row in rows]

    async def _execute(self, sql: str, params: Sequence[Any]) -> None:
        async with self._pool.connection() as conn:  # committed when the block ends
            await conn.execute(sql, tuple(params))

    async def _transact(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[tuple[Any, ...]]:
        async with self._pool.connection() as conn:  # one transaction, committed when the block ends
            # Registrations of one team by two hosts at once must not compute the same next version.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tiergate-routing-models'))")
            rows: list[tuple[Any, ...]] = []
            for sql, params in statements:
                cur = await conn.execute(sql, params)
                rows = await cur.fetchall() if cur.description is not None else []
            return rows

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()
