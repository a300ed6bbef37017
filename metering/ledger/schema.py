"""Record columns shared by both backends, in table order, and a record's values in that order.

``entry_id`` (not ``request_id``) is the primary key: the ledger names each accepted ``write()`` itself, so replaying
a spool is idempotent while two requests that share a client-chosen request id are still billed twice.

A ledger made by an earlier version is brought up to date when it is opened (``migration_sql``): missing record
columns are added (``ALTER TABLE ... ADD COLUMN``, idempotent: only what the table lacks), old rows get the ``api``
the version that wrote them spoke (``LEGACY_API_SQL``), and the daily rollup gains its ``api`` dimension. ALTER
TABLE can only append, so fresh tables declare the added columns last too: every ledger has one column order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from metering.ledger.rollup import DAILY_DIMS, MEASURES, TAG_DIMS
from metering.record import UsageRecord

RECORD_COLUMNS: tuple[str, ...] = (
    "entry_id", "request_id", "day", "started_at", "ended_at", "team", "key_id", "tags", "requested_model", "tier",
    "deployment", "model", "purpose", "score", "prompt_tokens", "completion_tokens", "cached_tokens",
    "cache_write_tokens", "reasoning_tokens", "usage_estimated", "cost_nanos", "counterfactual_cost_nanos",
    "latency_ms", "ttft_ms", "status", "error", "system_tokens", "context_saved_tokens", "api", "response_id",
    "router_model",
)
# The type of ``api`` on both backends; the default is what an old row is until its backfill, and what ALTER TABLE
# needs to add a NOT NULL column.
API_TYPE = "TEXT NOT NULL DEFAULT 'chat'"
# ``metering.record.legacy_api`` for stored rows (records and rollups both have ``purpose``).
LEGACY_API_SQL = "CASE WHEN purpose = 'embedding' THEN 'embeddings' ELSE 'chat' END"
# Daily-rollup dimensions added after the first release: declared after the measures (see the module docstring).
LATE_DIMS = ("api",)


def record_values(entry_id: str, r: UsageRecord) -> tuple[Any, ...]:
    """Timestamps stay datetimes and the day a date; each backend adapts them (SQLite stores ISO text)."""
    return (
        entry_id, r.request_id, r.day, r.started_at, r.ended_at, r.team, r.key_id,
        orjson.dumps(dict(sorted(r.tags.items()))).decode(), r.requested_model, r.tier, r.deployment, r.model,
        r.purpose, r.score, r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.cache_write_tokens,
        r.reasoning_tokens, r.usage_estimated, r.cost_nanos, r.counterfactual_cost_nanos, r.latency_ms, r.ttft_ms,
        r.status, r.error, r.system_tokens, r.context_saved_tokens, r.api, r.response_id, r.router_model,
    )


def upsert_sql(table: str, dims: tuple[str, ...], placeholder: str) -> str:
    """Add a delta row to a rollup: insert it, or add its measures to the existing row."""
    cols = dims + MEASURES
    values = ", ".join([placeholder] * len(cols))
    adds = ", ".join(f"{m} = {table}.{m} + excluded.{m}" for m in MEASURES)
    return (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({values}) "
            f"ON CONFLICT ({', '.join(dims)}) DO UPDATE SET {adds}")


def rollup_ddl(table: str, dims: tuple[str, ...], day_type: str, int_type: str) -> str:
    dim_cols = ", ".join(f"{d} {day_type if d == 'day' else 'TEXT'} NOT NULL" for d in dims if d not in LATE_DIMS)
    measure_cols = ", ".join(f"{m} {int_type} NOT NULL" for m in MEASURES)
    late_cols = "".join(f", {d} {API_TYPE}" for d in dims if d in LATE_DIMS)
    return (f"CREATE TABLE IF NOT EXISTS {table} ({dim_cols}, {measure_cols}{late_cols}, "
            f"PRIMARY KEY ({', '.join(dims)}))")


def migration_sql(records_have: set[str], rollup_has: set[str], record_types: dict[str, str],
                  rollup_key: Callable[[str, tuple[str, ...]], list[str]]) -> list[str]:
    """What brings an older ledger's tables (with these columns) up to date; empty when they are. Run in one
    transaction, under the backend's lock, after the ``CREATE ... IF NOT EXISTS``. ``rollup_key(table, dims)``
    is the backend's way to give a table a new primary key (PostgreSQL alters the constraint; SQLite, which
    cannot, rebuilds the table)."""
    added = [c for c in RECORD_COLUMNS if c not in records_have]
    sql = [f"ALTER TABLE records ADD COLUMN {c} {record_types.get(c, 'TEXT')}" for c in added]
    if "api" in added:
        sql.append(f"UPDATE records SET api = {LEGACY_API_SQL} WHERE purpose = 'embedding'")
    if "api" not in rollup_has:
        sql += [f"ALTER TABLE rollup_daily ADD COLUMN api {API_TYPE}",
                f"UPDATE rollup_daily SET api = {LEGACY_API_SQL} WHERE purpose = 'embedding'",
                *rollup_key("rollup_daily", DAILY_DIMS)]
    return sql


ROLLUPS = (("rollup_daily", DAILY_DIMS), ("rollup_tag", TAG_DIMS))
REQUEST_INDEX = "CREATE INDEX IF NOT EXISTS records_request_id ON records (request_id)"
# Feedback names a request by the answer's id as often as by the request id (metering.feedback).
RESPONSE_INDEX = "CREATE INDEX IF NOT EXISTS records_response_id ON records (response_id)"
# Raw-record views (recent expensive requests, hourly spend, percentiles) select by time.
STARTED_AT_INDEX = "CREATE INDEX IF NOT EXISTS records_started_at ON records (started_at)"

Entry = tuple[str, UsageRecord]  # (entry id, record)
