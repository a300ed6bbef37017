"""A record the database refuses never stops the ledger (issue 11, item 1), on real SQLite and PostgreSQL.

The poison records are the reproduction's: a NUL in a tag (PostgreSQL text and JSONB cannot hold it), a 9,000-byte
tag value (too big for the rollup's index row), plus a cost beyond BIGINT that neither backend can store. Each is
set aside in the dead-letter file while every other record is committed, at run time and in a start-up replay;
start-up and shutdown stay bounded when the database is stuck or gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from metering.ledger import Ledger, RecordRefused, WriterOptions, open_ledger
from metering.ledger.dead_letter import DeadLetterFile
from metering.record import UsageRecord
from tests.metering_fixtures import PG_URL, free_port, make_record, pg_schema, unavailable  # noqa: F401  (fixture)

NOV = (date(2026, 11, 1), date(2026, 12, 1))
SECRET = "sk-live-" + secrets.token_hex(8)  # a tag value that must never reach a log line
NUL_TAG = {"owner": f"a\u0000b{SECRET}"}
HUGE_TAG = {"owner": SECRET + secrets.token_hex(4500)}  # random, so TOAST cannot compress it below the limit
BEYOND_BIGINT = 2**63  # orjson encodes it; neither BIGINT nor SQLite INTEGER holds it


@dataclass
class Backend:
    name: str
    url: str
    schema: str

    def ledger(self, spool_dir: Path | None, **options: Any) -> Ledger:
        return open_ledger(self.url, spool_dir=spool_dir, schema=self.schema, options=WriterOptions(**options))

    def poisons(self) -> list[UsageRecord]:
        """Records this backend refuses: text PostgreSQL cannot store, and a cost neither can."""
        out = [make_record(900, request_id="poison-cost", cost_nanos=BEYOND_BIGINT)]
        if self.name == "postgres":
            out += [make_record(901, request_id="poison-nul", tags=NUL_TAG),
                    make_record(902, request_id="poison-huge", tags=HUGE_TAG)]
        return out


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", f"sqlite:///{tmp_path / 'ledger.db'}", "public")
    return Backend("postgres", PG_URL, request.getfixturevalue("pg_schema"))


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        # Not a speed target: a liveness bound, so a regression (a writer looping forever) fails instead of hanging.
        return await asyncio.wait_for(coro, 120)

    return asyncio.run(bounded())


def good(n: int, start: int = 0, cost: int = 1_000) -> list[UsageRecord]:
    return [make_record(i, request_id=f"good-{i}", cost_nanos=cost, tags={"owner": "ana"})
            for i in range(start, start + n)]


def spool_line(entry_id: str, record: UsageRecord) -> bytes:
    return entry_id.encode() + b" " + record.to_json()


async def totals(ledger: Ledger) -> tuple[int, int]:
    report = await ledger.report(*NOV, group_by=[])
    return report.totals.requests, report.totals.cost_nanos


async def replayed_totals(backend: Backend, spool: Path) -> tuple[int, int]:
    """Totals after a new ledger's start-up replayed what ``spool`` holds."""
    ledger = backend.ledger(spool)
    await ledger.start()
    out = await totals(ledger)
    await ledger.close()
    return out


