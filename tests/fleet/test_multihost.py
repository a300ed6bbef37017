"""Multi-host fault suite (issue 16, item 5): two tiergate replicas, Redis (a master, a replica and three sentinels),
PostgreSQL and the simulator upstream, each in network namespaces of its own on two bridges the test makes (replicas
and PostgreSQL and the upstream on one, replicas and Redis on the other), under load while the network breaks.

Cases, in order (the world is shared, and the last two change it for good): one replica partitioned from Redis, 200 ms
added to PostgreSQL, 5 % of the packets to the upstream dropped, the Redis master SIGKILLed (Sentinel promotes the
replica), a replica kill -9ed (and started again, as its orchestrator would). Load comes from the test's own clients,
which spread requests over the replicas they believe alive (a replica's address leaves their list when it is
killed, as an endpoint leaves a Service). Two teams per case: fail-open with a large cap, fail-closed with a cap
the load reaches during the case.

Every case asserts: no completed response without its ledger record; Redis budget counters equal to the ledger
within one lease per replica afterwards; spend past the cap by at most one reservation per replica; no 5xx or broken
connection the proxy caused (a fail-closed team's 503 while its replica cannot reach Redis is its policy, and a
request in flight on a killed replica is the kill's). Each adds a row to test-artifacts/fleet-faults.md.

Skipped, with the reason, where the machine cannot make network namespaces (not root, no veth).
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from tests.conftest import ROOT, require_service
from tests.fault_harness import (
    START_TIMEOUT_S,
    Call,
    LedgerReader,
    Load,
    Result,
    budget_counter,
    collect,
    describe,
    fault_config,
    kill9,
    overshoot_cell,
    proxy_errors,
    settled_counter,
)
from tests.fleet.fault_table import FaultTable, Row, fault_table_fixture, in_leases  # noqa: F401 - a fixture
from tests.fleet.netns import DelayRelay, Link, NetnsPostgres, Topology, leftovers, unavailable
from tests.fleet.redis_ha import Node, SentinelGroup, require_sentinel
from tests.forked import ForkedProcess
from tests.proxy_metering_helpers import TeamSpec, chat, new_team
from tests.test_faults import approximate_reservation, lease_of
from tests.waiting import eventually

# One pytest-xdist worker for the whole module, in order (--dist loadgroup): its cases share one world (namespaces,
# bridges on random /24s, five Redis servers, PostgreSQL) built by a module fixture, and the last two change it for
# good (a killed Redis master, a restarted replica); split across workers it would be built twice and the order lost.
# A group of its own, not "serial-fleet": nothing here shares a name, address or port with the HAProxy fleets, and
# one group holding both would keep a single worker busy for well over a minute.
pytestmark = pytest.mark.xdist_group("serial-netns")

REPLICAS = 2
# Per client and second. The open team's clients run through the whole case (the capped team's stop at its cap) and
# send most requests: three keep requests and streams in flight on both replicas at every fault; each request is
# checked on its own, so more of them add CPU (~7 ms each: client, replica, upstream), not proof.
CAPPED_CLIENTS, OPEN_CLIENTS, RATE = 2, 3, 8.0
PORT = 4000  # every replica has an address of its own, so one port for all
BODY = chat("Where did that packet go?", max_tokens=16)
STREAM = chat("Stream me where that packet went.", max_tokens=16, stream=True)
# The upstream takes ~0.1 s per answer (as a fast provider): requests are in flight when something breaks.
UPSTREAM_PACE = ("--latency-ms", "100", "--ttft-ms", "50", "--tokens-per-s", "200")
DELAY_MS = 200
# How long a fault lasts: every fault bites within a second (Redis timeouts are 0.5 s, the delay and the loss apply
# to the next packet; each case asserts that it bit), and 3 s of it is still ~150 requests on it; a longer fault
# only added requests, i.e. CPU, to the same checks.
FAULT_S = 3.0


@dataclass
class Replica:
    name: str
    main: Link  # to clients, PostgreSQL and the upstream
    redis: Link  # to Redis and the sentinels
    dir: Path  # its working directory (the PostgreSQL ledger's spool lives under it)
    proc: subprocess.Popen[bytes] | ForkedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{self.main.address}:{PORT}"


@dataclass
class Teams:
    open: TeamSpec
    capped: TeamSpec


@dataclass
class World:
    topo: Topology
    tmp: Path
    config: Path
    ledger: str  # the ledger as the test reads it (direct to PostgreSQL)
    replica_ledger: str  # as the replicas reach it (through the delay line where there is no netem)
    redis: SentinelGroup
    upstream: Link
    replicas: list[Replica]
    teams: dict[str, Teams]
    reservation: int
    open_cap: int
    capped_cap: int
    latency: Callable[[bool], None]  # PostgreSQL's extra delay on / off
    latency_mechanism: str

    def start(self, replica: Replica) -> None:
        replica.proc = self.topo.fork(replica.main.ns, [
            "serve", "--config", str(self.config), "--host", replica.main.address, "--port", str(PORT), "--workers",
            "1"], replica.dir / "proxy.log", cwd=replica.dir)

    def wait_ready(self, replica: Replica) -> None:
        assert replica.proc is not None
        _http_ready(replica.url + "/readyz", replica.proc, replica.dir / "proxy.log")

    @staticmethod
    def log(replica: Replica) -> str:
        return (replica.dir / "proxy.log").read_text(errors="replace")

    def ledger_round_trip_ms(self) -> float:
        """One ``SELECT 1`` on a fresh connection the way the replicas reach PostgreSQL (shows the delay bit)."""
        import psycopg

        with psycopg.connect(self.replica_ledger, connect_timeout=10, autocommit=True) as conn:
            started = time.monotonic()
            conn.execute("SELECT 1")
            return (time.monotonic() - started) * 1000

    def lease(self, cap: int) -> int:
        return lease_of(cap, self.reservation)


def _http_ready(url: str, proc: subprocess.Popen[bytes] | ForkedProcess, log: Path,
                timeout_s: float = START_TIMEOUT_S) -> None:
    def ready() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(url, timeout=1.0).status_code == 200
        return False

    try:
        eventually(ready, url, timeout_s, proc)
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n{log.read_text(errors='replace')}") from None


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


CASES = ("partition", "pg_latency", "upstream_loss", "redis_master", "replica_kill")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"multi-host fault suite skipped: {reason}")
    require_sentinel()
    require_service("nft", subprocess.run(["which", "nft"], capture_output=True).returncode == 0,
                    "the Debian package nftables (packet loss)")
    tmp = tmp_path_factory.mktemp("multihost")
    topo = Topology()
    pg: NetnsPostgres | None = None
    group: SentinelGroup | None = None
    pool = ThreadPoolExecutor(1)
    try:
        main, back = topo.bridge(), topo.bridge()
        pg_link = topo.attach(topo.namespace("pg"), main, 20)
        pg = NetnsPostgres(topo, pg_link)
        pg_ready = pool.submit(pg.init)  # initdb and start (seconds): while the rest of the world is made
        upstream = topo.attach(topo.namespace("up"), main, 30)
        redis_links = [topo.attach(topo.namespace(f"redis{n}"), back, 21 + n) for n in range(3)]
        replicas = []
        for n in range(1, REPLICAS + 1):
            ns = topo.namespace(f"r{n}")
            (tmp / f"r{n}").mkdir()
            replicas.append(Replica(f"r{n}", topo.attach(ns, main, 10 + n), topo.attach(ns, back, 10 + n),
                                    tmp / f"r{n}"))

        mock_proc = topo.fork(upstream.ns, ["mock-upstream", "--host", upstream.address, "--port", "8080",
                                            *UPSTREAM_PACE], tmp / "upstream.log", cwd=ROOT)
        group = SentinelGroup(tmp / "redis", Node(redis_links[0].address, 6379, redis_links[0].ns),
                              Node(redis_links[1].address, 6379, redis_links[1].ns),
                              [Node(link.address, 26379, link.ns) for link in redis_links])
        group.launch()  # its sync and discovery (seconds) overlap PostgreSQL's initdb; waited for below
        pg_ready.result()
        host_dsn = pg.create_database()
        database = host_dsn.rsplit("/", 1)[1]
        if topo.netem_works(pg_link.ns):
            ledger = host_dsn
            mechanism = f"tc netem delay {DELAY_MS}ms on PostgreSQL's veth"

            def latency(on: bool) -> None:
                topo.run(pg_link.ns, "tc", "qdisc", "add" if on else "del", "dev", pg_link.dev, "root",
                         *(["netem", "delay", f"{DELAY_MS}ms"] if on else []))
        else:
            relay = DelayRelay(topo, pg_link.ns, (pg_link.address, 5433), (pg_link.address, pg.port), DELAY_MS,
                               tmp / "delay-relay.log")
            eventually(lambda: _port_open(pg_link.address, 5433), "the delay line in front of PostgreSQL", 15)
            ledger = pg.dsn(database, port=5433)
            mechanism = (f"a {DELAY_MS} ms delay line on PostgreSQL's replies (this kernel has no netem: "
                         "CONFIG_NET_SCH_NETEM is not set)")

            def latency(on: bool) -> None:
                relay.toggle()
        _http_ready(f"http://{upstream.address}:8080/healthz", mock_proc, tmp / "upstream.log")
        upstream_url = f"http://{upstream.address}:8080"

        reservation = approximate_reservation(SimpleNamespace(url=upstream_url), BODY)  # type: ignore[arg-type]
        open_cap, capped_cap = 1500 * reservation, 48 * reservation
        teams = {case: Teams(
            new_team(f"mh{n}o", budgets={"team": {"daily_usd": str(open_cap / 10**9)}, "redis_failure": "open"}),
            new_team(f"mh{n}c", budgets={"team": {"daily_usd": str(capped_cap / 10**9)}, "redis_failure": "closed"}))
            for n, case in enumerate(CASES)}
        config = fault_config(tmp / "fleet.yaml", {"small": [upstream_url]},
                              [t for pair in teams.values() for t in (pair.open, pair.capped)], ledger,
                              redis=group.url)
        world = World(topo, tmp, config, host_dsn, ledger, group, upstream, replicas, teams, reservation, open_cap,
                      capped_cap, latency, mechanism)
        for replica in replicas:
            world.start(replica)  # they reach Redis through the sentinels, which listen from their launch
        group.wait_healthy()  # the replica's sync and the sentinels' discovery, while the replicas boot
        for replica in replicas:
            world.wait_ready(replica)
        yield world
    finally:
        pool.shutdown()  # a failure above may leave initdb running: it ends before PostgreSQL is removed
        if pg is not None:
            with contextlib.suppress(Exception):
                pg.remove()
        if group is not None:
            group.close()
        topo.close()
        left = leftovers(topo.tag)
        assert not left, f"the suite left namespaces or links behind: {left}"


# ---- one case ------------------------------------------------------------------------------------------------------

class Targets:
    """The replicas the clients believe alive; each request goes to the next one."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.live = list(replicas)

    def url(self, n: int, i: int) -> str:
        live = self.live
        return live[(n + i) % len(live)].url


