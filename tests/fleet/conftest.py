"""The HAProxy fleet the fleet tests share (test_config_propagation, test_rolling_restart): two replicas started
once, not once per test (each start is seconds of CPU), handed to every test as just up (``Fleet.reset``).

Tests keep apart by what they send: request ids with a prefix of their own, whose ledger rows they count. Both are
in the xdist group ``serial-fleet``, so they run one after the other on one worker.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fleet.fleet_harness import Fleet, running_fleet

REPLICAS = 2


@pytest.fixture(scope="package")
def _shared_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, str]]:
    with running_fleet(tmp_path_factory.mktemp("fleet"), replicas=REPLICAS) as fleet:
        yield fleet, fleet.config.read_text()


@pytest.fixture
def fleet(_shared_fleet: tuple[Fleet, str]) -> Fleet:
    """``fleet.sh up 2`` over a copy of configs/fleet.yaml (a ledger schema of its own), as it was just after ``up``:
    a test may edit its file, replace a replica's link or stop it (``fleet.sh down``)."""
    shared, original = _shared_fleet
    shared.reset(original, REPLICAS)
    return shared
