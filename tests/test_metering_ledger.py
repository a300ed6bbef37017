"""Ledger on real SQLite and PostgreSQL: rollups equal raw sums, grouping, CSV/JSON agreement, idempotent spool
replay, and records surviving kill -9 of the writing process."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, timedelta
from pathlib import Path
from typing import Any

import pytest

from metering.ledger import Ledger, open_ledger
from metering.ledger.base import month_bounds
from metering.ledger.group_commit import GroupCommitLedger
from metering.ledger.spool import Spool
from metering.record import UsageRecord
from tests.metering_fixtures import PG_URL, T0, make_record, pg_schema  # noqa: F401  (pg_schema is a fixture)

HERE = Path(__file__).resolve().parent
NOV = (date(2026, 11, 1), date(2026, 12, 1))


@dataclass
class Backend:
    name: str
    url: str
    schema: str

    def ledger(self, spool_dir: Path | None) -> Ledger:
        return open_ledger(self.url, spool_dir=spool_dir, schema=self.schema)

    def raw(self, sql: str) -> list[tuple[Any, ...]]:
        """Query the raw tables directly (bypassing the rollups) to check them against."""
        if self.name == "sqlite":
            conn = sqlite3.connect(self.url[len("sqlite:///"):])
            try:
                return conn.execute(sql).fetchall()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.url, options=f"-c search_path={self.schema}") as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", f"sqlite:///{tmp_path / 'ledger.db'}", "public")
    return Backend("postgres", PG_URL, request.getfixturevalue("pg_schema"))


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(fn())


def random_records(n: int, seed: int) -> list[UsageRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = rng.randint(0, 50_000)
        cached = rng.randint(0, prompt // 2)
        completion = rng.randint(0, 4_000)
        tags = {k: rng.choice(vals) for k, vals in (("owner", ["ana", "bo"]), ("exp", ["x1", "x2", "x3"]))
                if rng.random() < 0.6}
        out.append(make_record(
            i, request_id=f"r{seed}-{i}",
            started_at=T0 + timedelta(days=rng.randint(-3, 3), seconds=rng.randint(0, 80_000)),
            team=rng.choice(["alpha", "beta", "gamma"]), key_id=rng.choice(["k1", "k2"]),
            model=rng.choice(["gpt-4o", "gpt-4o-mini", "claude"]), tier=rng.choice(["small", "large"]),
            purpose=rng.choice(["chat", "summarization"]), tags=tags,
            prompt_tokens=prompt, cached_tokens=cached, completion_tokens=completion,
            reasoning_tokens=rng.randint(0, completion), cache_write_tokens=rng.randint(0, prompt - cached),
            cost_nanos=rng.randint(0, 10**12), counterfactual_cost_nanos=rng.randint(0, 10**13),
        ))
    return out


async def write_all(ledger: Ledger, records: list[UsageRecord]) -> None:
    # Concurrent writers, as request handlers would be.
    async def one(chunk: list[UsageRecord]) -> None:
        for r in chunk:
            await ledger.write(r)
            await asyncio.sleep(0)

    await asyncio.gather(*(one(records[i::8]) for i in range(8)))
    await ledger.flush()


def test_rollups_equal_raw_sums_and_python_sums(backend: Backend, tmp_path: Path) -> None:
    records = random_records(1500, seed=7)

    async def go() -> Any:
        ledger = backend.ledger(tmp_path / "spool")
        await ledger.start()
        await write_all(ledger, records)
        report = await ledger.report(date(2026, 10, 1), date(2026, 12, 1), group_by=["team", "model"])
        await ledger.close()
        return report

    report = run(go)
    expected: dict[tuple[str, str], list[int]] = {}
    for r in records:
        acc = expected.setdefault((r.team, r.model), [0, 0, 0])
        acc[0] += 1
        acc[1] += r.cost_nanos
        acc[2] += r.prompt_tokens
    got = {(row.keys["team"], row.keys["model"]): [row.totals.requests, row.totals.cost_nanos,
                                                   row.totals.prompt_tokens] for row in report.rows}
    assert got == expected
    assert report.totals.cost_nanos == sum(r.cost_nanos for r in records)
    assert report.totals.counterfactual_cost_nanos == sum(r.counterfactual_cost_nanos for r in records)
    raw = backend.raw("SELECT team, model, COUNT(*), SUM(cost_nanos), SUM(prompt_tokens) FROM records "
                      "GROUP BY team, model")
    assert {(t, m): [int(c), int(s), int(p)] for t, m, c, s, p in raw} == expected
    # Tag rollup: each record counted once per tag it carries.
    tag_expected: dict[tuple[str, str], int] = {}
    for r in records:
        for k, v in r.tags.items():
            tag_expected[(k, v)] = tag_expected.get((k, v), 0) + r.cost_nanos
    tag_raw = backend.raw("SELECT tag_key, tag_value, SUM(cost_nanos) FROM rollup_tag GROUP BY tag_key, tag_value")
    assert {(k, v): int(s) for k, v, s in tag_raw} == tag_expected


def test_report_grouping_filters_and_formats(backend: Backend, tmp_path: Path) -> None:
    day1, day2 = T0, T0 + timedelta(days=1)
    records = [
        make_record(1, team="a", model="big", tier="large", started_at=day1, cost_nanos=123_450,
                    counterfactual_cost_nanos=123_450, tags={"exp": "e1"}, key_id="k1", purpose="chat"),
        make_record(2, team="a", model="small", tier="small", started_at=day2, cost_nanos=1_000,
                    counterfactual_cost_nanos=123_450, tags={"exp": "e1", "owner": "ana"}, key_id="k2",
                    purpose="summarization"),
        make_record(3, team="b", model="small", tier="small", started_at=day2, cost_nanos=2_000_000_001,
                    counterfactual_cost_nanos=3_000_000_000, key_id="k3"),
        make_record(4, team="b", started_at=T0 + timedelta(days=40), cost_nanos=7),  # December: out of range
    ]

    async def go() -> dict[str, Any]:
        ledger = backend.ledger(tmp_path / "spool")
        await ledger.start()
        await write_all(ledger, records)
        out = {
            "team": await ledger.report(*NOV, group_by=["team"]),
            "day_tier": await ledger.report(*NOV, group_by=["day", "tier"]),
            "team_a_model": await ledger.report(*NOV, team="a", group_by=["model"]),
            "tag": await ledger.report(*NOV, group_by=["tag"]),
            "key_purpose": await ledger.report(*NOV, group_by=["key", "purpose"]),
            "teams": await ledger.spend_by_team(day2.date()),
            "tag_model": await ledger.report(*NOV, group_by=["tag", "model"]),
        }
        with pytest.raises(ValueError):
            await ledger.report(*NOV, group_by=["colour"])
        await ledger.close()
        return out

    out = run(go)
    team = out["team"].to_dict()
    assert team["rows"] == [
        {"team": "a", "requests": 2, "prompt_tokens": 200, "completion_tokens": 40, "cached_tokens": 0,
         "reasoning_tokens": 0, "cost_usd": "0.000124450", "counterfactual_cost_usd": "0.000246900",
         "savings_usd": "0.000122450"},
        {"team": "b", "requests": 1, "prompt_tokens": 100, "completion_tokens": 20, "cached_tokens": 0,
         "reasoning_tokens": 0, "cost_usd": "2.000000001", "counterfactual_cost_usd": "3.000000000",
         "savings_usd": "0.999999999"},
    ]
    assert team["totals"]["cost_usd"] == "2.000124451"
    assert [(r.keys["day"], r.keys["tier"], r.totals.requests) for r in out["day_tier"].rows] == [
        ("2026-11-05", "large", 1), ("2026-11-06", "small", 2)]
    assert [(r.keys["model"], r.totals.cost_nanos) for r in out["team_a_model"].rows] == [("big", 123_450),
                                                                                         ("small", 1_000)]
    assert out["team_a_model"].totals.requests == 2
    # each tag key's rows, its untagged row (None) included, sum to the total
    assert [(r.keys["tag_key"], r.keys["tag_value"], r.totals.requests) for r in out["tag"].rows] == [
        ("exp", "e1", 2), ("exp", None, 1), ("owner", "ana", 1), ("owner", None, 2)]
    assert out["tag"].totals.requests == 3  # totals count records, not tag rows
    assert [(r.keys["tag_key"], r.keys["tag_value"], r.keys["model"], r.totals.cost_nanos)
            for r in out["tag_model"].rows] == [
        ("exp", "e1", "big", 123_450), ("exp", "e1", "small", 1_000), ("exp", None, "small", 2_000_000_001),
        ("owner", "ana", "small", 1_000), ("owner", None, "big", 123_450), ("owner", None, "small", 2_000_000_001)]
    assert [(r.keys["key_id"], r.keys["purpose"]) for r in out["key_purpose"].rows] == [
        ("k1", "chat"), ("k2", "summarization"), ("k3", "chat")]
    assert [(t.team, t.day_nanos, t.month_nanos) for t in out["teams"]] == [("a", 1_000, 124_450),
                                                                             ("b", 2_000_000_001, 2_000_000_001)]


def test_csv_and_json_agree(backend: Backend, tmp_path: Path) -> None:
    records = random_records(300, seed=11)

    async def go() -> Any:
        ledger = backend.ledger(None)  # also exercises the wait-for-commit mode
        await ledger.start()
        await write_all(ledger, records)
        report = await ledger.report(date(2026, 10, 1), date(2026, 12, 1), group_by=["team", "day", "tag"])
        await ledger.close()
        return report

    report = run(go)
    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert list(rows[0].keys()) == ["team", "day", "tag_key", "tag_value", "requests", "prompt_tokens",
                                    "completion_tokens", "cached_tokens", "reasoning_tokens", "cost_usd",
                                    "counterfactual_cost_usd", "savings_usd"]
    as_json = report.to_dict()["rows"]
    assert len(rows) == len(as_json) > 10
    assert rows == [{k: "" if v is None else str(v) for k, v in row.items()} for row in as_json]


def test_spool_replay_is_idempotent(backend: Backend, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    old = [make_record(i, cost_nanos=1000 + i) for i in range(3)]
    new = make_record(99, cost_nanos=5)

    async def go() -> Any:
        ledger = backend.ledger(spool_dir)
        await ledger.start()
        await write_all(ledger, old)
        await ledger.close()
        # A dead process's segment holding two committed entries, a new one (twice), and a torn last line.
        entry = dict((rid, eid) for eid, rid in backend.raw("SELECT entry_id, request_id FROM records"))
        lines = [f"{entry[r.request_id]} ".encode() + r.to_json() for r in old[:2]]
        lines += [b"dead-1 " + new.to_json()] * 2
        (spool_dir / "1-dead-0000000001.spool").write_bytes(b"\n".join(lines) + b"\n" + lines[-1][:20])
        ledger = backend.ledger(spool_dir)
        await ledger.start()
        report = await ledger.report(*NOV, group_by=[])
        await ledger.close()
        return report

    report = run(go)
    assert report.totals.requests == 4
    assert report.totals.cost_nanos == 1000 + 1001 + 1002 + 5
    assert list(spool_dir.glob("*.spool")) == []


def test_requests_sharing_a_client_request_id_are_each_billed(backend: Backend, tmp_path: Path) -> None:
    records = [make_record(i, request_id="client-chose-this", cost_nanos=10 + i) for i in range(3)]

    async def go() -> Any:
        ledger = backend.ledger(tmp_path / "spool")
        await ledger.start()
        await write_all(ledger, records)
        report = await ledger.report(*NOV, group_by=[])
        await ledger.close()
        return report

    report = run(go)
    assert (report.totals.requests, report.totals.cost_nanos) == (3, 33)
    assert backend.raw("SELECT COUNT(*) FROM records WHERE request_id = 'client-chose-this'")[0][0] == 3


def test_live_segments_are_not_replayed_by_another_process(tmp_path: Path) -> None:
    live = Spool(tmp_path)
    live.open()
    live.append(b'{"x": 1}')
    other = Spool(tmp_path)
    other.open()
    assert list(other.orphans()) == []  # locked by `live`
    live.close()  # non-empty: left behind, now unlocked
    found = list(other.orphans())
    assert [lines for _, lines in found] == [[b'{"x": 1}']]
    for segment, _ in found:
        Spool.discard(segment)
    other.close()


def test_month_bounds_december() -> None:
    assert month_bounds(date(2026, 12, 31)) == (date(2026, 12, 1), date(2027, 1, 1))


def test_kill9_loses_no_acknowledged_record(backend: Backend, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    tag = f"kill{os.getpid()}"
    env = {**os.environ, "PYTHONPATH": f"{HERE.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen(
        [sys.executable, str(HERE / "metering_child.py"), backend.url, str(spool_dir), backend.schema, tag],
        stdout=subprocess.PIPE, env=env,
    )
    assert child.stdout is not None
    acked: list[str] = []
    deadline = time.monotonic() + 30
    while len(acked) < 3000 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        acked.append(line.decode().strip())
    os.kill(child.pid, signal.SIGKILL)
    rest = child.stdout.read()  # ids printed before the kill landed are acknowledged too
    child.wait()
    acked += [ln for ln in rest.decode().splitlines() if ln.strip()]
    assert len(acked) >= 3000, "child did not get going"
    # Some acknowledged records were committed by the child, the rest must come back from its spool.
    before = {r[0] for r in backend.raw(f"SELECT request_id FROM records WHERE request_id LIKE '{tag}-%'")}

    async def reopen() -> Any:
        ledger = backend.ledger(spool_dir)
        await ledger.start()
        report = await ledger.report(date(2000, 1, 1), date(2100, 1, 1), team="kill", group_by=[])
        await ledger.close()
        return report

    report = run(reopen)
    stored = {r[0] for r in backend.raw(f"SELECT request_id FROM records WHERE request_id LIKE '{tag}-%'")}
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {sorted(missing)[:3]}"
    assert len(before) < len(stored), "nothing needed replay: the test did not kill mid-way"
    # Rollups agree with the raw rows after the replay (no double count of records the child had committed).
    assert report.totals.requests == len(stored)
    assert report.totals.cost_nanos == 1234 * len(stored)


def test_report_bounds_are_days() -> None:
    from datetime import datetime

    from metering.ledger.report import as_day

    assert as_day(datetime(2026, 11, 1, tzinfo=UTC)) == date(2026, 11, 1)
    with pytest.raises(ValueError):
        as_day(datetime(2026, 11, 1, 5, tzinfo=UTC))


def test_a_flush_commits_what_the_other_workers_spooled(backend: Backend, tmp_path: Path) -> None:
    """Two workers' ledgers on one database and spool directory. Worker A has answered two requests (one refused,
    at no cost) and spooled their records, but its commit is held up; worker B, asked for a report, flushes: the
    report holds both, and A's own commit later adds nothing twice (a report another worker gives right after a
    request completed must not be revised later)."""
    records = [make_record(1, team="t", tags={"experiment": "e"}),
               make_record(2, team="t", tags={"experiment": "e"}, status=429, cost_nanos=0, prompt_tokens=0,
                           completion_tokens=0, counterfactual_cost_nanos=0)]

    async def totals(ledger: Ledger) -> tuple[int, int]:
        t = (await ledger.report(T0.date(), T0.date() + timedelta(days=1), team="t", group_by=())).totals
        return t.requests, t.cost_nanos

    async def go() -> None:
        a, b = backend.ledger(tmp_path / "spool"), backend.ledger(tmp_path / "spool")
        assert isinstance(a, GroupCommitLedger)
        await a.start()
        await b.start()
        release = asyncio.Event()
        insert = a._insert

        async def held_up(entries: Any) -> int:  # A's commit waits, as behind a linger or a slow transaction
            await release.wait()
            return await insert(entries)

        a._insert = held_up  # type: ignore[method-assign]
        for record in records:
            await a.write(record)  # spooled: the client has its answer
        await b.flush()
        assert await totals(b) == (2, 27_000)
        release.set()
        await a.flush()
        assert await totals(a) == await totals(b) == (2, 27_000)
        await a.close()
        await b.close()

    run(go)
