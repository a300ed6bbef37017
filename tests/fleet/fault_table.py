"""The fleet fault table: one row per fault case of tests/fleet (Sentinel failover, the multi-host suite), shown at
the end of the pytest session and written to test-artifacts/fleet-faults.md (git-ignored) for the closing note.

Import ``fault_table_fixture`` (the ``fault_table`` fixture) into a test module to use it; every module writes
the rows of the whole session so far, so the file ends up with all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import tests.fault_harness as harness
from tests.conftest import ROOT
from tests.fault_harness import NANOS_PER_USD

PATH = ROOT / "test-artifacts" / "fleet-faults.md"


def usd(nanos: int) -> str:
    return f"${nanos / NANOS_PER_USD:.6f}"


def in_leases(nanos: int, lease: int) -> str:
    """A Redis - ledger difference in dollars and leases."""
    return f"{'+' if nanos > 0 else ''}{usd(nanos)} ({nanos / lease:+.2f} lease)"


@dataclass
class Row(harness.Row):
    """``fault_harness.Row`` with the Redis - ledger column."""

    drift: str = ""

    def line(self) -> str:
        return (f"| {self.test} | {self.requests} | {self.proxy_errors} | {self.records_lost} | {self.drift} "
                f"| {self.overshoot} | {self.notes} |")


class FaultTable(harness.Summary):
    HEADER = ("| case | requests | proxy-caused errors | records lost | Redis - ledger | overshoot | notes |\n"
              "|---|---|---|---|---|---|---|")


TABLE = FaultTable()


@pytest.fixture(scope="module", name="fault_table")
def fault_table_fixture(request: pytest.FixtureRequest) -> Iterator[FaultTable]:
    if not request.config.pluginmanager.has_plugin("tiergate-fleet-faults"):
        request.config.pluginmanager.register(TABLE, "tiergate-fleet-faults")
    yield TABLE
    TABLE.write(PATH)
