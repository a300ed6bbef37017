"""Config across the fleet (issue 16, item 3): an edit of the policy file reaches every replica within 5 s under
load through HAProxy, and a replica that rejects its file keeps serving its last good policy, says why, and shows up
as config drift (its sha256 is not the fleet's) until it gets a valid file again.

Each replica reads the policy through its own link to the fleet's file (``fleet.sh`` sets them up as a pod's mounted
ConfigMap): editing the fleet's file is a ConfigMap update, replacing one replica's link is a replica whose copy went
bad. What a replica serves is read from it directly: ``/readyz`` (active sha256, last reload error) and ``/v1/route``
(the tier a request would get). The fleet is the package's (tests/fleet/conftest.py), as just up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.fault_harness import Call, Load, describe, proxy_errors
from tests.fleet.fleet_harness import ADMIN, RESEARCH, SUPPORT, Fleet, Replica, sha256_of
from tests.waiting import eventually

# Serial with the other fleets (pytest-xdist --dist loadgroup): HAProxy and two replicas under load, a propagation
# bound of 5 s that a competing fleet could stretch, and every fleet shares Redis database 3 with the fixed team
# names research / support (configs/fleet.yaml has no key prefix).
pytestmark = pytest.mark.xdist_group("serial-fleet")

PROPAGATION_S = 5.0  # the bound: replicas poll their file every second
HELLO = {"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": "Hello!"}]}


def plan(client: int, i: int) -> Call:
    return Call(team=RESEARCH if client % 2 == 0 else SUPPORT, body=HELLO)


def served(replica: Replica) -> tuple[str, str]:
    """(active config sha256, tier a research "Hello!" gets) on one replica."""
    sha = replica.readyz()["config"]["sha256"]
    route = httpx.post(replica.url + "/v1/route", json=HELLO, headers=RESEARCH.auth, timeout=5)
    route.raise_for_status()
    return sha, route.json()["tier"]


def converge(replicas: list[Replica], sha: str, tier: str, since: float) -> None:
    """Every replica serves ``sha`` (and routes accordingly) within PROPAGATION_S of ``since``, the write."""
    pending = {r.name: r for r in replicas}
    seen: dict[str, tuple[str, str]] = {}

    def converged() -> bool:
        for name, replica in list(pending.items()):
            seen[name] = served(replica)
            if seen[name] == (sha, tier):
                del pending[name]
        return not pending

    try:
        eventually(converged, "the fleet to converge", max(0.0, PROPAGATION_S - (time.monotonic() - since)))
    except AssertionError:
        raise AssertionError(f"after {PROPAGATION_S:g}s {sorted(pending)} still serve {seen} instead of "
                             f"({sha[:12]}, {tier})") from None


def drift(fleet: Fleet) -> dict[str, str]:
    """Replicas not serving the fleet's file, with the sha256 they serve."""
    want = sha256_of(fleet.config)
    return {r.name: sha for r in fleet.replicas() if (sha := r.readyz()["config"]["sha256"]) != want}


def tiers_through_haproxy(fleet: Fleet, n: int = 8) -> set[str]:
    with httpx.Client(timeout=30) as client:
        answers = [client.post(fleet.url + "/v1/chat/completions", json=HELLO, headers=RESEARCH.auth)
                   for _ in range(n)]
    assert all(a.status_code == 200 for a in answers), [a.status_code for a in answers]
    return {a.headers["x-tiergate-tier"] for a in answers}


def set_research_tiers(tiers: dict[str, str]) -> Callable[[dict[str, Any]], None]:
    """A config mutation for ``Fleet.write_config``: research's tier range."""
    return lambda config: config["teams"]["research"].update(tiers=tiers)


@pytest.mark.timeout(240)
def test_policy_edits_reach_every_replica_and_a_rejected_file_shows_as_drift(fleet: Fleet) -> None:
    # Background traffic through HAProxy the whole time (~12 requests a second, ~100 in all): each is checked, and
    # none may fail while the policy changes under it; more volume would add CPU, not proof.
    with Load(fleet.url, plan, clients=4, rate=3, prefix="cfg") as load:
        replicas = fleet.replicas()
        original = sha256_of(fleet.config)
        assert {served(r)[0] for r in replicas} == {original}

        # An edit of the fleet's file (a ConfigMap update) reaches every replica, and HAProxy's answers follow it.
        written = time.monotonic()
        v1 = fleet.write_config(set_research_tiers({"floor": "mid", "ceiling": "mid"}))
        converge(replicas, v1, "mid", written)
        assert tiers_through_haproxy(fleet) == {"mid"}
        assert drift(fleet) == {}

        # One replica's copy goes bad: it keeps serving its last good policy and says why.
        bad, good = replicas[-1], replicas[:-1]
        fleet.write_text(fleet.config.read_text() + "unknown_setting: 1\n", path=bad.policy_file)
        error = eventually(lambda: bad.readyz()["config"]["last_reload_error"], "the bad copy's rejection reported",
                           PROPAGATION_S)
        assert error and str(bad.policy_file) in error and "unknown_setting" in error, error
        assert served(bad) == (v1, "mid")

        # The fleet's next edit leaves it behind: drift, visible per replica and in `fleet.sh status`.
        written = time.monotonic()
        v2 = fleet.write_config(set_research_tiers({"floor": "frontier"}))
        converge(good, v2, "frontier", written)
        assert served(bad) == (v1, "mid")
        assert drift(fleet) == {bad.name: v1}
        scraped = httpx.get(bad.url + "/metrics", headers=ADMIN, timeout=5).text
        assert (f'tiergate_config_info{{sha256="{v1}"}} 1.0' in scraped
                and "tiergate_config_reload_rejected 1.0" in scraped), scraped
        status = {line.split()[0]: line for line in fleet.sh("status").splitlines()[2:]}
        assert "drift" in status[bad.name] and "rejected its file" in status[bad.name], status
        assert not any("drift" in status[r.name] for r in good), status

        # Given the fleet's file again, it catches up and the rejection is cleared.
        bad.policy_file.unlink()
        written = time.monotonic()
        bad.policy_file.symlink_to(fleet.config)
        converge([bad], v2, "frontier", written)
        assert bad.readyz()["config"]["last_reload_error"] is None
        assert drift(fleet) == {}
        assert tiers_through_haproxy(fleet) == {"frontier"}

        results = load.stop()
    errors = proxy_errors(results)
    assert not errors, f"{len(errors)} of {len(results)} requests failed while the policy changed: {describe(errors)}"
    assert all(r.done for r in results), describe([r for r in results if not r.done])
    assert len(results) >= 20
