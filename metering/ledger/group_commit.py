"""Group commit shared by the SQLite and PostgreSQL ledgers.

``write()`` appends the record to the spool (durable against ``kill -9`` in microseconds) and returns; one background
task commits everything that accumulated while its previous transaction ran, records and rollups together, so batch
size grows with load by itself and the request path never waits on the database. Without a spool directory
``write()`` waits for the transaction holding its record instead (slower per request; see benchmarks/ledger).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import secrets
from datetime import date
from pathlib import Path
from typing import Any, Sequence

from metering.ledger.base import Ledger
from metering.ledger.report import (GROUPS, SUMMED, Report, aggregate_sql, as_day, build_report,
                                    parse_group_by)
from metering.ledger.schema import RECORD_COLUMNS, Entry
from metering.ledger.spool import Segment, Spool
from metering.record import UsageRecord

log = logging.getLogger(__name__)

_RETRY_MAX_S = 5.0


LINGER_S = 0.05


class GroupCommitLedger(Ledger):
    placeholder = "?"

    def __init__(self, spool_dir: str | Path | None, max_batch: int = 5000) -> None:
        self._spool = Spool(spool_dir) if spool_dir is not None else None
        self._max_batch = max_batch
        self._pending: list[Entry] = []
        # Entry ids: unique per accepted write() across processes and restarts (the table's key, see schema.py).
        self._writer = secrets.token_hex(8)
        self._seq = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()  # a flush (or close) is waiting: cut the linger short
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.committed = 0

    # -- backend hooks -------------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def _open_db(self) -> None: ...

    @abc.abstractmethod
    async def _close_db(self) -> None: ...

    @abc.abstractmethod
    async def _insert(self, entries: Sequence[Entry]) -> int:
        """Insert entries not yet stored (by entry id) and add *those* to the rollups, in one transaction."""

    @abc.abstractmethod
    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...

    def _day_param(self, day: date) -> Any:
        return day.isoformat()

    # -- Ledger --------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._open_db()
        try:  # CREATE TABLE IF NOT EXISTS keeps an older table as it is: refuse it loudly, not on every commit
            await self._fetch(f"SELECT {', '.join(RECORD_COLUMNS)} FROM records WHERE 1 = 0", [])
        except Exception as exc:
            await self._close_db()
            raise RuntimeError(f"this ledger's records table was made by an older tiergate (missing columns); point "
                               f"metering.ledger at a new database or file ({exc})") from None
        if self._spool is not None:
            self._spool.open()
            await self._replay()
        self._task = asyncio.create_task(self._run(), name="ledger-group-commit")

    async def write(self, record: UsageRecord) -> None:
        if self._task is None or self._closing:
            raise RuntimeError("ledger is not running")
        self._seq += 1
        entry = (f"{self._writer}-{self._seq}", record)
        if self._spool is not None:
            self._spool.append(entry[0].encode() + b" " + record.to_json())
            self._pending.append(entry)
            self._wake.set()
            return
        self._pending.append(entry)
        await self._wait_for_commit()

    async def flush(self) -> None:
        if self._task is None or self._task.done():
            return
        await self._wait_for_commit()

    async def _wait_for_commit(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._urgent.set()
        self._wake.set()
        await fut

    async def query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """A read-only query over the ledger's tables; ``?`` placeholders are adapted to the backend."""
        return await self._fetch(sql.replace("?", self.placeholder), params)

    async def report(self, start: date, end: date, team: str | None = None,
                     group_by: Sequence[str] = ("team",)) -> Report:
        names = parse_group_by(group_by)
        start, end = as_day(start), as_day(end)
        params = [self._day_param(start), self._day_param(end)] + ([team] if team is not None else [])
        tables = ("rollup_tag", "rollup_daily")
        grouped = await self._fetch(aggregate_sql(names, self.placeholder, team is not None, *tables), params)
        if names and "tag" not in names:
            # Rows partition the records, so their exact integer sum is the total: no second scan.
            width = sum(len(GROUPS[g]) for g in names)
            total = [sum(int(t[i] or 0) for t in grouped) for i in range(width, width + len(SUMMED))]
        else:
            total = list((await self._fetch(aggregate_sql((), self.placeholder, team is not None, *tables),
                                            params))[0])
        return build_report(start, end, team, names, grouped, total)

    async def close(self, timeout: float = 30.0) -> None:
        if self._task is not None:
            self._closing = True
            self._urgent.set()
            self._wake.set()
            try:
                await asyncio.wait_for(self._task, timeout)
            except asyncio.TimeoutError:
                log.error("ledger: database unavailable at close; uncommitted records stay in the spool for replay")
            self._task = None
        if self._spool is not None:
            self._spool.close()
        await self._close_db()

    # -- background writer ---------------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if not self._waiters and not self._closing:
                # Records are already durable in the spool: linger to commit more of them per transaction,
                # which keeps the writer thread (and its GIL time) off the request path under load.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), LINGER_S)
            self._urgent.clear()
            self._wake.clear()
            batch, self._pending = self._pending, []
            waiters, self._waiters = self._waiters, []
            segment = self._spool.rotate() if self._spool is not None and batch else None
            try:
                await self._commit_with_retry(batch)
            except BaseException as exc:
                self._abandon(segment, waiters, exc)
                raise
            if segment is not None:
                Spool.discard(segment)
            for w in waiters:
                if not w.done():
                    w.set_result(None)
            if self._closing and not self._pending:
                return

    @staticmethod
    def _abandon(segment: Segment | None, waiters: list[asyncio.Future[None]], exc: BaseException) -> None:
        # Cancelled mid-commit: keep the segment file (replayed at next start) but release its lock.
        if segment is not None:
            os.close(segment.fd)
        for w in waiters:
            if not w.done():
                w.set_exception(RuntimeError(f"ledger stopped before commit: {exc!r}"))

    async def _commit_with_retry(self, batch: list[Entry]) -> None:
        delay = 0.05
        i = 0
        while i < len(batch):
            chunk = batch[i: i + self._max_batch]
            try:
                self.committed += await self._insert(chunk)
            except Exception:
                log.exception("ledger: commit of %d records failed; retrying in %.2fs", len(chunk), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            i += len(chunk)
            delay = 0.05

    async def _replay(self) -> None:
        assert self._spool is not None
        for segment, lines in self._spool.orphans():
            entries: list[Entry] = []
            for line in lines:
                try:
                    entry_id, data = line.split(b" ", 1)
                    entries.append((entry_id.decode(), UsageRecord.from_json(data)))
                except Exception:
                    log.exception("ledger: unreadable spool line in %s skipped", segment.path)
            await self._commit_with_retry(entries)
            log.info("ledger: replayed %d records from %s", len(entries), segment.path.name)
            Spool.discard(segment)
