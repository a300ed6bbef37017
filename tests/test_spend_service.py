"""``pipeline.spend.Spend`` (the runtime's ``spend``) over a real SQLite ledger with a spool: a read sees a record
whose ``write()`` returned before its commit (flush then read), and a database that does not commit within the
timeout is the taxonomy's ``ledger_unavailable`` at once, not a hung request; once the database commits again the
same read answers with the record."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import pytest

from metering.budgets.memory_store import MemoryBudgetStore
from metering.ledger import open_ledger
from metering.service import Meter
from pipeline.errors import TiergateError
from pipeline.spend import Spend
from tests.metering_fixtures import T0, make_record

DAY = T0.date()


def test_reads_wait_for_the_commit_and_a_stuck_ledger_is_unavailable(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"

    async def scenario() -> None:
        ledger = open_ledger(f"sqlite:///{db}", spool_dir=tmp_path / "spool")
        await ledger.start()
        spend = Spend(Meter(ledger, MemoryBudgetStore()), flush_timeout_s=0.5)
        try:
            for i in range(3):  # returns once spooled: the commit follows in the background
                await ledger.write(make_record(i, completion_tokens=10 * (i + 1), cost_nanos=1_000))
            rows = await spend.output_percentiles(DAY, DAY + timedelta(days=1), None)
            assert [(r.requests, r.p50, r.p95) for r in rows] == [(3, 20, 30)]
            found = await spend.report(DAY, DAY + timedelta(days=1), "team-a", ["team", "model"])
            assert found.report.totals.cost_nanos == 3_000
            assert found.percentiles is not None and found.percentiles[("team-a", "gpt-4o-mini")].p95 == 30

            blocker = sqlite3.connect(db, isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock: commits wait
            await ledger.write(make_record(3, cost_nanos=5_000))
            began = time.monotonic()
            with pytest.raises(TiergateError) as refused:
                await spend.report(DAY, DAY + timedelta(days=1), "team-a", ["team"])
            assert refused.value.code == "ledger_unavailable" and "did not commit" in refused.value.message
            assert time.monotonic() - began < 3
            blocker.execute("ROLLBACK")
            blocker.close()
            again = await spend.report(DAY, DAY + timedelta(days=1), "team-a", ["team"])
            assert again.report.totals.cost_nanos == 8_000 and again.percentiles is None
        finally:
            await ledger.close()

    asyncio.run(scenario())
