"""Group commit shared by the SQLite and PostgreSQL ledgers.

``write()`` appends the record to the spool (durable against ``kill -9`` in microseconds) and returns; one background
task commits everything that accumulated while its previous transaction ran, records and rollups together, so batch
size grows with load by itself and the request path never waits on the database. Without a spool directory
``write()`` waits for the transaction holding its record instead (slower per request; see benchmarks/ledger).
``flush()`` (flush then read, before every report) also commits what the other processes sharing the spool
directory, the server's other workers, had spooled: a request answered by one worker is in a report another gives
right after. A record is stored once whoever commits it (its entry id is the key; rollups add only new records).

Nothing a record contains can stop the writer: a batch the database refuses for its data (``refusal.py``) is split
in halves until the refused records are alone; the rest are committed and each refused one goes to the dead-letter
file (``dead_letter.py``) with an ERROR log line, counted in ``dead_lettered``. Only unavailability is retried, with
backoff. Start-up waits at most ``replay_wait_s`` for the replay of a dead process's spool (the rest continues in
the background) and ``close()`` at most ``close_wait_s`` for the last commit; what is not committed by then stays in
the spool for the next start.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from metering import feedback as fb
from metering import routing_models as rm
from metering.ledger.alert_log import SELECT_ALERTS, AlertEvent, AlertQuery
from metering.ledger.audit_reads import UsageAuditRows, usage_audit
from metering.ledger.base import Ledger
from metering.ledger.dead_letter import DeadLetterFile
from metering.ledger.insights import HourSpend, Order, OutputPercentiles, RecordQueries, RequestCost, RequestRow
from metering.ledger.refusal import is_refusal, label, message
from metering.ledger.report import (
    GROUPS,
    SUMMED,
    Report,
    aggregate_sql,
    as_day,
    build_report,
    midnight,
    parse_group_by,
    source_of,
)
from metering.ledger.schema import RECORD_COLUMNS, Entry
from metering.ledger.spool import Segment, Spool
from metering.outcomes import Outcome, insert_outcome_sql, select_outcomes_sql
from metering.record import UsageRecord
from metering.retrain_claims import claim_sql

log = logging.getLogger(__name__)

_RETRY_MIN_S = 0.05
_RETRY_MAX_S = 5.0
LINGER_S = 0.05

# What ``records()`` reads back: the stored columns that are record fields (not the entry id or the billing day).
_RECORD_FIELDS = tuple(c for c in RECORD_COLUMNS if c in {f.name for f in fields(UsageRecord)})
_STARTED = _RECORD_FIELDS.index("started_at")
_RECORDS_PAGE = 5000


def _record_of(row: Sequence[Any]) -> UsageRecord:
    """A stored row as the record it was written from; SQLite keeps ISO text, integer booleans and JSON text."""
    values = dict(zip(_RECORD_FIELDS, row[1:]))
    for name in ("started_at", "ended_at"):
        at = values[name]
        values[name] = (datetime.fromisoformat(at) if isinstance(at, str) else at).astimezone(UTC)
    tags = values["tags"]
    values["tags"] = orjson.loads(tags) if isinstance(tags, (str, bytes)) else (tags or {})
    values["usage_estimated"] = bool(values["usage_estimated"])
    return UsageRecord(**values)


def _entry_of(line: bytes) -> Entry:
    """One spool line (``<entry id> <record JSON>``) as an entry; raises on a torn or poison line."""
    entry_id, data = line.split(b" ", 1)
    return entry_id.decode(), UsageRecord.from_json(data)


def _entries_of(lines: Sequence[bytes]) -> list[Entry]:
    """Spool lines as entries; an unreadable one is left to its own process (or the replay of its spool)."""
    entries: list[Entry] = []
    for line in lines:
        try:
            entries.append(_entry_of(line))
        except Exception:  # noqa: BLE001 - its writer sets it aside (a torn or poison line)
            continue
    return entries


@dataclass(frozen=True, slots=True)
class WriterOptions:
    """How the background writer batches and how long start-up and shutdown wait for the database."""

    max_batch: int = 5000  # records per transaction
    dead_letter_path: str | Path | None = None  # default: ``<spool dir>.dead-letter.jsonl`` beside the spool
    replay_wait_s: float = 10.0  # start-up serves after this even if a dead process's spool is not yet committed
    close_wait_s: float = 5.0  # close() gives up on a stuck database after this; the spool keeps the rest


class RecordRefused(Exception):
    """Without a spool, ``write()`` raises this for a record the database refuses: the caller still holds it."""


class GroupCommitLedger(Ledger):
    placeholder = "?"
    tag_rows = "json_each({tags})"  # a record's tags as (key, value) rows, for reports the rollups cannot answer

    def __init__(self, spool_dir: str | Path | None, options: WriterOptions = WriterOptions()) -> None:
        """Without a spool and a dead-letter path, ``write()`` raises ``RecordRefused`` for a record the database
        refuses."""
        self._spool = Spool(spool_dir) if spool_dir is not None else None
        dead_letter_path = options.dead_letter_path
        if dead_letter_path is None and spool_dir is not None:
            dead_letter_path = Path(f"{Path(spool_dir)}.dead-letter.jsonl")
        self.dead_letters = DeadLetterFile(dead_letter_path) if dead_letter_path is not None else None
        self._options = options
        self._pending: list[Entry] = []
        # Entry ids: unique per accepted write() across processes and restarts (the table's key, see schema.py).
        self._writer = secrets.token_hex(8)
        self._seq = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()  # a flush (or close) is waiting: cut the linger short
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._replayed = asyncio.Event()
        self._refused: dict[str, RecordRefused] = {}  # without a spool: entry id -> why, for its write() to raise
        self.committed = 0
        self.dead_lettered = 0  # a metric to export: any increase means a record needs an operator

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

    @abc.abstractmethod
    async def _insert_alerts(self, rows: Sequence[Sequence[Any]]) -> list[bool]:
        """Insert each row in one transaction (``alert_log.insert_alert_sql``); True where it was new."""

    @abc.abstractmethod
    async def _transact(self, statements: Sequence[rm.Statement]) -> list[tuple[Any, ...]]:
        """Run ``statements`` in one write transaction; the rows the last one returns."""

    @abc.abstractmethod
    async def _execute(self, sql: str, params: Sequence[Any]) -> None:
        """Run one write statement (``?`` placeholders adapted by the caller) and commit."""

    def _day_param(self, day: date) -> Any:
        return day.isoformat()

    def _ts_param(self, at: datetime) -> Any:
        # SQLite keeps ISO text (``...+00:00``), which sorts like the instant it names; PostgreSQL a TIMESTAMPTZ.
        return at.isoformat()

    # -- Ledger --------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._open_db()  # creates the tables, or brings an older ledger's up to date (schema.migration_sql)
        if self._spool is not None:
            self._spool.open()
        self._task = asyncio.create_task(self._run(), name="ledger-group-commit")
        replayed = asyncio.ensure_future(self._replayed.wait())
        done, _ = await asyncio.wait({self._task, replayed}, timeout=self._options.replay_wait_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        replayed.cancel()
        if self._task in done:
            self._task.result()  # the writer died: raise its error
        elif not done:
            # Serving beats waiting on a database that may be down for long: the records stay in their spool
            # segments (locked by this process) and the writer commits them before anything newer.
            log.warning("ledger: spool replay not finished after %gs; serving while it continues (budgets seeded "
                        "now miss the records still waiting)", self._options.replay_wait_s)

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
        refused = self._refused.pop(entry[0], None)
        if refused is not None:
            raise refused

    async def flush(self) -> None:
        """Also commits what the other processes sharing the spool directory (the server's other workers) had
        spooled by now, unless they have already: a record is stored once by its entry id, whoever commits it. So
        a report read after a request completed holds it, whichever worker served it."""
        if self._task is None or self._task.done():
            return
        foreign = await asyncio.to_thread(self._spool.foreign_lines) if self._spool is not None else []
        await self._wait_for_commit()
        if foreign:
            await self._commit(_entries_of(foreign), foreign=True)

    async def _wait_for_commit(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._urgent.set()
        self._wake.set()
        await fut

    async def _read(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """A read with ``?`` placeholders, adapted to the backend's (the raw-record and audit SQL is written once)."""
        return await self._fetch(sql.replace("?", self.placeholder), params)

    @property
    def _records(self) -> RecordQueries:
        return RecordQueries(self._read, self._ts_param, self.dialect)

    async def output_percentiles(self, start: date, end: date, team: str | None = None) -> list[OutputPercentiles]:
        return await self._records.output_percentiles(start, end, team)

    async def request_costs(self, since: datetime, limit: int, team: str | None = None,
                            order: Order = "cost") -> list[RequestCost]:
        return await self._records.request_costs(since, limit, team, order)

    async def hourly_spend(self, day: date, team: str | None = None) -> list[HourSpend]:
        return await self._records.hourly_spend(day, team)

    async def request_rows(self, start: datetime, end: datetime, team: str | None = None) -> list[RequestRow]:
        return await self._records.request_rows(start, end, team)

    async def usage_audit(self, start: datetime, end: datetime,
                          simple_below: Mapping[str, float | None]) -> UsageAuditRows:
        return await usage_audit(self._read, [self._ts_param(start), self._ts_param(end)], simple_below)

    async def records(self, start: datetime, end: datetime, team: str | None = None) -> AsyncIterator[UsageRecord]:
        # Keyset pages on (started_at, entry_id): each page is one index range, however deep into the window.
        where = "started_at >= ? AND started_at < ?" + (" AND team = ?" if team is not None else "")
        base = [self._ts_param(start), self._ts_param(end)] + ([team] if team is not None else [])
        after: tuple[Any, str] | None = None
        while True:
            page_where, params = where, list(base)
            if after is not None:
                page_where += " AND (started_at > ? OR (started_at = ? AND entry_id > ?))"
                params += [after[0], after[0], after[1]]
            rows = await self._read(f"SELECT entry_id, {', '.join(_RECORD_FIELDS)} FROM records WHERE {page_where} "
                                    f"ORDER BY started_at, entry_id LIMIT {_RECORDS_PAGE}", params)
            for row in rows:
                yield _record_of(row)
            if len(rows) < _RECORDS_PAGE:
                return
            after = (rows[-1][1 + _STARTED], rows[-1][0])

    async def report(self, start: date, end: date, team: str | None = None,
                     group_by: Sequence[str] = ("team",)) -> Report:
        names = parse_group_by(group_by)
        start, end = as_day(start), as_day(end)
        team_param = [team] if team is not None else []
        days = [self._day_param(start), self._day_param(end)]
        scan = [self._ts_param(midnight(start)), self._ts_param(midnight(end))] if source_of(names) == "records" else []
        grouped = await self._fetch(aggregate_sql(names, self.placeholder, team is not None, self.tag_rows),
                                    scan + days + team_param)
        if "tag" not in names:
            by_group: list[tuple[Any, ...]] = []
            if names:  # rows partition the records, so their exact integer sum is the total: no second scan
                width = sum(len(GROUPS[g]) for g in names)
                total = [sum(int(t[i] or 0) for t in grouped) for i in range(width, width + len(SUMMED))]
            else:
                total = list(grouped[0])
                grouped = []
        else:  # tag rows overlap: the total, and each group's for its untagged rows, come from the daily rollup
            other = tuple(g for g in names if g != "tag")
            by_group = await self._fetch(aggregate_sql(other, self.placeholder, team is not None, self.tag_rows),
                                         days + team_param)
            width = sum(len(GROUPS[g]) for g in other)
            total = [sum(int(t[i] or 0) for t in by_group) for i in range(width, width + len(SUMMED))]
        return build_report(start, end, team, names, grouped, total, by_group)

    async def add_alerts(self, events: Sequence[AlertEvent]) -> list[bool]:
        if not events:
            return []
        return await self._insert_alerts([tuple(self._adapt_alert_value(v) for v in e.values()) for e in events])

    def _adapt_alert_value(self, value: Any) -> Any:
        if isinstance(value, datetime):
            return self._ts_param(value)
        return self._day_param(value) if isinstance(value, date) else value

    async def alerts(self, query: AlertQuery) -> list[AlertEvent]:
        tail, binds = query.sql(self.placeholder)
        given = {"since": self._ts_param(query.since), "until": self._ts_param(query.until), "team": query.team,
                 "kind": query.kind, "limit": query.limit}
        return [AlertEvent.from_row(row) for row in await self._fetch(SELECT_ALERTS + tail, [given[b] for b in binds])]

    async def add_routing_model(self, team: str, model: bytes, model_id: str, metrics: Mapping[str, Any],
                                parent_version: int | None, reason: str) -> rm.RoutingModel:
        now = datetime.now(UTC)
        rows = await self._transact(rm.insert_statements(self.placeholder, team, self._ts_param(now), model_id, model,
                                                         metrics, parent_version, reason))
        version = int(rows[0][0])
        return rm.RoutingModel(team, version, now, model_id, dict(metrics), "candidate", parent_version, reason)

    async def routing_models(self, team: str) -> list[rm.RoutingModel]:
        return [rm.RoutingModel.from_row(r) for r in await self._fetch(rm.list_sql(self.placeholder), (team,))]

    async def routing_model_bytes(self, team: str, version: int) -> bytes | None:
        rows = await self._fetch(rm.bytes_sql(self.placeholder), (team, version))
        return bytes(rows[0][0]) if rows else None

    async def activate_routing_model(self, team: str, version: int | None, reason: str | None = None) -> bool:
        if version is not None and await self.routing_model_bytes(team, version) is None:
            return False
        await self._transact(rm.activate_statements(self.placeholder, team, version, reason))
        return True

    async def set_routing_model_reason(self, team: str, version: int, reason: str) -> None:
        await self._transact([(rm.set_reason_sql(self.placeholder), (reason, team, version))])

    async def active_routing_models(self) -> dict[str, tuple[int, str]]:
        return {str(t): (int(v), str(m)) for t, v, m in await self._fetch(rm.ACTIVE_SQL, ())}

    async def claim_retrain(self, team: str, slot: int) -> bool:
        now = datetime.now(UTC)
        return bool(await self._transact([(claim_sql(self.placeholder), (team, slot, self._ts_param(now)))]))

    async def add_outcome(self, outcome: Outcome) -> None:
        await self._execute(insert_outcome_sql(self.placeholder),
                            [self._ts_param(v) if isinstance(v, datetime) else v for v in outcome.values()])

    async def outcomes(self, since: datetime, team: str | None = None) -> list[Outcome]:
        sql = select_outcomes_sql(self.placeholder, team is not None)
        params = [self._ts_param(since.astimezone(UTC))] + ([team] if team is not None else [])
        return [Outcome.from_row(row) for row in await self._fetch(sql, params)]

    async def add_feedback(self, feedback: fb.Feedback) -> None:
        await self._execute(fb.insert_feedback_sql(self.placeholder),
                            [self._ts_param(v) if isinstance(v, datetime) else v for v in feedback.values()])

    async def answered(self, request_id: str | None = None,
                       response_id: str | None = None) -> list[tuple[str, str, str | None]]:
        by, value = ("request_id", request_id) if request_id is not None else ("response_id", response_id)
        rows = await self._fetch(fb.answered_sql(self.placeholder, by), [value])
        return [(str(t), str(r), a) for t, r, a in rows]

    async def feedback(self, since: datetime, team: str | None = None) -> list[fb.Feedback]:
        params = ([team] if team is not None else []) + [self._ts_param(since.astimezone(UTC))]
        rows = await self._fetch(fb.latest_feedback_sql(self.placeholder, team is not None), params)
        return [fb.Feedback.from_row(row) for row in rows]

    async def value(self, start: date, end: date, team: str | None = None,
                    group_by: Sequence[str] = ("team",)) -> fb.ValueReport:
        names = fb.parse_value_group_by(group_by)
        start, end = as_day(start), as_day(end)
        spend_sql, judged_sql = fb.value_sql(names, self.placeholder, team is not None)
        team_param = [team] if team is not None else []
        days = [self._day_param(start), self._day_param(end)]
        instants = [self._ts_param(midnight(start)), self._ts_param(midnight(end))]
        spend = await self._fetch(spend_sql, days + team_param)
        judged = await self._fetch(judged_sql, team_param + instants + days)
        return fb.value_report(start, end, team, names, spend, judged)

    async def teams(self) -> list[str]:
        return sorted(str(row[0]) for row in await self._fetch("SELECT DISTINCT team FROM rollup_daily", []))

    async def close(self) -> None:
        if self._task is not None:
            self._closing = True
            self._urgent.set()
            self._wake.set()
            try:
                await asyncio.wait_for(self._task, self._options.close_wait_s)
            except TimeoutError:
                log.error("ledger: the database did not take the last records within %gs of close; they stay in the "
                          "spool for the next start-up", self._options.close_wait_s)
            except Exception:
                log.exception("ledger: the writer had failed; uncommitted records stay in the spool for replay")
            self._task = None
            for w in self._waiters:  # flushes that arrived after the writer's last batch
                if not w.done():
                    w.set_exception(RuntimeError("ledger closed before commit"))
            self._waiters = []
        if self._spool is not None:
            self._spool.close()
        await self._close_db()

    # -- background writer ---------------------------------------------------------------------------------------
    async def _run(self) -> None:
        if self._spool is not None:
            await self._replay()
        self._replayed.set()
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
                await self._commit(batch)
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

    async def _commit(self, batch: list[Entry], foreign: bool = False) -> None:
        """Commit ``batch``; retry while the database is unavailable, set aside the records it refuses (``foreign``:
        records of another process's spool, which sets them aside itself)."""
        todo = [batch[i: i + self._options.max_batch] for i in range(0, len(batch), self._options.max_batch)][::-1]
        while todo:
            chunk = todo.pop()
            await self._retrying(partial(self._commit_or_split, chunk, todo, foreign),
                                 f"commit of {len(chunk)} records")

    async def _retrying(self, action: Callable[[], Awaitable[None]], what: str) -> None:
        delay = _RETRY_MIN_S
        while True:
            try:
                return await action()
            except Exception as exc:
                # The message is safe to log: refusals, whose context quotes record values, never get here.
                log.warning("ledger: %s failed (%s: %s); retrying in %.2fs", what, label(exc), message(exc), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    async def _commit_or_split(self, chunk: list[Entry], todo: list[list[Entry]], foreign: bool = False) -> None:
        """One transaction; if the database refuses its data, push both halves onto ``todo`` (bisection: one
        poison record among n costs about 2 log2(n) extra transactions) or, alone, set the record aside."""
        try:
            inserted = await self._insert(chunk)
        except Exception as exc:
            if not is_refusal(exc):
                raise
            if len(chunk) > 1:
                mid = len(chunk) // 2
                todo.extend((chunk[mid:], chunk[:mid]))
            elif not foreign:
                self._set_aside(chunk[0], exc)
            return
        if not foreign:
            self.committed += inserted

    def _set_aside(self, entry: Entry, exc: BaseException) -> None:
        # Logged by ids and error class only: the database's message may quote tag values.
        entry_id, record = entry
        if self.dead_letters is None:
            self._refused[entry_id] = RecordRefused(f"the ledger database refused the record: {label(exc)}")
            log.error("ledger: database refused entry %s (request %s): %s", entry_id, record.request_id, label(exc))
            return
        self.dead_letters.add(entry, exc)  # before the spool segment holding it is deleted
        self.dead_lettered += 1
        log.error("ledger: database refused entry %s (request %s): %s; record moved to %s", entry_id,
                  record.request_id, label(exc), self.dead_letters.path)

    async def _replay(self) -> None:
        """Commit the spool segments of dead processes, oldest first, each deleted once committed."""
        assert self._spool is not None
        for segment, lines in self._spool.orphans():
            try:
                entries = await self._parse(segment, lines)
                await self._commit(entries)
            except BaseException:
                os.close(segment.fd)  # release it: the next start-up replays it
                raise
            log.info("ledger: replayed %d records from %s", len(entries), segment.path.name)
            Spool.discard(segment)
            if self._closing:
                return  # the rest stay for the next start-up

    async def _parse(self, segment: Segment, lines: list[bytes]) -> list[Entry]:
        entries: list[Entry] = []
        for line in lines:
            try:
                entries.append(_entry_of(line))
            except Exception as exc:
                await self._retrying(partial(self._set_aside_line, segment, line, exc), "dead-lettering a spool line")
        return entries

    async def _set_aside_line(self, segment: Segment, line: bytes, exc: BaseException) -> None:
        assert self.dead_letters is not None  # a spool always has a dead-letter file
        self.dead_letters.add_raw(line, exc)
        self.dead_lettered += 1
        log.error("ledger: unreadable line in spool %s (%s); moved to %s", segment.path.name, label(exc),
                  self.dead_letters.path)