def served_by(r: Result) -> str:
    return r.call.path.rsplit("/v1/", 1)[0]


@dataclass
class Outcome:
    results: list[Result]
    marks: dict[str, float]
    capped_done_at: float | None


def run_case(world: World, case: str, fault: Callable[[Load], None], fault_s: float = FAULT_S,
             heal: Callable[[Load], None] | None = None, targets: Targets | None = None) -> Outcome:
    """Load on ``targets`` (every replica; a third of the open team's requests streamed): 1 s healthy (leases taken,
    requests in flight), ``fault`` then ``fault_s`` s, ``heal`` then 2 s, then until the capped team has been
    refused by its cap (its clients stop there)."""
    teams = world.teams[case]
    targets = targets or Targets(world.replicas)

    def plan(n: int, i: int) -> Call:
        team = teams.capped if n < CAPPED_CLIENTS else teams.open
        body = STREAM if team is teams.open and i % 3 == 2 else BODY
        return Call(team, body, path=targets.url(n, i) + "/v1/chat/completions")

    load = Load("", plan, CAPPED_CLIENTS + OPEN_CLIENTS, RATE, case, last=lambda r: r.code == "budget_exceeded")
    with load:
        load.run_for(1.0)
        load.mark("fault")
        fault(load)
        load.run_for(fault_s)
        if heal is not None:
            heal(load)
        load.mark("healed")
        load.run_for(2.0)
        eventually(lambda: load.finished >= CAPPED_CLIENTS, "the capped team refused by its cap", 20)
    capped = [r for r in load.results if r.team == teams.capped.name and r.code == "budget_exceeded"]
    return Outcome(load.results, load.marks, min(r.ended for r in capped) if capped else None)


