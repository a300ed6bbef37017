"""Ledger scale benchmark: monthly reports over N raw records, and the write path's sustained records/s.

    .venv/bin/python benchmarks/ledger/bench_ledger.py report --backend sqlite --records 10000000
    .venv/bin/python benchmarks/ledger/bench_ledger.py report --backend postgres --records 10000000
    .venv/bin/python benchmarks/ledger/bench_ledger.py write --backend sqlite --records 100000

``report`` generates the raw rows inside the database (deterministic functions of the row number; bulk SQL, not
``write()``, to keep generation to minutes), builds the rollups from them with one GROUP BY, then times the
finance reports through ``Ledger.report`` (the API the proxy serves) and, for contrast, the same totals summed
from the raw rows. It also checks the rollup totals equal the raw sums. ``write`` drives ``Ledger.write`` from
concurrent tasks, as request handlers would, and reports records/s and write() latency percentiles, with the spool
(the default) and with write() waiting for the group commit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

from metering.ledger.base import Ledger
from metering.ledger.postgres import PostgresLedger
from metering.ledger.rollup import DAILY_DIMS, MEASURES, TAG_DIMS
from metering.ledger.sqlite import SqliteLedger, connect, create_schema
from metering.record import UsageRecord

PG_URL = os.environ.get("TIERGATE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
MONTH = (date(2026, 11, 1), date(2026, 12, 1))

# One generated record per i. HASH is a multiplicative hash of i, so team, key, model, purpose and day vary
# independently: every team uses every key, model and purpose every day (432 000 daily rollup rows a month, the
# worst case for the report). Same arithmetic in both dialects; {day}, {tags}, {false} and HASH differ.
_ROW = """
  printf_id AS entry_id, printf_id AS request_id, {day} AS day, '2026-11-01T00:00:00+00:00' AS started_at,
  '2026-11-01T00:00:01+00:00' AS ended_at, 'team-' || (HASH % 200) AS team,
  'key-' || (HASH % 200) || '-' || ((HASH / 200) % 4) AS key_id, {tags} AS tags, 'auto' AS requested_model,
  CASE (HASH / 800) % 6 WHEN 0 THEN 'small' WHEN 1 THEN 'small' WHEN 2 THEN 'medium' WHEN 3 THEN 'medium'
    ELSE 'large' END AS tier,
  'dep-' || ((HASH / 800) % 6) AS deployment, 'model-' || ((HASH / 800) % 6) AS model,
  CASE (HASH / 4800) % 3 WHEN 0 THEN 'chat' WHEN 1 THEN 'summarization' ELSE 'extraction' END AS purpose,
  0.5 AS score, (i * 31) % 5000 + 10 AS prompt_tokens, (i * 37) % 800 + 1 AS completion_tokens,
  ((i * 31) % 5000 + 10) / 3 AS cached_tokens, 0 AS cache_write_tokens, ((i * 37) % 800 + 1) / 4 AS reasoning_tokens,
  {false} AS usage_estimated, ((i * 31) % 5000 + 10) * 2500 + ((i * 37) % 800 + 1) * 10000 + (i % 7) AS cost_nanos,
  ((i * 31) % 5000 + 10) * 7500 + ((i * 37) % 800 + 1) * 30000 AS counterfactual_cost_nanos,
  800 AS latency_ms, 120 AS ttft_ms, 200 AS status, NULL AS error, 0 AS system_tokens, 0 AS context_saved_tokens,
  'chat' AS api, NULL AS response_id, NULL AS router_model
