"""A rolling restart of every replica under load behind HAProxy fails no request and loses no record (issue 16,
item 4).

``fleet.sh restart`` takes one replica at a time out of HAProxy's rotation through its runtime API (drain), waits
for its sessions to finish, sends SIGTERM (the replica finishes what it holds, flushes its ledger, releases its
leases), starts it again and waits until HAProxy's own health checks see it ready before the next one. Clients keep
sending plain and streamed chats through HAProxy the whole time; afterwards every answer they saw must be complete
and 2xx, and every one must have exactly one ledger row in PostgreSQL, matched by the request id the client sent.

The fleet is the package's (tests/fleet/conftest.py): its ledger may hold other tests' rows, so the rows counted are
the ones with this test's request ids.
"""

from __future__ import annotations

import pytest

from tests.fault_harness import Call, LedgerReader, Load, collect, describe, proxy_errors
from tests.fleet.fleet_harness import RESEARCH, SUPPORT, Fleet

# Serial with the other fleets (pytest-xdist --dist loadgroup): HAProxy and two replicas under load, and every fleet
# shares Redis database 3 with the fixed team names research / support (configs/fleet.yaml has no key prefix).
pytestmark = pytest.mark.xdist_group("serial-fleet")

PREFIX = "roll"


def plan(client: int, i: int) -> Call:
    """Mostly short chats; every fourth a stream long enough (~0.3-0.5 s) to be in flight when a replica stops."""
    team = RESEARCH if client % 2 == 0 else SUPPORT
    if i % 4 == 3:
        body = {"model": "auto", "stream": True, "max_tokens": 120,
                "messages": [{"role": "user", "content": f"Tell me a story, part {i}."}]}
    else:
        body = {"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": f"Hello {client}-{i}!"}]}
    return Call(team=team, body=body)


@pytest.mark.timeout(240)
def test_rolling_restart_under_load_fails_nothing_and_loses_nothing(fleet: Fleet) -> None:
    before = {r.name: r.pid for r in fleet.replicas()}
    # Six clients keep requests (a quarter of them ~0.4 s streams) on both replicas all the time; ~18 a second
    # is ~10x the overlap the test needs over the ~10 s a restart of two replicas takes: more volume adds CPU,
    # not proof (every request is checked one by one).
    with Load(fleet.url, plan, clients=6, rate=3, prefix=PREFIX) as load:
        load.run_for(1.0)
        started = load.mark("restart")
        fleet.sh("restart")
        ended = load.mark("restarted")
        load.run_for(1.0)
    results = load.stop()
    after = {r.name: r.pid for r in fleet.replicas()}
    fleet.sh("down")  # every replica has flushed its ledger when this returns

    assert set(after) == set(before) and all(after[name] != before[name] for name in before), (before, after)
    during = [r for r in results if started <= r.started <= ended]
    assert len(during) >= 30, f"too little load overlapped the restart to prove anything: {len(during)} requests"
    assert sum(r.call.stream for r in during) >= 5

    errors = proxy_errors(results)
    assert not errors, f"{len(errors)} failed requests of {len(results)}: {describe(errors, since=started)}"
    incomplete = [r for r in results if not r.done]
    assert not incomplete, f"{len(incomplete)} incomplete answers: {describe(incomplete, since=started)}"

    books = collect(results, LedgerReader(fleet.ledger_dsn))
    assert not books.lost(), f"{len(books.lost())} answered requests have no ledger row: {books.lost()[:5]}"
    assert not books.duplicated(), books.duplicated()[:5]
    assert {rid for rid in books.ledger if rid.startswith(f"{PREFIX}-")} == {r.rid for r in results}
