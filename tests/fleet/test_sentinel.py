"""Redis high availability through Sentinel (issue 16, item 2).

tiergate opens Redis in one place (``metering.redis_client.open_redis``) for budgets, caches and alerts; with a
``redis+sentinel://`` URL that is the master Sentinel names. The failover test starts a private master, a replica
and three sentinels (Debian's ``redis-sentinel``) on free loopback ports, drives a proxy (two workers, so two
leases per team) configured with the Sentinel URL, SIGKILLs the master under load and checks that tiergate follows
the promoted replica: a fail-open team is never refused, a fail-closed team gets 503 only inside the failover
window (measured and reported), no answered request lacks its record, and the new master's budget counters equal
the ledger within one lease per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from metering.redis_client import open_redis, parse_sentinel_url
from router.config import MeteringSettings
from tests.conftest import Process, free_port
from tests.fault_harness import (
    Call,
    LedgerReader,
    Load,
    Proxies,
    Result,
    collect,
    describe,
    fault_config,
    overshoot_cell,
    proxy_errors,
    settled_counter,
)
from tests.fleet.fault_table import FaultTable, Row, fault_table_fixture, in_leases, usd  # noqa: F401 - a fixture
from tests.fleet.redis_ha import Node, SentinelGroup, require_sentinel
from tests.proxy_metering_helpers import Procs, chat, new_team
from tests.test_faults import approximate_reservation, lease_of, reservation
from tests.waiting import eventually

# ---- the URL forms -------------------------------------------------------------------------------------------------

def test_sentinel_url_parses_into_sentinels_service_db_and_credentials() -> None:
    target = parse_sentinel_url("redis+sentinel://app:s%40cret@10.0.0.5:26379,[::1]:26380/mymaster/3")
    assert target.sentinels == (("10.0.0.5", 26379), ("::1", 26380))
    assert (target.service, target.db, target.username, target.password) == ("mymaster", 3, "app", "s@cret")
    assert parse_sentinel_url("redis+sentinel://h:1/svc").db == 0


@pytest.mark.parametrize("url, problem", [
    ("redis+sentinel://h:26379", "path must be /service"),
    ("redis+sentinel://h:26379/", "path must be /service"),
    ("redis+sentinel://h:26379/svc/zero", "path must be /service"),
    ("redis+sentinel://h/svc", "not host:port"),
    ("redis+sentinel://h:99999/svc", "not host:port"),
    ("redis+sentinel:///svc", "at least one sentinel"),
    ("redis+sentinel://h:1/svc?ssl=true", "no query"),
])
def test_bad_sentinel_urls_say_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        open_redis(url)


def test_policy_accepts_every_form_and_refuses_a_sentinel_url_without_service() -> None:
    for url in ("redis://h:6379/0", "rediss://h:6380", "unix:///run/redis.sock?db=2",
                "redis+sentinel://a:26379,b:26379/mymaster/0"):
        assert MeteringSettings(redis=url).redis == url
    for url in ("redis+sentinel://a:26379", "memcached://h:11211", "sentinel://a:26379/mymaster"):
        with pytest.raises(ValueError, match="redis"):
            MeteringSettings(redis=url)


def test_plain_and_unix_socket_urls_open_the_same_server(tmp_path: Path) -> None:
    """redis:// and unix:// through ``open_redis``, on a private server listening on both."""
    port, sock = free_port(), tmp_path / "redis.sock"
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--unixsocket", str(sock),
                               "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)

    async def roundtrip() -> bytes | None:
        tcp, unix = open_redis(f"redis://127.0.0.1:{port}/2"), open_redis(f"unix://{sock}?db=2")
        try:
            await tcp.set("tg-url-forms", "both")
            return await unix.get("tg-url-forms")
        finally:
            await tcp.aclose()
            await unix.aclose()

    try:
        eventually(sock.exists, "the private redis-server's socket", 10)
        assert asyncio.run(roundtrip()) == b"both"
    finally:
        server.kill()
        server.wait()


# ---- failover under load -------------------------------------------------------------------------------------------

@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """Launched, not yet healthy: the test waits for the replica's sync and the sentinels' discovery (seconds)
    after starting its proxy, so the two overlap (the servers themselves listen within milliseconds)."""
    require_sentinel()
    nodes = [Node("127.0.0.1", free_port()) for _ in range(5)]
    group = SentinelGroup(tmp_path / "redis", nodes[0], nodes[1], nodes[2:])
    try:
        yield group.launch()
    finally:
        group.close()


@pytest.fixture
def mock(tmp_path: Path) -> Iterator[Process]:
    with contextlib.closing(Procs(tmp_path)) as procs:
        yield procs.mock()


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[Proxies]:
    with contextlib.closing(Proxies(tmp_path)) as started:
        yield started


