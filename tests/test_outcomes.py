"""The outcome store: its table on SQLite and PostgreSQL (DDL, add, query), and ``tiergate outcomes export``, whose
rows are the shared routing-outcome format that ``tiergate learn --outcomes`` reads (features only: messages null).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from classifiers.features import FEATURE_NAMES, featurize
from metering.ledger import open_ledger
from metering.outcomes import Outcome
from tests.conftest import mock_config
from tests.finops_helpers import tiergate
from tests.metering_fixtures import PG_URL, pg_schema  # noqa: F401  (fixture)

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def judged(i: int, team: str = "t", at: datetime = T0, messages: list | None = None) -> Outcome:
    """Row ``i``: long prompts (odd i) need the strong tier, short ones tie, so the rows have two classes."""
    content = ("Prove, step by step, that the sum of the first n odd numbers is n squared. " * (1 + i % 7)
               if i % 2 else f"What is {i} plus {i}?")
    features = featurize([{"role": "user", "content": content}])
    weak, strong = (0.0, 1.0) if i % 2 else (0.5, 0.5)
    return Outcome(request_id=f"req-{team}-{i}", team=team, created_at=at + timedelta(seconds=i),
                   features=tuple(float(x) for x in features), feature_names=FEATURE_NAMES,
                   prior_score=0.1 + i % 5 / 10, model_id="default", weak_tier="small", strong_tier="frontier",
                   routed_tier="small", ceiling_tier="frontier", weak_score=weak, strong_score=strong,
                   judge="judge-sim", messages=messages)


def _store(url: str, schema: str, outcomes: list[Outcome]) -> list[Outcome]:
    async def go() -> list[Outcome]:
        ledger = open_ledger(url, spool_dir=None, schema=schema)
        await ledger.start()
        try:
            for o in outcomes:
                await ledger.add_outcome(o)
            return await ledger.outcomes(T0 - timedelta(days=1))
        finally:
            await ledger.close()

    return asyncio.run(go())


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db", "public"
    return PG_URL, request.getfixturevalue("pg_schema")


def test_outcomes_table_add_and_query(ledger_url: tuple[str, str]) -> None:
    url, schema = ledger_url
    message = [{"role": "user", "content": "Name a river. \u00e9\u4e2d"}]
    rows = [judged(i) for i in range(3)] + [judged(0, team="u", messages=message)]
    stored = _store(url, schema, rows + rows[:1])  # the same id again: stored once (ON CONFLICT DO NOTHING)
    assert sorted(stored, key=lambda o: o.id) == sorted(rows, key=lambda o: o.id)  # every field round-trips

    async def query() -> tuple[list[Outcome], list[Outcome], list[Outcome]]:
        ledger = open_ledger(url, spool_dir=None, schema=schema)  # a second start: the DDL is idempotent
        await ledger.start()
        try:
            return (await ledger.outcomes(T0, "t"), await ledger.outcomes(T0 + timedelta(seconds=1), "t"),
                    await ledger.outcomes(T0, "nobody"))
        finally:
            await ledger.close()

    of_t, later, nobody = asyncio.run(query())
    assert [o.request_id for o in of_t] == ["req-t-0", "req-t-1", "req-t-2"]  # oldest first, team filtered
    assert [o.request_id for o in later] == ["req-t-1", "req-t-2"]  # since is inclusive
    assert nobody == []
    assert next(o for o in stored if o.team == "u").messages == message


def _tiergate(*args: str) -> subprocess.CompletedProcess[str]:
    """``tiergate ARGS``: exit code, stdout and stderr (run by the CLI's ``main`` in this process)."""
    return tiergate(*args)


def _config(tmp_path: Path) -> Path:
    return mock_config(tmp_path, {"small": ["http://127.0.0.1:9"], "frontier": ["http://127.0.0.1:9"]})


def test_export_rows_are_learnable_and_filtered(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _store(f"sqlite:///{tmp_path}/ledger.db", "public",
           [judged(i) for i in range(60)] + [judged(0, team="other", at=T0 - timedelta(days=3))])
    out = tmp_path / "t.jsonl"
    done = _tiergate("outcomes", "export", "--config", str(config), "--team", "t", "--since", "2026-11-20",
                     "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 60 and rows[0] == judged(0).export_row()
    for row in rows:  # the shared format's required fields; features-only
        assert row["messages"] is None and {"id", "weak_score", "strong_score", "meta"} <= set(row)
        assert row["meta"]["feature_names"] == list(FEATURE_NAMES)
        assert len(row["meta"]["features"]) == len(FEATURE_NAMES)
    every = tmp_path / "all.jsonl"
    assert _tiergate("outcomes", "export", "--config", str(config), "--out", str(every)).returncode == 0
    assert len(every.read_text().splitlines()) == 61  # no --team, no --since: every team, every day
    later = tmp_path / "later.jsonl"
    assert _tiergate("outcomes", "export", "--config", str(config), "--since", "2026-11-21",
                     "--out", str(later)).returncode == 0
    assert later.read_text() == ""

    model = tmp_path / "t.onnx"
    learned = _tiergate("learn", "--outcomes", str(out), "--out", str(model), "--seed", "1")
    assert learned.returncode == 0, learned.stderr + learned.stdout
    assert model.stat().st_size > 0 and "APGR" in learned.stdout


def test_export_unknown_team_names_the_known_ones(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _store(f"sqlite:///{tmp_path}/ledger.db", "public", [judged(0)])
    done = _tiergate("outcomes", "export", "--config", str(config), "--team", "nope", "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "unknown team 'nope'" in done.stderr and "known teams: t" in done.stderr
    assert not (tmp_path / "x").exists()
