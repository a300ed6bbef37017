"""The usage record's ``api``, ``response_id`` and ``router_model`` columns on real SQLite and PostgreSQL.

A ledger made by the version before them (its tables built here from that version's DDL, with rows in them) is
migrated when it is opened: old rows keep their sums and get the ``api`` their version spoke (embeddings by purpose,
the rest chat), new records are written and read back with their ids, opening it again changes nothing, and a spool
line written by the old version (without the fields) still replays. ``group_by=api`` reports come from the daily
rollup, and with tags from the records (``/v1/spend/requests`` is checked end to end in test_feedback_e2e).
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from metering.ledger import open_ledger
from metering.ledger.rollup import MEASURES, rollup
from metering.ledger.schema import record_values
from metering.record import UsageRecord
from tests.metering_fixtures import PG_URL, T0, make_record, pg_schema  # noqa: F401  (pg_schema is a fixture)

NOV = (date(2026, 11, 1), date(2026, 12, 1))
# The record columns of the version before this change (commit 446a424), in its table order.
OLD_COLUMNS = (
    "entry_id", "request_id", "day", "started_at", "ended_at", "team", "key_id", "tags", "requested_model", "tier",
    "deployment", "model", "purpose", "score", "prompt_tokens", "completion_tokens", "cached_tokens",
    "cache_write_tokens", "reasoning_tokens", "usage_estimated", "cost_nanos", "counterfactual_cost_nanos",
    "latency_ms", "ttft_ms", "status", "error", "system_tokens", "context_saved_tokens",
)
OLD_DAILY_DIMS = ("day", "team", "key_id", "model", "tier", "purpose")
_INTS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens", "cost_nanos",
         "counterfactual_cost_nanos", "latency_ms", "ttft_ms", "system_tokens", "context_saved_tokens")


def old_ddl(backend: str) -> list[str]:
    """That version's CREATE statements (records, both rollups), as its sqlite.py / postgres.py / schema.py made
    them."""
    if backend == "sqlite":
        types = {"score": "REAL", "usage_estimated": "INTEGER", "status": "INTEGER", **{c: "INTEGER" for c in _INTS}}
        suffix, day, integer = " WITHOUT ROWID", "TEXT", "INTEGER"
    else:
        types = {"day": "DATE", "started_at": "TIMESTAMPTZ", "ended_at": "TIMESTAMPTZ", "tags": "JSONB",
                 "score": "DOUBLE PRECISION", "usage_estimated": "BOOLEAN", "status": "INTEGER",
                 **{c: "BIGINT" for c in _INTS}}
        suffix, day, integer = "", "DATE", "BIGINT"
    cols = ", ".join(f"{c} {types.get(c, 'TEXT')}" for c in OLD_COLUMNS)
    ddl = [f"CREATE TABLE records ({cols}, PRIMARY KEY (entry_id)){suffix}",
           "CREATE INDEX records_request_id ON records (request_id)"]
    for table, dims in (("rollup_daily", OLD_DAILY_DIMS), ("rollup_tag", ("day", "team", "tag_key", "tag_value"))):
        dim_cols = ", ".join(f"{d} {day if d == 'day' else 'TEXT'} NOT NULL" for d in dims)
        measures = ", ".join(f"{m} {integer} NOT NULL" for m in MEASURES)
        ddl.append(f"CREATE TABLE {table} ({dim_cols}, {measures}, PRIMARY KEY ({', '.join(dims)}))")
    return ddl


def old_rows(records: list[UsageRecord]) -> list[tuple[str, tuple[Any, ...]]]:
    """INSERTs the old version's writer made for ``records``: its columns are the first 28 of today's."""
    out = [(f"INSERT INTO records ({', '.join(OLD_COLUMNS)}) VALUES ({', '.join(['?'] * len(OLD_COLUMNS))})",
            record_values(f"old-{i}", r)[:len(OLD_COLUMNS)]) for i, r in enumerate(records)]
    daily, tags = rollup(records)
    cols = ", ".join(OLD_DAILY_DIMS + MEASURES)
    out += [(f"INSERT INTO rollup_daily ({cols}) VALUES ({', '.join(['?'] * 14)})", (*key[:6], *values))
            for key, values in daily.items()]
    out += [(f"INSERT INTO rollup_tag VALUES ({', '.join(['?'] * 12)})", (*key, *values))
            for key, values in tags.items()]
    return out


class Old:
    """Builds the old schema and rows in a SQLite file or a PostgreSQL schema; reads raw rows back."""

    def __init__(self, name: str, tmp_path: Path, schema: str) -> None:
        self.name, self.schema = name, schema
        self.path = tmp_path / "old-ledger.db"
        self.url = f"sqlite:///{self.path}" if name == "sqlite" else PG_URL

    def build(self, records: list[UsageRecord]) -> None:
        statements = [(sql, ()) for sql in old_ddl(self.name)] + old_rows(records)
        if self.name == "sqlite":
            conn = sqlite3.connect(self.path)
            with conn:
                for sql, params in statements:
                    conn.execute(sql, tuple(v.isoformat() if isinstance(v, date) else v for v in params))
            conn.close()
            return
        import psycopg

        with psycopg.connect(PG_URL) as conn:
            conn.execute(f"CREATE SCHEMA {self.schema}")
            conn.execute(f"SET search_path TO {self.schema}")
            for sql, params in statements:
                conn.execute(sql.replace("?", "%s"), params)

    def raw(self, sql: str) -> list[tuple[Any, ...]]:
        if self.name == "sqlite":
            conn = sqlite3.connect(self.path)
            try:
                return conn.execute(sql).fetchall()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(PG_URL, options=f"-c search_path={self.schema}") as conn:
            return conn.execute(sql).fetchall()

    def ledger(self, spool_dir: Path | None = None):
        return open_ledger(self.url, spool_dir=spool_dir, schema=self.schema)


@pytest.fixture(params=["sqlite", "postgres"])
def old(request: pytest.FixtureRequest, tmp_path: Path) -> Old:
    schema = request.getfixturevalue("pg_schema") if request.param == "postgres" else "public"
    return Old(request.param, tmp_path, schema)


OLD_RECORDS = [
    make_record(1, cost_nanos=1_000, tags={"owner": "ana"}),
    make_record(2, cost_nanos=2_000, started_at=T0 + timedelta(days=1)),
    make_record(3, cost_nanos=300, purpose="embedding", model="text-embedding-3-small", completion_tokens=0),
]
NEW_RECORDS = [
    make_record(10, cost_nanos=40_000, api="responses", response_id="resp_abc", router_model="m-default",
                tags={"owner": "ana"}),
    make_record(11, cost_nanos=50_000, api="messages", response_id="msg_xyz", router_model="m-team-v2"),
    make_record(12, cost_nanos=7, api="chat", response_id="chatcmpl-1", tags={"owner": "bo"}),
]


def test_an_old_ledger_is_migrated_at_open(old: Old, tmp_path: Path) -> None:
    old.build(OLD_RECORDS)
    spool = tmp_path / "spool"
    spool.mkdir()
    # A line the old version spooled and never committed (it died): no api, response_id or router_model.
    line = orjson.loads(make_record(4, cost_nanos=5, purpose="embedding").to_json())
    for name in ("api", "response_id", "router_model"):
        del line[name]
    (spool / "1-dead-0000000001.spool").write_bytes(b"dead-1 " + orjson.dumps(line) + b"\n")

    async def go() -> tuple[Any, ...]:
        ledger = old.ledger(spool)
        await ledger.start()  # migrates, then replays the old line
        for r in NEW_RECORDS:
            await ledger.write(r)
        await ledger.flush()
        by_api = await ledger.report(*NOV, group_by=["api"])
        with_tags = await ledger.report(*NOV, group_by=["api", "tag"])
        await ledger.close()
        again = old.ledger(None)  # opening a migrated ledger again finds nothing to do
        await again.start()
        await again.write(make_record(20, cost_nanos=1, api="completions"))
        await again.flush()
        after = await again.report(*NOV, group_by=["api"])
        await again.close()
        return by_api, with_tags, after

    by_api, with_tags, after = asyncio.run(go())
    sums = {row.keys["api"]: (row.totals.requests, row.totals.cost_nanos) for row in by_api.rows}
    assert sums == {"chat": (3, 1_000 + 2_000 + 7), "embeddings": (2, 300 + 5), "messages": (1, 50_000),
                    "responses": (1, 40_000)}
    assert by_api.totals.cost_nanos == 1_000 + 2_000 + 300 + 5 + 40_000 + 50_000 + 7
    assert by_api.to_csv().splitlines()[0].startswith("api,requests,")
    tagged = {(row.keys["api"], row.keys["tag_value"]): row.totals.cost_nanos for row in with_tags.rows}
    assert tagged == {("chat", "ana"): 1_000, ("chat", "bo"): 7, ("chat", None): 2_000, ("embeddings", None): 305,
                      ("messages", None): 50_000, ("responses", "ana"): 40_000}
    stored = {r[0]: r[1:] for r in old.raw("SELECT request_id, api, response_id, router_model FROM records")}
    assert stored["req-1"] == ("chat", None, None) and stored["req-3"] == ("embeddings", None, None)
    assert stored["req-4"] == ("embeddings", None, None)  # the old spool line
    assert stored["req-10"] == ("responses", "resp_abc", "m-default")
    assert stored["req-11"] == ("messages", "msg_xyz", "m-team-v2")
    assert {row.keys["api"]: row.totals.requests for row in after.rows}["completions"] == 1
    assert after.totals.requests == by_api.totals.requests + 1
    # the rollup was re-keyed: one row per api within the old dimensions, the old rows' sums kept
    key_cols = {r[0] for r in old.raw("SELECT api FROM rollup_daily")}
    assert key_cols == {"chat", "embeddings", "messages", "responses", "completions"}


def test_fresh_and_migrated_tables_have_one_column_order(old: Old, tmp_path: Path) -> None:
    """ALTER TABLE appends, so fresh tables declare the added columns last as well: positional queries (and
    PostgreSQL's row type, which jsonb_populate_recordset uses) see the same layout either way."""
    old.build([])
    fresh = Old(old.name, tmp_path / "fresh", f"{old.schema}_fresh" if old.name == "postgres" else "public")
    if old.name == "sqlite":
        fresh.path.parent.mkdir()

    async def open_both() -> None:
        for which in (old, fresh):
            ledger = which.ledger(None)
            await ledger.start()
            await ledger.close()

    try:
        asyncio.run(open_both())

        def columns(which: Old, table: str) -> list[str]:
            if which.name == "sqlite":
                return [r[1] for r in which.raw(f"PRAGMA table_info({table})")]
            return [r[0] for r in which.raw(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                f"AND table_name = '{table}' ORDER BY ordinal_position")]

        for table in ("records", "rollup_daily"):
            assert columns(old, table) == columns(fresh, table)
        assert columns(old, "records")[-3:] == ["api", "response_id", "router_model"]
        assert columns(old, "rollup_daily")[-1] == "api"
    finally:
        if old.name == "postgres":
            import psycopg

            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {fresh.schema} CASCADE")


def test_record_json_round_trip_and_old_lines() -> None:
    r = NEW_RECORDS[0]
    assert UsageRecord.from_json(r.to_json()) == r
    line = orjson.loads(make_record(1).to_json())
    for name in ("api", "response_id", "router_model"):
        del line[name]
    back = UsageRecord.from_json(orjson.dumps(line))
    assert (back.api, back.response_id, back.router_model) == ("chat", None, None)