def test_refused_records_are_set_aside_and_the_rest_committed(backend: Backend, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    spool = tmp_path / "spool"
    first, later = good(20), good(5, start=100)
    poisons = backend.poisons()
    batch = first[:7] + poisons[:1] + first[7:13] + poisons[1:] + first[13:]
    caplog.set_level(logging.INFO)

    async def go() -> dict[str, Any]:
        ledger = backend.ledger(spool)
        await ledger.start()
        for record in batch:  # no await between writes: one batch for the writer
            await ledger.write(record)
        await ledger.flush()
        after_batch = await totals(ledger)
        for record in later:
            await ledger.write(record)
        await ledger.flush()
        out = {"after_batch": after_batch, "after_later": await totals(ledger),
               "counted": ledger.dead_lettered, "dead": ledger.dead_letters}
        await ledger.close()
        return out

    out = run(go())
    assert out["after_batch"] == (20, 20_000)
    assert out["after_later"] == (25, 25_000)
    assert out["counted"] == len(poisons)
    dead = out["dead"]
    assert dead.path == Path(f"{spool}.dead-letter.jsonl")
    entries = dead.read()
    assert sorted(e["request_id"] for e in entries) == sorted(p.request_id for p in poisons)
    for entry in entries:
        assert entry["entry_id"] and entry["error_class"] and entry["error"]
        # The record is kept exactly: re-importable as a spool line.
        original = next(p for p in poisons if p.request_id == entry["request_id"])
        assert UsageRecord.from_json(__import__("orjson").dumps(entry["record"])) == original
    if backend.name == "postgres":
        states = {e["request_id"]: e["sqlstate"] for e in entries}
        assert states["poison-nul"] == "22P05" and states["poison-huge"] == "54000"
    assert list(spool.glob("*.spool")) == []
    refused_lines = [r.getMessage() for r in caplog.records if "refused entry" in r.getMessage()]
    assert len(refused_lines) == len(poisons)
    assert all(p.request_id in caplog.text for p in poisons)
    assert SECRET not in caplog.text


def test_sqlite_stores_what_postgresql_refuses(tmp_path: Path) -> None:
    """The reproduction's NUL and 9k tags are legal in SQLite: stored, not set aside (SQLite was not affected)."""
    backend = Backend("sqlite", f"sqlite:///{tmp_path / 'ledger.db'}", "public")

    async def go() -> tuple[tuple[int, int], int]:
        ledger = backend.ledger(tmp_path / "spool")
        await ledger.start()
        await ledger.write(make_record(1, tags=NUL_TAG))
        await ledger.write(make_record(2, tags=HUGE_TAG))
        await ledger.flush()
        out = (await totals(ledger), ledger.dead_lettered)
        await ledger.close()
        return out

    assert run(go()) == ((2, 54_000), 0)


def test_replay_sets_poison_aside_and_serves(backend: Backend, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    records = good(6)
    lines = [spool_line(f"dead-{i}", r) for i, r in enumerate(records[:3])]
    lines += [spool_line(f"dead-p{i}", p) for i, p in enumerate(backend.poisons())]
    lines += [b"dead-x {not json", b"no-space-at-all"]
    lines += [spool_line(f"dead-{i}", r) for i, r in enumerate(records[3:], start=3)]
    (spool / "1-dead-0000000001.spool").write_bytes(b"\n".join(lines) + b"\n")

    async def go() -> dict[str, Any]:
        ledger = backend.ledger(spool)
        await ledger.start()
        replayed = await totals(ledger)
        await ledger.write(make_record(50, request_id="after-replay", cost_nanos=7))
        await ledger.flush()
        out = {"replayed": replayed, "after": await totals(ledger), "counted": ledger.dead_lettered,
               "dead": ledger.dead_letters.read()}
        await ledger.close()
        return out

    out = run(go())
    assert out["replayed"] == (6, 6_000)
    assert out["after"] == (7, 6_007)
    poisons = backend.poisons()
    assert out["counted"] == len(poisons) + 2
    assert sorted(e["entry_id"] for e in out["dead"] if e["entry_id"]) == sorted(
        f"dead-p{i}" for i in range(len(poisons)))
    assert sorted(e["raw"] for e in out["dead"] if e["entry_id"] is None) == ["dead-x {not json", "no-space-at-all"]
    assert list(spool.glob("*.spool")) == []


def test_without_a_spool_the_writer_of_a_refused_record_gets_the_error(backend: Backend) -> None:
    async def go() -> tuple[list[Any], tuple[int, int]]:
        ledger = backend.ledger(None)
        await ledger.start()
        records = good(3) + backend.poisons()
        results = await asyncio.gather(*(ledger.write(r) for r in records), return_exceptions=True)
        out = (results, await totals(ledger))
        await ledger.close()
        return out

    results, committed = run(go())
    assert results[:3] == [None, None, None]
    assert results[3:] and all(isinstance(r, RecordRefused) for r in results[3:])
    assert committed == (3, 3_000)


def test_start_and_close_are_bounded_while_the_database_is_stuck(pg_schema: str, tmp_path: Path) -> None:
    """A transaction holding the rollup row a replay must update stalls it: start-up serves anyway, close() gives
    up after its wait, the records stay in the spool, and a later start commits each exactly once."""
    import psycopg

    backend = Backend("postgres", PG_URL, pg_schema)
    spool = tmp_path / "spool"
    records = good(4)

    async def create_tables() -> None:
        ledger = backend.ledger(None)
        await ledger.start()
        await ledger.close()

    run(create_tables())
    spool.mkdir()
    (spool / "1-dead-0000000001.spool").write_bytes(
        b"".join(spool_line(f"dead-{i}", r) + b"\n" for i, r in enumerate(records)))
    r = records[0]
    blocker = psycopg.connect(PG_URL, options=f"-c search_path={pg_schema}")
    try:
        blocker.execute(
            "INSERT INTO rollup_daily VALUES (%s, %s, %s, %s, %s, %s, 0, 0, 0, 0, 0, 0, 0, 0)",
            (r.day, r.team, r.key_id, r.model, r.tier, r.purpose))  # uncommitted: the replay's upsert waits on it

        async def stuck() -> tuple[bool, int]:
            ledger = backend.ledger(spool, replay_wait_s=0.5, close_wait_s=0.5)
            await ledger.start()  # returns although the replay cannot finish
            await ledger.write(make_record(60, request_id="while-stuck", cost_nanos=5))
            await ledger.close()  # returns although nothing can commit
            return True, len(list(spool.glob("*.spool")))

        served, segments = run(stuck())
        assert served
        assert segments == 2  # the dead process's segment and ours, both left for replay
    finally:
        blocker.rollback()
        blocker.close()

    assert run(replayed_totals(backend, spool)) == (5, 4_005)
    assert list(spool.glob("*.spool")) == []


# -- a private PostgreSQL, which this test may stop (never the shared one) -----------------------------------------
@dataclass
class PrivatePostgres:
    bin_dir: Path
    data: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin_dir / "pg_ctl"), "-D", str(self.data),
                        "-w", *args], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self._ctl("-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "-l", str(self.data / "log"), "start")

    def stop(self) -> None:
        self._ctl("-m", "immediate", "stop")


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins or shutil.which("runuser") is None or os.geteuid() != 0:
        unavailable("a private PostgreSQL (initdb, pg_ctl and runuser as root)")
    root = Path(tempfile.mkdtemp(prefix="tg-pg-"))
    shutil.chown(root, "postgres")
    server = PrivatePostgres(bins[-1].parent, root / "data", free_port())
    subprocess.run(["runuser", "-u", "postgres", "--", str(server.bin_dir / "initdb"), "-D", str(server.data),
                    "-A", "trust", "-U", "postgres", "--no-sync"],  # a throw-away cluster: no fsync of initdb's files
                   check=True, capture_output=True, timeout=120)
    server.start()
    try:
        yield server
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(server.bin_dir / "pg_ctl"), "-D", str(server.data),
                        "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_close_with_the_database_gone_returns_and_keeps_the_spool(private_pg: PrivatePostgres,
                                                                   tmp_path: Path) -> None:
    backend = Backend("postgres", private_pg.url, "public")
    spool = tmp_path / "spool"

    async def until_gone() -> int:
        ledger = backend.ledger(spool, close_wait_s=1.0)
        await ledger.start()
        for record in good(3):
            await ledger.write(record)
        await ledger.flush()
        private_pg.stop()
        for record in good(5, start=10):
            await ledger.write(record)
        await ledger.close()
        return sum(len(p.read_bytes().splitlines()) for p in spool.glob("*.spool"))

    assert run(until_gone()) == 5
    private_pg.start()

    assert run(replayed_totals(backend, spool)) == (8, 8_000)
    assert list(spool.glob("*.spool")) == []
    assert DeadLetterFile(f"{spool}.dead-letter.jsonl").read() == []
