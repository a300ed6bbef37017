"""The one percentile (``metering.percentile``): nearest rank, on sequences and histograms alike, and the SQL the
ledger runs gives the same P50/P95 as the Python function over the same rows, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.ledger import open_ledger
from metering.percentile import nearest_rank, rank
from tests.metering_fixtures import PG_URL, T0, make_record, pg_schema  # noqa: F401  (pg_schema is a fixture)


def test_nearest_rank_is_the_value_at_rank_ceil_p_n() -> None:
    assert nearest_rank(range(1, 101), 95) == 95 and nearest_rank(range(1, 101), 50) == 50
    assert nearest_rank([5, 1, 3, 2, 4], 50) == 3  # rank ceil(2.5) = 3 of the sorted values
    assert nearest_rank([7.0, 1.0], 50) == 1.0 and nearest_rank([7.0, 1.0], 51) == 7.0  # a value seen, not 4.0
    assert nearest_rank([3, 9], 0) == 3 and nearest_rank([3, 9], 100) == 9
    assert rank(1000, 2.5) == 25 and rank(1000, 97.5) == 975 and rank(3, 80) == 3  # fractional P exactly
    assert nearest_rank({7: 19, 1000: 1}, 95) == 7  # a histogram: the one outlier is the top 5%
    with pytest.raises(ValueError):
        nearest_rank([], 50)
    with pytest.raises(ValueError):
        nearest_rank({4: 0}, 50)
    with pytest.raises(ValueError):
        rank(10, 101)


@given(st.lists(st.integers(0, 50), min_size=1, max_size=60), st.integers(0, 100))
def test_a_histogram_gives_what_its_values_give(values: list[int], p: int) -> None:
    histogram: dict[int, int] = {}
    for v in values:
        histogram[v] = histogram.get(v, 0) + 1
    assert nearest_rank(histogram, p) == nearest_rank(values, p)
    at = nearest_rank(values, p)
    assert sum(v <= at for v in values) >= rank(len(values), p) > sum(v < at for v in values)


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}", "public"
    return PG_URL, request.getfixturevalue("pg_schema")


def test_sql_percentiles_agree_with_python(ledger_url: tuple[str, str]) -> None:
    rng = random.Random(7)
    midnight = datetime.combine(T0.date(), datetime.min.time(), tzinfo=UTC)
    sizes = {"gpt-4o-mini": 1, "gpt-4o": 2, "o1": 19, "o3": 20, "o4": 101}  # ranks at every remainder of n
    outputs = {model: [rng.choice((0, 1, 7, 7, 30, 250, 4000, rng.randrange(5000))) for _ in range(n)]
               for model, n in sizes.items()}
    records = [make_record(i * 1000 + j, model=model, completion_tokens=v, started_at=midnight + timedelta(seconds=j))
               for i, (model, values) in enumerate(outputs.items()) for j, v in enumerate(values)]
    records.append(make_record(999_999, model="o4", status=500, completion_tokens=10**6, started_at=midnight))
    url, schema = ledger_url

    async def scenario() -> None:
        ledger = open_ledger(url, spool_dir=None, schema=schema)
        await ledger.start()
        try:
            for record in records:
                await ledger.write(record)
            found = {r.model: r for r in await ledger.output_percentiles(T0.date(), T0.date() + timedelta(days=1))}
        finally:
            await ledger.close()
        assert set(found) == set(sizes)
        for model, values in outputs.items():  # the failed request (status 500) is in no percentile
            row = found[model]
            assert (row.requests, row.p50, row.p95) == (len(values), nearest_rank(values, 50),
                                                        nearest_rank(values, 95)), model

    asyncio.run(scenario())
