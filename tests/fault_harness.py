"""The fault suite's harness (tests/test_faults.py): paced load over real HTTP, servers a test may break (a private
redis-server, a private PostgreSQL cluster, a TCP relay that cuts upstream streams), and the books every scenario
checks afterwards.

Every scenario asks the same questions of what its clients saw against what the ledger and Redis hold:
a completed response without its ledger record (matched by the ``x-request-id`` each client sends), a 5xx or broken
connection the proxy caused, Redis budget counters that drifted from the ledger by more than one lease, and spend
past a cap by more than one reservation. ``Books`` answers them; ``Summary`` collects one row per scenario.

Load is paced (requests per second per client) rather than flat out: the machine is shared, caps are sized in
reservations, and a scenario must reach its fault at a known point of its load, not whenever the CPU allows.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from tests.conftest import ROOT, Process, free_port, require_service, start_process, start_server
from tests.inprocess import ThreadServer
from tests.metering_fixtures import RedisServer
from tests.proxy_metering_helpers import TeamSpec, parse_sse, write_config
from tests.waiting import eventually

NANOS_PER_USD = 10**9
# The long run (benchmarks/faults/run.sh) sets this: each scenario repeats its fault, or runs, SCALE times over.
SCALE = max(1, int(os.environ.get("TIERGATE_FAULTS_SCALE", "1")))


# ---- what a client did and saw --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    """One request a load client sends. ``drop_after_chunks`` / ``drop_after_s``: the client hangs up mid-stream /
    while waiting for a non-streamed answer (a deliberate disconnect, not a failure)."""

    team: TeamSpec
    body: dict[str, Any]
    path: str = "/v1/chat/completions"
    headers: dict[str, str] = field(default_factory=dict)
    drop_after_chunks: int | None = None
    drop_after_s: float | None = None

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def drops(self) -> bool:
        return self.drop_after_chunks is not None or self.drop_after_s is not None


@dataclass
class Result:
    rid: str
    call: Call
    started: float  # time.monotonic()
    ended: float = 0.0
    status: int | None = None  # None: no HTTP answer (transport error or a deliberate hang-up)
    code: str | None = None  # error code of an error body or of a stream's error event
    done: bool = False  # a completed response: 2xx, and for a stream its [DONE]
    cost_nanos: int | None = None  # what the proxy told the client (x-tiergate-cost-usd)
    headers: dict[str, str] = field(default_factory=dict)
    transport_error: str | None = None
    chunks: int = 0

    @property
    def team(self) -> str:
        return self.call.team.name


def _cost(value: str | None) -> int | None:
    return int(Decimal(value) * NANOS_PER_USD) if value else None


def _error_code(raw: bytes) -> str | None:
    try:
        error = orjson.loads(raw).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return error.get("code") if isinstance(error, dict) else None


def send(client: httpx.Client, base_url: str, call: Call, rid: str) -> Result:
    """Send one call and record what came back; never raises for what the server or the network did."""
    result = Result(rid=rid, call=call, started=time.monotonic())
    headers = {**call.team.auth, **call.headers, "x-request-id": rid}
    timeout = httpx.Timeout(30.0, read=call.drop_after_s) if call.drop_after_s is not None else None
    try:
        with client.stream("POST", base_url + call.path, json=call.body, headers=headers,
                           timeout=timeout or httpx.USE_CLIENT_DEFAULT) as resp:
            result.status = resp.status_code
            result.headers = {k: v for k, v in resp.headers.items() if k.startswith("x-") or k == "retry-after"}
            if resp.headers.get("x-request-id") != rid:
                result.code = "request_id_not_echoed"
            if call.stream and resp.status_code == 200:
                _read_stream(resp, call, result)
            else:
                raw = resp.read()
                result.done = 200 <= resp.status_code < 300
                result.code = result.code or (None if result.done else _error_code(raw))
                result.cost_nanos = _cost(resp.headers.get("x-tiergate-cost-usd"))
    except httpx.ReadTimeout:
        if call.drop_after_s is None:
            result.transport_error = "ReadTimeout"
    except httpx.HTTPError as exc:
        result.transport_error = type(exc).__name__
    result.ended = time.monotonic()
    return result


def _read_stream(resp: httpx.Response, call: Call, result: Result) -> None:
    raw = b""
    for line in resp.iter_lines():
        raw += line.encode() + b"\n"
        if line.startswith("data: "):
            result.chunks += 1
            if call.drop_after_chunks is not None and result.chunks >= call.drop_after_chunks:
                result.status = None  # hung up: the client never saw how the stream ended
                return
    payloads, comments, done = parse_sse(raw.replace(b"\n", b"\n\n"))
    errors = [p["error"] for p in payloads if isinstance(p.get("error"), dict)]
    result.code = errors[0].get("code") if errors else None
    result.done = done and not errors
    result.cost_nanos = _cost(comments.get("x-tiergate-cost-usd"))


class Load:
    """Closed-loop clients in threads, each sending ``plan(client, i)`` at most ``rate`` times a second until
    ``stop()``, or until it gets a result for which ``last(result)`` is true (e.g. refused by its budget); every
    result is kept. ``marks`` lets a scenario note when it did something (``time.monotonic()``); ``pace(rate)``
    changes the rate of every client at once (a client waiting for its next turn starts on the new pace)."""

    def __init__(self, base_url: str, plan: Callable[[int, int], Call], clients: int, rate: float,
                 prefix: str, last: Callable[[Result], bool] = lambda r: False) -> None:
        self.base_url = base_url
        self.plan = plan
        self.clients = clients
        self.interval = 1.0 / rate
        self.prefix = prefix
        self.last = last
        self.results: list[Result] = []
        self.marks: dict[str, float] = {}
        self.finished = 0  # clients that stopped on their own (``last``)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._paced = threading.Condition()  # notified on stop() and pace()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        for n in range(self.clients):
            thread = threading.Thread(target=self._client, args=(n,), daemon=True, name=f"load-{n}")
            thread.start()
            self._threads.append(thread)

    def _client(self, n: int) -> None:
        with httpx.Client(timeout=30.0) as client:
            i = 0
            next_at = time.monotonic()
            while not self._stop.is_set():
                call = self.plan(n, i)
                result = send(client, self.base_url, call, f"{self.prefix}-{n}-{i}-{uuid.uuid4().hex[:8]}")
                with self._lock:
                    self.results.append(result)
                    if self.last(result):
                        self.finished += 1
                        return
                i += 1
                interval = self.interval
                next_at = max(next_at + interval, time.monotonic() - interval)
                with self._paced:
                    self._paced.wait_for(lambda: self._stop.is_set() or self.interval != interval,  # noqa: B023
                                         max(0.0, next_at - time.monotonic()))
                if self.interval != interval:
                    next_at = time.monotonic()

    def mark(self, name: str) -> float:
        self.marks[name] = time.monotonic()
        return self.marks[name]

    def snapshot(self) -> list[Result]:
        with self._lock:
            return list(self.results)

    def completed(self) -> int:
        with self._lock:
            return sum(r.done for r in self.results)

    def run_for(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def pace(self, rate: float) -> None:
        with self._paced:
            self.interval = 1.0 / rate
            self._paced.notify_all()

    def stop(self) -> list[Result]:
        self._stop.set()
        with self._paced:
            self._paced.notify_all()
        for thread in self._threads:
            thread.join(timeout=60)
        return self.snapshot()


# ---- the ledger and the budget counters -----------------------------------------------------------------------------

_COLUMNS = "request_id, team, status, cost_nanos, prompt_tokens, completion_tokens, usage_estimated"


class LedgerReader:
    """The raw ``records`` rows of some teams, read behind the proxy's back (SQLite file or PostgreSQL DSN)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def rows(self, teams: Iterable[str]) -> list[dict[str, Any]]:
        teams = list(teams)
        if self.url.startswith("sqlite:///"):
            path = self.url[len("sqlite:///"):]
            if not Path(path).exists():
                return []
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            conn.row_factory = sqlite3.Row
            try:
                marks = ", ".join("?" for _ in teams)
                return [dict(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM records WHERE team IN ({marks})",
                                                      teams)]
            except sqlite3.OperationalError:  # no table yet
                return []
            finally:
                conn.close()
        import psycopg
        from psycopg.rows import dict_row

        try:
            with psycopg.connect(self.url, connect_timeout=3, row_factory=dict_row) as conn:
                return list(conn.execute(f"SELECT {_COLUMNS} FROM records WHERE team = ANY(%s)", (teams,)))
        except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
            return []

    def by_request(self, teams: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows(teams):
            out.setdefault(row["request_id"], []).append(row)
        return out


def today() -> str:
    return datetime.now(UTC).date().isoformat()


@dataclass(frozen=True)
class Counter:
    spent: int
    reserved: int
    holds: int  # open holds (``r:<id>`` fields still reserving money)


def budget_counter(redis_url: str, team: str) -> Counter:
    """The team's daily budget counter in Redis (``metering.budgets.redis_store``)."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        h = client.hgetall(f"tg:budget:team:{team}::{today()}")
    finally:
        client.close()
    holds = sum(1 for k, v in h.items() if k.startswith(b"r:") and v not in (b"0", b"done"))
    return Counter(int(h.get(b"spent", 0)), int(h.get(b"reserved", 0)), holds)


def settled_counter(redis_url: str, team: str, timeout_s: float = 12.0,
                    nudge: Callable[[], Any] | None = None) -> Counter:
    """The counter once leases have closed (each closes within about a second of its last use): no open hold,
    or, if one never goes away (a leaked hold), the state at ``timeout_s`` (the caller's assertions then say what
    leaked). ``nudge`` (a request) is sent every second meanwhile: expired holds are dropped, and stale counters
    re-seeded, by the next reservation."""
    nudged = [time.monotonic()]

    def settled() -> Counter | None:
        state = budget_counter(redis_url, team)
        if state.holds == 0 and state.reserved == 0:
            return state
        if nudge is not None and time.monotonic() - nudged[0] >= 1.0:
            nudge()
            nudged[0] = time.monotonic()
        return None

    try:
        return eventually(settled, f"{team}'s budget holds to close", timeout_s=timeout_s)
    except AssertionError:
        return budget_counter(redis_url, team)


# ---- the four questions ---------------------------------------------------------------------------------------------

@dataclass
class Books:
    """What the clients saw against what the ledger holds, for the scenario's teams."""

    results: list[Result]
    ledger: dict[str, list[dict[str, Any]]]  # request id -> records

    @property
    def completed(self) -> list[Result]:
        return [r for r in self.results if r.done]

    def lost(self) -> list[str]:
        """Completed responses without a ledger record."""
        return [r.rid for r in self.completed if r.rid not in self.ledger]

    def duplicated(self) -> list[str]:
        """Requests recorded more than once (a replay or retry counted twice)."""
        return [rid for rid, rows in self.ledger.items() if len(rows) > 1]

    def unrecorded(self, must_record: Callable[[Result], bool]) -> list[str]:
        """Requests ``must_record`` says leave a record, without one (e.g. budget refusals: 429s are billed at 0)."""
        return [r.rid for r in self.results if must_record(r) and r.rid not in self.ledger]

    def status_mismatches(self) -> list[tuple[str, int | None, int]]:
        """Non-streamed answers whose record's status differs from the client's."""
        out = []
        for r in self.results:
            rows = self.ledger.get(r.rid)
            if rows and r.status is not None and not r.call.stream and rows[0]["status"] != r.status:
                out.append((r.rid, r.status, rows[0]["status"]))
        return out

    def cost_mismatches(self) -> list[str]:
        """Answers whose cost header differs from their record's cost."""
        return [r.rid for r in self.results if r.cost_nanos is not None and r.rid in self.ledger
                and self.ledger[r.rid][0]["cost_nanos"] != r.cost_nanos]

    def spend(self, team: str | None = None) -> int:
        return sum(rows[0]["cost_nanos"] for rows in self.ledger.values()
                   if team is None or rows[0]["team"] == team)


def collect(results: list[Result], reader: LedgerReader, timeout_s: float = 20.0,
            must_record: Callable[[Result], bool] = lambda r: r.done) -> Books:
    """The books once every completed response's (every ``must_record``) record is in the ledger, or as they are at
    ``timeout_s`` (records are committed in batches, and after a fault from the spool, so they may lag; the
    caller's assertions then name what is missing)."""
    teams = {r.team for r in results}

    def complete() -> Books | None:
        books = Books(results, reader.by_request(teams))
        return None if books.unrecorded(must_record) else books

    try:
        return eventually(complete, "every record in the ledger", timeout_s=timeout_s)
    except AssertionError:
        return Books(results, reader.by_request(teams))


def proxy_errors(results: list[Result], expected: Callable[[Result], bool] = lambda r: False) -> list[Result]:
    """5xx answers, broken connections and unexpected hang-ups the scenario did not cause on purpose."""
    out = []
    for r in results:
        if expected(r) or (r.call.drops and r.transport_error is None):
            continue
        if r.transport_error is not None or (r.status is not None and r.status >= 500) \
                or r.code == "request_id_not_echoed":
            out.append(r)
    return out


def describe(results: Iterable[Result], limit: int = 5, since: float | None = None) -> str:
    """The first few results, for a failure message; ``since``: show when each started relative to this mark."""
    def one(r: Result) -> str:
        when = f" at {r.started - since:+.2f}s" if since is not None else ""
        return f"{r.rid}{when}: {r.status} {r.code or ''} {r.transport_error or ''}".strip()

    return "; ".join(one(r) for r in list(results)[:limit])


class Tracebacks(logging.Handler):
    """Counts log records that carry a traceback, from every logger of the test process while installed (on the
    root logger): for an in-process proxy what its stderr would have shown, asyncio's own reports included
    (``ThreadServer.output()`` has tiergate's and uvicorn's loggers only). Counts in-process mocks' records too."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "Traceback" in record.getMessage():
            self.count += 1
            self.first = self.first or f"{record.name}: {record.getMessage()}"

    def __enter__(self) -> Tracebacks:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger().removeHandler(self)


# ---- the summary table ----------------------------------------------------------------------------------------------

@dataclass
class Row:
    test: str
    requests: int
    proxy_errors: int
    records_lost: int
    overshoot: str
    notes: str = ""

    def line(self) -> str:
        return (f"| {self.test} | {self.requests} | {self.proxy_errors} | {self.records_lost} | {self.overshoot} "
                f"| {self.notes} |")


class Summary:
    """One row per scenario, printed at the end of the session and written to test-artifacts/faults.md."""

    HEADER = ("| test | requests | proxy-caused errors | records lost | overshoot | notes |\n"
              "|---|---|---|---|---|---|")

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print("\n" + row.line())
        return row

    def markdown(self, earlier: list[str] | None = None) -> str:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
        lines = [f"# Fault suite ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, HEAD {commit or '?'})", "",
                 *([f"<!-- run {run} -->", ""] if run else []),
                 self.HEADER, *(earlier or []), *(row.line() for row in self.rows), ""]
        return "\n".join(lines)

    def write(self, path: Path) -> None:
        """Under pytest-xdist every worker writes (at each module's or its session's end): a worker keeps the rows
        the other workers of the same run wrote before it (the file names the run), one writer at a time (a lock
        file); its own earlier rows are in ``self.rows`` already."""
        if not self.rows:
            return
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            earlier: list[str] = []
            run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
            if run and path.exists() and f"<!-- run {run} -->" in (text := path.read_text()):
                own = {row.line() for row in self.rows}
                earlier = [line for line in text.split(self.HEADER, 1)[1].splitlines()
                           if line.startswith("| ") and line not in own]
            path.write_text(self.markdown(earlier))

    # pytest hook, registered as a plugin by the suite's session fixture
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.rows:
            terminalreporter.write_sep("=", "fault suite")
            terminalreporter.write_line(self.HEADER)
            for row in self.rows:
                terminalreporter.write_line(row.line())


def overshoot_cell(spent: int, cap: int, reservation: int) -> str:
    over = max(0, spent - cap)
    return f"${over / NANOS_PER_USD:.6f} ({over / reservation:.2f} res)"


# ---- processes ------------------------------------------------------------------------------------------------------

def fault_config(path: Path, tiers: dict[str, list[str]], teams: list[TeamSpec], ledger: str,
                 redis: str | None = None, metering: dict[str, Any] | None = None,
                 server: dict[str, Any] | None = None) -> Path:
    """``proxy_metering_helpers.write_config`` plus metering settings it does not take (lease share, spool)."""
    write_config(path, tiers, teams, ledger, redis=redis, server=server)
    if metering:
        config = yaml.safe_load(path.read_text())
        config["metering"].update(metering)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# Hang protection only (no test asserts how fast a proxy starts): two workers booting on two cores shared with
# other pytest-xdist workers took over 45 s.
START_TIMEOUT_S = 120.0


class Proxies:
    """``tiergate serve`` processes of one test, run in its directory (the PostgreSQL spool is relative to the
    working directory), every one stopped at ``close()``: supervisors get SIGTERM and stop their workers."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Process | ThreadServer] = []

    def start_in_process(self, config: Path, timeout_s: float = START_TIMEOUT_S) -> ThreadServer:
        """One worker in a thread of the test process (``tests.inprocess``): real HTTP on loopback without ~2 s of
        CPU for a new interpreter, for a proxy nothing signals, kills or runs several workers of. The policy must
        not depend on the working directory (a PostgreSQL ledger names its ``spool_dir``)."""
        port = free_port()
        server = start_server(["serve", "--config", str(config), "--port", str(port)], port,
                              self.directory / f"proxy-{port}.log", "/readyz", timeout_s=timeout_s)
        assert isinstance(server, ThreadServer), "an in-process proxy was started as a process"
        self.started.append(server)
        return server

    def start(self, config: Path, workers: int = 1, timeout_s: float = START_TIMEOUT_S,
              signal_while_starting: int | None = None) -> Process:
        """Returns once ``/readyz`` answers. ``signal_while_starting``: sent to the supervisor as soon as it has
        spawned its workers, i.e. while they are still booting (an operator's reload does not wait for a deploy)."""
        port = free_port()
        args = ["serve", "--config", str(config), "--port", str(port), "--workers", str(workers)]
        log = self.directory / f"proxy-{port}.log"
        with ThreadPoolExecutor(1) as pool:
            starting = pool.submit(start_process, args, port, log, "/readyz", cwd=self.directory,
                                   timeout_s=timeout_s)
            supervisor, workers = None, set()  # workers seen, to reap if start_process kills their supervisor
            signalled = signal_while_starting is None
            while not starting.done():
                supervisor = supervisor or _supervisor_pid(log)
                if supervisor is not None:
                    workers.update(worker_pids(supervisor))
                    if not signalled and workers:
                        os.kill(supervisor, signal_while_starting)  # type: ignore[arg-type]
                        signalled = True
                time.sleep(0.01 if not signalled else 0.1)
            try:
                proxy = starting.result()
            except RuntimeError:
                for pid in workers:
                    kill9(pid)
                raise
        self.started.append(proxy)
        assert signalled, "the proxy was ready before its workers could be signalled"
        return proxy

    def close(self) -> None:
        for proxy in self.started:
            proxy.stop()


def _supervisor_pid(log: Path) -> int | None:
    """From the supervisor's first log line (``... tiergate.server [pid] ...``), logged after its signal handlers
    are in place."""
    line = next((ln for ln in _lines(log) if " tiergate.server [" in ln), None)
    return int(line.split(" tiergate.server [", 1)[1].split("]", 1)[0]) if line else None


def _lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def worker_pids(pid: int) -> list[int]:
    """The worker processes of the supervisor ``pid``: ``proxy.server`` forks them from multiprocessing's fork
    server, its child (beside it, multiprocessing's resource tracker)."""
    workers = []
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"multiprocessing.forkserver" in cmdline:
            workers.extend(_children(child))
    return workers


def kill9(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def require_binary(name: str, path: str | None) -> str:
    require_service(name, path is not None and os.access(path, os.X_OK), f"{name} binary not found")
    assert path is not None
    return path


def private_redis() -> RedisServer:
    """A redis-server of the test's own (no persistence) on a free port, started: the shared one must never be
    restarted. ``stop()`` kills it, ``start()`` brings it back empty on the same port."""
    require_binary("redis-server", shutil.which("redis-server"))
    server = RedisServer(free_port())
    server.start()
    return server


class PrivatePostgres:
    """A throw-away PostgreSQL cluster (initdb as user postgres into a temp dir, its own port and socket dir) that
    a test may stop and start: the shared server on 5432 must never be restarted."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
        self.bin = Path(require_binary("initdb", found[-1] if found else None)).parent
        require_service("runuser", shutil.which("runuser") is not None, "needed to run PostgreSQL as postgres")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tg-faults-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _pg(self, *args: str, timeout_s: float = 60) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True,
                       timeout=timeout_s, cwd=self.dir)

    def init(self) -> PrivatePostgres:
        self._pg(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                 "--locale=C", "--no-sync")
        return self.start()

    def start(self) -> PrivatePostgres:
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c shared_buffers=16MB -c max_connections=50")
        self._pg(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"),
                 "-w", "-t", "30", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """``immediate`` is a crash: no shutdown checkpoint, connections cut, recovery at the next start."""
        self._pg(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def create_database(self) -> str:
        import psycopg

        name = "tg_faults_" + uuid.uuid4().hex[:10]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class ErrorUpstream:
    """An OpenAI-compatible upstream that answers every POST with ``status`` and an error whose message is
    ``message``: the way a value the ledger's database refuses (a NUL) can reach a record past the proxy's edge
    validation, in the error text of a failed request. Serves from a thread."""

    def __init__(self, status: int, message: str) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        payload = orjson.dumps({"error": {"message": message, "type": "server_error", "param": None, "code": None}})

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="error-upstream")
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class StreamCutter:
    """A TCP relay in front of an upstream that drops every connection after ``cut_bytes`` bytes of response:
    what a provider or a load balancer cutting a stream half way looks like to the proxy. Runs in a thread."""

    def __init__(self, upstream_port: int, cut_bytes: int) -> None:
        self.upstream_port = upstream_port
        self.cut_bytes = cut_bytes
        self.port = free_port()
        self.cuts = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="stream-cutter")
        self._thread.start()
        self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return

        async def upstream() -> None:
            while data := await client_r.read(65536):
                up_w.write(data)
                await up_w.drain()

        forward = asyncio.ensure_future(upstream())
        sent = 0
        try:
            while sent < self.cut_bytes and (data := await up_r.read(65536)):
                data = data[: self.cut_bytes - sent]
                client_w.write(data)
                await client_w.drain()
                sent += len(data)
            if sent >= self.cut_bytes:
                self.cuts += 1
        except OSError:
            pass
        finally:
            forward.cancel()
            client_w.close()
            up_w.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