def check(world: World, table: FaultTable, case: str, title: str, outcome: Outcome,
          expected: Callable[[Result], bool] = lambda r: False, holds_may_remain: bool = False,
          notes: str = "") -> None:
    """The four questions, a row in the table, then the assertions."""
    teams = world.teams[case]
    results = outcome.results
    # A fail-closed 503 leaves no ledger record (a refusal by the budget gets one): waiting for it is pointless.
    books = collect([r for r in results if not expected(r)], LedgerReader(world.ledger), timeout_s=30)
    unrecorded = sum(1 for r in results if expected(r) and r.status is not None and r.rid not in books.ledger)
    errors = proxy_errors(results, expected=expected)
    master = world.redis.master_url()
    # Both teams' leases close in the same seconds: one wait for the two, not one after the other.
    settle_by = time.monotonic() + (3 if holds_may_remain else 12)
    counters = {t.name: settled_counter(master, t.name, timeout_s=max(0.0, settle_by - time.monotonic()))
                for t in (teams.open, teams.capped)}
    caps = {teams.open.name: world.open_cap, teams.capped.name: world.capped_cap}
    drift = {name: counters[name].spent - books.spend(name) for name in counters}
    spent = books.spend(teams.capped.name)
    reached = (f"cap reached {outcome.capped_done_at - outcome.marks['fault']:+.1f} s from the fault"
               if outcome.capped_done_at else "cap not reached")
    failures = f"{sum(expected(r) for r in results)} expected failures ({unrecorded} answered without a record)"
    table.add(Row(title, len(results), len(errors), len(books.lost()),
                  overshoot_cell(spent, world.capped_cap, world.reservation),
                  "; ".join(x for x in (notes, reached, failures,
                                        f"{sum(c.holds for c in counters.values())} holds left") if x),
                  drift=", ".join(f"{'open' if n == teams.open.name else 'capped'} "
                                  f"{in_leases(d, world.lease(caps[n]))}" for n, d in drift.items())))

    assert not books.lost(), f"{len(books.lost())} completed responses have no record: {books.lost()[:5]}"
    assert not books.duplicated(), books.duplicated()[:5]
    assert not errors, f"{len(errors)} proxy-caused errors (from the fault): " + describe(
        errors, since=outcome.marks["fault"]) + " [" + ", ".join(sorted({served_by(r) for r in errors})) + "]"
    assert spent <= world.capped_cap + REPLICAS * world.reservation, (
        f"capped team spent {spent} past its cap {world.capped_cap} by more than one reservation per replica")
    for name, d in drift.items():
        lease = world.lease(caps[name])
        assert abs(d) <= REPLICAS * lease, (
            f"{name}: Redis {counters[name].spent} vs ledger {books.spend(name)}: more than one lease per replica "
            f"({lease} each)")
        if not holds_may_remain:
            assert counters[name].holds == 0 and counters[name].reserved == 0, f"{name}: holds leaked {counters[name]}"
        else:  # a reserve whose reply was lost (partition, failover) or a killed replica's lease: held for its TTL
            assert counters[name].reserved <= REPLICAS * lease, f"{name}: holds leaked {counters[name]}"