def test_master_killed_under_load_tiergate_follows_the_promoted_replica(
        tmp_path: Path, sentinel_group: SentinelGroup, mock: Process, proxies: Proxies,
        fault_table: FaultTable) -> None:
    group = sentinel_group
    body = chat("Which Redis is the master now?", max_tokens=16)
    cap = 1500 * approximate_reservation(mock, body)
    budgets = {"team": {"daily_usd": str(cap / 10**9)}}
    opened = new_team("sopen", budgets={**budgets, "redis_failure": "open"})
    closed = new_team("sclosed", budgets={**budgets, "redis_failure": "closed"})
    db = tmp_path / "ledger.db"
    config = fault_config(tmp_path / "sentinel.yaml", {"small": [mock.url]}, [opened, closed], f"sqlite:///{db}",
                          redis=group.url)
    workers = 2
    proxy = proxies.start(config, workers=workers)
    group.wait_healthy()  # before any load: the replica in sync, every sentinel aware of it and of its peers
    res = reservation(proxy, opened, body)

    # The shared client itself, in process: a connection pooled before the kill must reach the new master after.
    loop = asyncio.new_event_loop()
    client = open_redis(group.url)
    loop.run_until_complete(client.set("tg-sentinel-probe", "before"))

    # Three clients per team at up to 10 requests a second each: every phase (before the kill, the failover
    # window, after the promotion) still sees dozens of each team's requests, each one checked.
    load = Load(proxy.url, lambda n, i: Call(opened if n % 2 else closed, body), 6, 10.0, "sent")
    with load:
        load.run_for(2.0)
        old = group.kill_master()
        killed = load.mark("kill")
        new = group.wait_promoted(old)
        promoted = load.mark("promoted")
        load.run_for(4.0)
    results = load.results
    probe = loop.run_until_complete(client.get("tg-sentinel-probe"))
    loop.run_until_complete(client.set("tg-sentinel-probe", "after"))
    loop.run_until_complete(client.aclose())
    loop.close()

    grace_s = 2.0  # a fail-closed request that started just before the promotion may still be asking a sentinel

    def failover_503(r: Result) -> bool:
        return (r.team == closed.name and r.status == 503 and r.code == "budget_store_unavailable"
                and r.ended >= killed and r.started <= promoted + grace_s)

    # A fail-closed 503 leaves no ledger record (a refusal by the budget gets one): waiting for it is pointless.
    books = collect([r for r in results if not failover_503(r)], LedgerReader(f"sqlite:///{db}"))
    errors = proxy_errors(results, expected=failover_503)
    refused = [r for r in results if failover_503(r)]
    open_refused = [r for r in results if r.team == opened.name and not r.done]
    followed = [r for r in results if r.team == closed.name and r.done and r.started > promoted]
    counters = {t.name: settled_counter(f"redis://{new.address}/0", t.name) for t in (opened, closed)}
    lease = lease_of(cap, res)
    drift = {name: counters[name].spent - books.spend(name) for name in counters}
    window = (f"failover {promoted - killed:.1f} s (kill to promotion); fail-closed 503s "
              + (f"{min(r.started for r in refused) - killed:+.1f}..{max(r.ended for r in refused) - killed:+.1f} s"
                 if refused else "none"))
    fault_table.add(Row(f"Sentinel: SIGKILL the master under load ({workers} workers, loopback)", len(results),
                        len(errors), len(books.lost()),
                        overshoot_cell(max(books.spend(t.name) for t in (opened, closed)), cap, res),
                        f"{window}, {len(refused)} of them; fail-open refused {len(open_refused)}",
                        drift=", ".join(f"{'open' if n == opened.name else 'closed'} {in_leases(d, lease)}"
                                        for n, d in drift.items())))

    assert probe == b"before", f"the client did not follow the failover (read {probe!r})"
    assert not errors, f"{len(errors)} proxy-caused errors (time from the kill): {describe(errors, since=killed)}"
    assert not open_refused, f"fail-open requests refused: {describe(open_refused, since=killed)}"
    assert followed, "no fail-closed request succeeded after the promotion: tiergate did not follow the new master"
    assert not books.lost(), f"{len(books.lost())} completed responses have no record: {books.lost()[:5]}"
    assert not books.duplicated() and not books.status_mismatches() and not books.cost_mismatches()
    for name, state in counters.items():
        assert abs(drift[name]) <= workers * lease, (
            f"{name}: new master {usd(state.spent)} vs ledger {usd(books.spend(name))}: off by more than one lease "
            f"per worker ({usd(lease)} each)")
        assert state.holds == 0 and state.reserved == 0, f"{name}: holds leaked on the new master: {state}"
