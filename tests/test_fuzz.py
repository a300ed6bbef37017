"""Fuzzed requests against the real app in process: no 5xx, every error in OpenAI's shape, and the ledger records
exactly the status the client got (tests/fuzz_harness.py has the strategies and the checks).

Derandomized, so CI runs the same examples every time; benchmarks/fuzz/run.py runs the same strategies for long.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz_harness import FuzzApp, Tally, model_request, spend_request

# One worker runs the module in order: the last test reads the tally the fuzz tests filled (module-scoped state).
pytestmark = pytest.mark.xdist_group("fuzz")

_SETTINGS = settings(derandomize=True, database=None, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzApp]:
    with FuzzApp(tmp_path_factory.mktemp("fuzz")) as fuzz_app:
        yield fuzz_app


@pytest.fixture(scope="module")
def tally() -> Tally:
    return Tally()


@settings(_SETTINGS, max_examples=250)
@given(request=model_request())
def test_model_endpoints_keep_their_promises(app: FuzzApp, tally: Tally, request: dict[str, Any]) -> None:
    assert app.send(request, tally) == []


@settings(_SETTINGS, max_examples=80)
@given(request=spend_request())
def test_spend_endpoints_keep_their_promises(app: FuzzApp, tally: Tally, request: dict[str, Any]) -> None:
    assert app.send(request, tally) == []


def test_the_fuzz_reached_the_pipeline(tally: Tally) -> None:
    """A fuzz that only ever hits 400s proves little: some examples must have been served and metered."""
    served = sum(n for key, n in tally.statuses.items() if key.endswith(" 200"))
    assert tally.reached_pipeline >= 20 and served >= 20, tally.statuses