def latency_ms(results: list[Result], start: float, end: float) -> str:
    took = [(r.ended - r.started) * 1000 for r in results if r.done and start <= r.started <= end]
    return f"{statistics.median(took):.0f} ms" if took else "n/a"


# ---- the cases -----------------------------------------------------------------------------------------------------

def test_replica_partitioned_from_redis(world: World, fault_table: FaultTable) -> None:
    """r1 loses its link to Redis and the sentinels (its veth on that bridge goes down: packets vanish, no reset)
    for FAULT_S: its fail-open requests account locally, its fail-closed ones get 503; afterwards it reconciles."""
    cut = world.replicas[0]
    unreachable_before = world.log(cut).count("Redis unreachable")
    outcome = run_case(world, "partition", lambda load: world.topo.set_link(cut.redis, False),
                       heal=lambda load: world.topo.set_link(cut.redis, True))
    grace_s = 4.0  # a request started just before the heal may still be waiting out its timeouts

    def policy_503(r: Result) -> bool:
        return (r.team == world.teams["partition"].capped.name and served_by(r) == cut.url and r.status == 503
                and r.code == "budget_store_unavailable" and r.ended >= outcome.marks["fault"]
                and r.started <= outcome.marks["healed"] + grace_s)

    noticed = world.log(cut).count("Redis unreachable") > unreachable_before
    check(world, fault_table, "partition", f"partition r1 from Redis (veth down, {FAULT_S:g} s)", outcome, policy_503,
          holds_may_remain=True, notes=f"r1 noticed: {noticed}")
    assert noticed, "r1 never noticed the partition: the fault did not bite"