"""
_DAY_OF = "((HASH / 14400) % 30)"

_SUMS = ", ".join(f"SUM({m})" for m in MEASURES[1:])


def _rollup_from_raw(tag_each: str) -> list[str]:
    dims, tdims = ", ".join(DAILY_DIMS), ", ".join(TAG_DIMS)
    return [
        f"INSERT INTO rollup_daily ({dims}, {', '.join(MEASURES)}) SELECT {dims}, COUNT(*), {_SUMS} "
        f"FROM records GROUP BY {dims}",
        f"INSERT INTO rollup_tag ({tdims}, {', '.join(MEASURES)}) SELECT day, team, t.key, t.value, COUNT(*), "
        f"{_SUMS} FROM records, {tag_each} AS t GROUP BY day, team, t.key, t.value",
    ]


def generate_sqlite(path: Path, n: int) -> None:
    conn = connect(path)
    create_schema(conn)
    conn.execute("PRAGMA synchronous=OFF")
    row = _ROW.format(day=f"date('2026-11-01', '+' || {_DAY_OF} || ' days')", false="0",
                      tags="'{\"exp\":\"e' || ((HASH / 432000) % 5) || '\",\"owner\":\"o' "
                           "|| ((HASH / 2160000) % 7) || '\"}'")
    row = row.replace("printf_id", "printf('r%010d', i)").replace("HASH", "((i * 2654435761) % 4294967296)")
    step = 1_000_000
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        conn.execute("BEGIN")
        conn.execute(f"WITH RECURSIVE c(i) AS (SELECT {lo} UNION ALL SELECT i + 1 FROM c WHERE i < {hi - 1}) "
                     f"INSERT INTO records SELECT {row} FROM c")
        conn.execute("COMMIT")
        print(f"  raw rows: {hi:,}", flush=True)
    conn.execute("BEGIN")
    for sql in _rollup_from_raw("json_each(records.tags)"):
        conn.execute(sql)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


async def generate_postgres(ledger: PostgresLedger, n: int) -> None:
    row = _ROW.format(day=f"date '2026-11-01' + {_DAY_OF}::int", false="false",
                      tags="jsonb_build_object('exp', 'e' || ((HASH / 432000) % 5), "
                           "'owner', 'o' || ((HASH / 2160000) % 7))")
    row = row.replace("HASH", "((i::bigint * 2654435761) % 4294967296)").replace(
        "printf_id", "'r' || lpad(i::text, 10, '0')").replace(
        "'2026-11-01T00:00:00+00:00'", "timestamptz '2026-11-01T00:00:00+00:00'").replace(
        "'2026-11-01T00:00:01+00:00'", "timestamptz '2026-11-01T00:00:01+00:00'")
    async with ledger._pool.connection() as conn:
        await conn.execute("SET synchronous_commit = off")
        step = 1_000_000
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            await conn.execute(f"INSERT INTO records SELECT {row} FROM generate_series({lo}, {hi - 1}) AS i")
            await conn.commit()
            print(f"  raw rows: {hi:,}", flush=True)
        for sql in _rollup_from_raw("jsonb_each_text(records.tags)"):
            await conn.execute(sql)
        await conn.execute("ANALYZE")


def _time(label: str, results: dict[str, float]):
    class Timer:
        def __enter__(self) -> None:
            self.t0 = time.perf_counter()

        def __exit__(self, *exc: object) -> None:
            results[label] = time.perf_counter() - self.t0
            print(f"  {label}: {results[label] * 1000:.0f} ms", flush=True)

    return Timer()


async def time_reports(ledger: Ledger, raw_sum: callable) -> dict[str, float]:
    results: dict[str, float] = {}
    for group_by in (["team"], ["team", "model", "tier"], ["day"], ["tag"], ["team", "tag", "day"], ["key"]):
        label = f"monthly report group_by={','.join(group_by)}"
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            report = await ledger.report(*MONTH, group_by=group_by)
            best = min(best, time.perf_counter() - t0)
        results[label] = best
        print(f"  {label}: {best * 1000:.0f} ms ({len(report.rows):,} rows)", flush=True)
    # Tags with a dimension the tag rollup lacks are summed from the records (a scan of the month), timed once.
    for group_by in (["tag", "model"], ["tag", "key", "day"]):
        with _time(f"monthly report group_by={','.join(group_by)} (records scan)", results):
            await ledger.report(*MONTH, group_by=group_by)
    with _time("monthly report team=team-7 group_by=model,day", results):
        await ledger.report(*MONTH, team="team-7", group_by=["model", "day"])
    with _time("spend_by_team (/v1/spend/teams)", results):
        await ledger.spend_by_team(date(2026, 11, 30))
    total = await ledger.report(*MONTH, group_by=[])
    with _time("same totals summed from raw rows (what rollups avoid)", results):
        raw = raw_sum()
    assert (total.totals.requests, total.totals.cost_nanos) == raw, (total.totals, raw)
    print(f"  check: rollup totals == raw sums ({raw[0]:,} records, {raw[1]:,} nano-dollars)")
    return results


async def bench_report(backend: str, n: int, keep: str | None) -> None:
    if backend == "sqlite":
        path = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="tg-ledger-bench-")) / "ledger.db"
        if not path.exists():
            t0 = time.perf_counter()
            generate_sqlite(path, n)
            print(f"generated {n:,} records + rollups in {time.perf_counter() - t0:.0f} s "
                  f"({path.stat().st_size / 2**30:.2f} GiB)")
        ledger: Ledger = SqliteLedger(path, spool_dir=None)

        def raw_sum() -> tuple[int, int]:
            conn = sqlite3.connect(path)
            try:
                c, s = conn.execute("SELECT COUNT(*), SUM(cost_nanos) FROM records").fetchone()
                return int(c), int(s)
            finally:
                conn.close()
    else:
        schema = keep or f"tg_bench_{os.getpid()}"
        ledger = PostgresLedger(PG_URL, spool_dir=None, schema=schema)
        import psycopg

        def raw_sum() -> tuple[int, int]:
            with psycopg.connect(PG_URL, options=f"-c search_path={schema}") as conn:
                c, s = conn.execute("SELECT COUNT(*), SUM(cost_nanos) FROM records").fetchone()
                return int(c), int(s)
    await ledger.start()
    if backend == "postgres":
        with psycopg.connect(PG_URL, options=f"-c search_path={schema}") as conn:
            empty = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM records)").fetchone()[0]
        if empty:
            t0 = time.perf_counter()
            await generate_postgres(ledger, n)  # type: ignore[arg-type]
            print(f"generated {n:,} records + rollups in {time.perf_counter() - t0:.0f} s (schema {schema})")
    await time_reports(ledger, raw_sum)
    await ledger.close()
    if keep is None:  # a throw-away run leaves nothing behind
        if backend == "sqlite":
            shutil.rmtree(path.parent)
        else:
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _record(i: int) -> UsageRecord:
    now = datetime.now(UTC)
    return UsageRecord(
        request_id=f"w{os.getpid()}-{i}", started_at=now, ended_at=now, team=f"team-{i % 50}", key_id=f"k{i % 200}",
        requested_model="auto", model=f"model-{i % 6}", tier="small", status=200, tags={"exp": f"e{i % 5}"},
        prompt_tokens=1200, completion_tokens=300, cached_tokens=400, cost_nanos=1_234_567 + i,
        counterfactual_cost_nanos=9_000_000,
    )


async def bench_write(backend: str, n: int, spool: bool, concurrency: int = 64) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tg-ledger-write-"))
    spool_dir = tmp / "spool" if spool else None
    if backend == "sqlite":
        ledger: Ledger = SqliteLedger(tmp / "ledger.db", spool_dir=spool_dir)
    else:
        ledger = PostgresLedger(PG_URL, spool_dir=spool_dir, schema=f"tg_wbench_{os.getpid()}_{int(spool)}")
    await ledger.start()
    records = [_record(i) for i in range(n)]
    latencies: list[float] = []

    async def handler(chunk: list[UsageRecord]) -> None:
        for r in chunk:
            t0 = time.perf_counter()
            await ledger.write(r)
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(0)  # a real handler yields on I/O between requests

    t0 = time.perf_counter()
    await asyncio.gather(*(handler(records[i::concurrency]) for i in range(concurrency)))
    t_ack = time.perf_counter() - t0
    await ledger.flush()
    t_all = time.perf_counter() - t0
    report = await ledger.report(date(2000, 1, 1), date(2100, 1, 1), group_by=[])
    assert report.totals.requests == n
    await ledger.close()
    shutil.rmtree(tmp)
    if backend == "postgres":
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {ledger.schema} CASCADE")  # type: ignore[attr-defined]
    q = statistics.quantiles(latencies, n=100)
    mode = "spool" if spool else "wait-for-commit"
    print(f"{backend:8s} {mode:16s} {n:,} records, {concurrency} writers: {n / t_all:,.0f} records/s committed "
          f"(acked in {t_ack:.2f} s, committed in {t_all:.2f} s); write() p50 {q[49] * 1e6:,.0f} us, "
          f"p99 {q[98] * 1e6:,.0f} us")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("report", "write"))
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--records", type=int, default=10_000_000)
    p.add_argument("--keep", help="reuse this SQLite file / PostgreSQL schema (generated if missing)")
    args = p.parse_args()
    if args.what == "report":
        asyncio.run(bench_report(args.backend, args.records, args.keep))
    else:
        for spool in (True, False):
            asyncio.run(bench_write(args.backend, args.records, spool))


if __name__ == "__main__":
    main()