def test_postgres_200ms_slower(world: World, fault_table: FaultTable) -> None:
    """Every PostgreSQL reply 200 ms late for FAULT_S: records are written late (group commit), answers are not."""
    round_trip: list[float] = []

    def fault(load: Load) -> None:
        world.latency(True)
        round_trip.append(world.ledger_round_trip_ms())

    outcome = run_case(world, "pg_latency", fault, heal=lambda load: world.latency(False))
    before = latency_ms(outcome.results, 0, outcome.marks["fault"])
    during = latency_ms(outcome.results, outcome.marks["fault"], outcome.marks["healed"])
    check(world, fault_table, "pg_latency", f"PostgreSQL +{DELAY_MS} ms ({FAULT_S:g} s)", outcome,
          notes=f"{world.latency_mechanism}; a query from a replica's side took {round_trip[0]:.0f} ms; "
                f"median answer {before} before, {during} during")


def test_upstream_loses_5_percent_of_packets(world: World, fault_table: FaultTable) -> None:
    """5 % of the packets arriving at the upstream dropped (nftables) for FAULT_S: TCP retransmits, nothing fails."""
    dropped: list[int] = []

    def heal(load: Load) -> None:
        dropped.append(world.topo.dropped(world.upstream))
        world.topo.stop_dropping(world.upstream)

    outcome = run_case(world, "upstream_loss", lambda load: world.topo.drop_incoming(world.upstream, 5), heal=heal)
    check(world, fault_table, "upstream_loss", f"5 % packet loss to the upstream ({FAULT_S:g} s)", outcome,
          notes=f"{dropped[0]} packets dropped (nft numgen)")
    assert dropped[0] > 0, "nothing was dropped: the fault did not bite"


def test_redis_master_killed(world: World, fault_table: FaultTable) -> None:
    """SIGKILL the Redis master; the sentinels (in their own namespaces) promote the replica and both replicas
    follow. Fail-closed requests may get 503 only until the promotion (+ grace)."""
    promoted: list[float] = []
    open_team = world.teams["redis_master"].open
    spent_at_promotion: list[int] = []

    def fault(load: Load) -> None:
        old = world.redis.kill_master()
        new = world.redis.wait_promoted(old)
        promoted.append(load.mark("promoted"))
        spent_at_promotion.append(budget_counter(f"redis://{new.address}/0", open_team.name).spent)

    outcome = run_case(world, "redis_master", fault, fault_s=3.0)
    grace_s = 2.0

    def failover_503(r: Result) -> bool:
        return (r.team == world.teams["redis_master"].capped.name and r.status == 503
                and r.code == "budget_store_unavailable" and r.ended >= outcome.marks["fault"]
                and r.started <= promoted[0] + grace_s)

    refused = [r for r in outcome.results if failover_503(r)]
    window = (f"{min(r.started for r in refused) - outcome.marks['fault']:+.1f}.."
              f"{max(r.ended for r in refused) - outcome.marks['fault']:+.1f} s" if refused else "none")
    check(world, fault_table, "redis_master", "SIGKILL the Redis master (Sentinel in namespaces)", outcome,
          failover_503, holds_may_remain=True,
          notes=f"promoted {promoted[0] - outcome.marks['fault']:.1f} s after the kill; fail-closed 503s {window}")
    final = budget_counter(world.redis.master_url(), open_team.name).spent
    assert final > spent_at_promotion[0], "no spend reached the promoted master: the replicas did not follow"


def test_replica_killed(world: World, fault_table: FaultTable) -> None:
    """kill -9 r2 under load; clients drop it from their list; it is started again (its spool replays what it
    answered but had not committed). Only requests in flight on r2 at the kill may fail."""
    victim = world.replicas[1]
    targets = Targets(world.replicas)
    killed: list[float] = []

    def fault(load: Load) -> None:
        targets.live.remove(victim)
        assert victim.proc is not None
        killed.append(load.mark("kill"))
        kill9(victim.proc.pid)
        victim.proc.wait()

    def heal(load: Load) -> None:
        world.start(victim)
        world.wait_ready(victim)
        targets.live.append(victim)

    outcome = run_case(world, "replica_kill", fault, fault_s=1.0, heal=heal, targets=targets)

    def in_flight(r: Result) -> bool:
        return (served_by(r) == victim.url and r.transport_error is not None
                and r.started <= killed[0] + 0.5 and r.ended >= killed[0])

    cut = [r for r in outcome.results if in_flight(r)]
    check(world, fault_table, "replica_kill", "kill -9 replica r2 (restarted)", outcome, in_flight,
          holds_may_remain=True, notes=f"{len(cut)} cut in flight")
    assert len(cut) <= CAPPED_CLIENTS + OPEN_CLIENTS, f"{len(cut)} requests broken by one kill"
