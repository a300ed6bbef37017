"""Month-end forecasts: the model on exact series (pure), ``tiergate forecast`` on a real SQLite ledger, and the
FinOps reads (daily rollups, day x model sums, request rows, hourly profile) agreeing on SQLite and PostgreSQL.

Series are in nano-dollars per UTC day; November 2026 starts on a Sunday.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from metering.finops.daily import daily_spend, day_model_totals
from metering.finops.forecast import (
    Partial,
    budget_outlook,
    forecast_month,
    run_rate,
    usd,
)
from metering.finops.hourly import hourly_profile, request_rows
from metering.finops.outlook import outlook
from metering.finops.scopes import Scope
from metering.ledger import Ledger, open_ledger
from metering.ledger.sqlite import SqliteLedger
from metering.record import UsageRecord
from tests.conftest import ROOT
from tests.finops_helpers import policy_file, tiergate
from tests.forked import run_cli
from tests.metering_fixtures import PG_URL, pg_schema  # noqa: F401  (pg_schema is a fixture)

NOV = date(2026, 11, 1)
M = 1_000_000  # a million nano-dollars: $0.001


def days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days)]


def weekly(start: date, end: date, weekday: int = 100 * M, weekend: int = 30 * M) -> dict[date, int]:
    return {d: weekend if d.weekday() >= 5 else weekday for d in days(start, end)}


def test_a_weekly_cycle_is_projected_exactly() -> None:
    history = weekly(date(2026, 9, 1), date(2026, 12, 1))
    truth = sum(v for d, v in history.items() if d >= NOV)
    f = forecast_month(history, date(2026, 11, 15))
    assert f.spent_nanos == sum(v for d, v in history.items() if NOV <= d < date(2026, 11, 15))
    assert f.projected == pytest.approx(truth, rel=1e-9)
    assert f.low <= truth <= f.high and f.high - f.low < truth * 1e-6  # no noise: no width
    assert [round(v) for _, v in f.days[:2]] == [30 * M, 100 * M]  # Sunday 15th, Monday 16th
    assert f.burn_rate == pytest.approx((5 * 100 + 2 * 30) * M / 7)


def test_a_one_off_spike_barely_moves_the_forecast_but_doubles_the_run_rate() -> None:
    history = weekly(date(2026, 9, 1), date(2026, 11, 15))
    spiked = {**history, date(2026, 11, 10): 1500 * M}
    as_of = date(2026, 11, 15)
    calm, spike = forecast_month(history, as_of), forecast_month(spiked, as_of)
    remaining = (calm.projected - calm.spent_nanos, spike.projected - spike.spent_nanos)
    assert remaining[1] == pytest.approx(remaining[0], rel=0.02)
    assert spike.spent_nanos - calm.spent_nanos == 1400 * M  # what happened is counted, once
    assert run_rate(spiked, as_of) > 1.8 * run_rate(history, as_of)


def test_a_growing_series_beats_the_run_rate() -> None:
    start = date(2026, 9, 1)
    history = {d: int((100 + 2 * i) * M * (0.4 if d.weekday() >= 5 else 1))
               for i, d in enumerate(days(start, date(2026, 12, 1)))}
    truth = sum(v for d, v in history.items() if d >= NOV)
    for as_of in (date(2026, 11, 8), date(2026, 11, 15), date(2026, 11, 22)):
        model = abs(forecast_month(history, as_of).projected - truth)
        naive = abs(run_rate(history, as_of) - truth)
        assert model < naive / 2, as_of


def test_a_new_scope_is_forecast_from_its_own_days() -> None:
    history = {date(2026, 11, d): 50 * M for d in (8, 9, 10)}
    f = forecast_month(history, date(2026, 11, 11))
    assert f.projected == pytest.approx(150 * M + 20 * 50 * M)  # not diluted by weeks of zeros before it
    assert forecast_month({}, date(2026, 11, 11)).projected == 0.0


def test_the_day_under_way_counts_what_it_spent_and_what_it_usually_still_spends() -> None:
    history = {d: 100 * M for d in days(date(2026, 10, 1), date(2026, 11, 11))}
    f = forecast_month(history, date(2026, 11, 11), Partial(spent_nanos=80 * M, elapsed_share=0.5))
    assert f.spent_nanos == 1080 * M
    assert f.projected == pytest.approx((1000 + 80 + 50 + 19 * 100) * M)
    assert f.days[0] == (date(2026, 11, 11), pytest.approx(130 * M))


def test_budgets_run_out_on_the_day_cumulative_spend_reaches_them() -> None:
    history = {d: 100 * M for d in days(date(2026, 10, 1), date(2026, 11, 11))}
    f = forecast_month(history, date(2026, 11, 11))
    month, day = budget_outlook(f, history, 2000 * M, 90 * M)
    assert (month.period, month.runs_out_on, month.projected) == ("month", date(2026, 11, 20), pytest.approx(3000 * M))
    assert (day.period, day.runs_out_on) == ("day", date(2026, 11, 11))
    assert budget_outlook(f, history, 500 * M, None)[0].runs_out_on == date(2026, 11, 5)  # already past
    assert budget_outlook(f, history, 5000 * M, 150 * M)[0].runs_out_on is None
    assert budget_outlook(f, history, None, 150 * M)[0].runs_out_on is None
    assert month.to_dict() == {"period": "month", "limit_usd": "2.000000000", "projected_usd": "3.0000",
                               "projected_share": 1.5, "runs_out_on": "2026-11-20"}


def test_usd_is_rounded_for_people() -> None:
    assert usd(1_234_567_890.4) == "1.2346" and usd(0.0) == "0.0000" and usd(49_999.0) == "0.0000"


# -- the ledger --------------------------------------------------------------------------------------------------

def _records() -> list[UsageRecord]:
    """Oct 1 - Nov 14 2026: team a's key a1 $2 a day (tagged project=x), key a2 $1 on weekdays; team b $0.5 a day;
    one request each at 09:00 UTC. Plus a $100 request on Nov 20 that a forecast as of Nov 15 must not see."""
    out = []

    def add(day: date, team: str, key: str, usd_cents: int, model: str, tags: dict[str, str]) -> None:
        at = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=9)
        out.append(UsageRecord(request_id=f"f{len(out)}", started_at=at, ended_at=at + timedelta(seconds=1),
                               team=team, key_id=key, requested_model="auto", model=model, status=200, tags=tags,
                               tier="small", prompt_tokens=1000, completion_tokens=100 + len(out) % 7,
                               cost_nanos=usd_cents * 10_000_000))

    for d in days(date(2026, 10, 1), date(2026, 11, 15)):
        add(d, "a", "a1", 200, "gpt-4o", {"project": "x"})
        if d.weekday() < 5:
            add(d, "a", "a2", 100, "gpt-4o-mini", {})
        add(d, "b", "b1", 50, "gpt-4o-mini", {"project": "y"})
    add(date(2026, 11, 20), "a", "a1", 10_000, "gpt-4o", {})
    return out


async def _write(ledger: Ledger, records: list[UsageRecord]) -> None:
    await ledger.start()
    try:
        await asyncio.gather(*(ledger.write(r) for r in records))
    finally:
        await ledger.close()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("forecast") / "ledger.db"
    asyncio.run(_write(SqliteLedger(db, spool_dir=None), _records()))
    return db


def _config(path: Path, db: Path) -> Path:
    return policy_file(path, db, f"""  a:
    keys: [{{id: a1, sha256: "{'1' * 64}"}}, {{id: a2, sha256: "{'2' * 64}"}}]
    budgets:
      team: {{monthly_usd: "80", daily_usd: "2.5"}}
      per_key: {{monthly_usd: "50"}}
      per_tag: {{"project=x": {{monthly_usd: "70"}}}}
  b:
    keys: [{{id: b1, sha256: "{'3' * 64}"}}]
""")


def forecast(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return tiergate("forecast", "--config", config, *args)


def test_cli_forecast_by_team_key_tag_and_model(seeded: Path, tmp_path: Path) -> None:
    config = _config(tmp_path / "policy.yaml", seeded)
    out = forecast(config, "--as-of", "2026-11-15", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["as_of"], doc["month_start"], doc["month_end"], doc["now"]) == (
        "2026-11-15", "2026-11-01", "2026-12-01", None)
    rows = {r["team"]: r for r in doc["rows"]}
    # Nov 1-14: a1 14 x $2, a2 10 weekdays x $1; the $100 on the 20th is after the forecast.
    assert rows["a"]["spent_usd"] == "38.000000000" and rows["b"]["spent_usd"] == "7.000000000"
    # Rest of November: 16 days of a1 at $2 and 11 weekdays of a2 at $1 -> $38 + $43.
    assert rows["a"]["projected_usd"] == "81.0000" and rows["b"]["projected_usd"] == "15.0000"
    month, day = rows["a"]["budgets"]
    assert (month["limit_usd"], month["runs_out_on"]) == ("80.000000000", "2026-11-30")
    assert (day["limit_usd"], day["runs_out_on"]) == ("2.500000000", "2026-11-16")  # Monday: $2 + $1
    assert rows["b"]["budgets"] == [] and doc["total"]["projected_usd"] == "96.0000"
    keys = json.loads(forecast(config, "--as-of", "2026-11-15", "--group-by", "key", "--team", "a",
                               "--json").stdout)
    by_key = {r["key"]: r for r in keys["rows"]}
    assert list(by_key) == ["a1", "a2"] and by_key["a1"]["budgets"][0]["runs_out_on"] == "2026-11-25"
    tags = json.loads(forecast(config, "--as-of", "2026-11-15", "--group-by", "tag", "--json").stdout)
    assert [(r["team"], r["tag"], r["projected_usd"]) for r in tags["rows"]] == [
        ("a", "project=x", "60.0000"), ("b", "project=y", "15.0000")]
    models = json.loads(forecast(config, "--as-of", "2026-11-15", "--group-by", "model", "--json").stdout)
    assert {r["model"]: r["projected_usd"] for r in models["rows"]} == {"gpt-4o": "60.0000",
                                                                         "gpt-4o-mini": "36.0000"}
    text = forecast(config, "--as-of", "2026-11-15")
    assert text.returncode == 0 and "monthly $80.0000: runs out 2026-11-30" in text.stdout


def test_cli_names_the_known_teams_for_an_unknown_one(seeded: Path, tmp_path: Path) -> None:
    out = run_cli(["forecast", "--config", str(_config(tmp_path / "policy.yaml", seeded)), "--team", "nosuch"],
                  cwd=ROOT)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == "tiergate forecast: unknown team 'nosuch'; known teams: a, b"
    bad = forecast(_config(tmp_path / "policy.yaml", seeded), "--as-of", "2026-13-01")
    assert bad.returncode == 2 and "expected a date" in bad.stderr


def test_forecast_now_uses_the_hourly_profile(seeded: Path) -> None:
    async def go() -> dict:
        ledger = SqliteLedger(seeded, spool_dir=None)
        await ledger.start()
        try:
            # Noon of Nov 14: every request of the past week came at 09:00, so the day's spend is done.
            now = datetime(2026, 11, 14, 12, tzinfo=UTC)
            return (await outlook(ledger, "team", {}, team="b", now=now)).to_dict()
        finally:
            await ledger.close()

    doc = asyncio.run(go())
    assert doc["as_of"] == "2026-11-14" and doc["now"] == "2026-11-14T12:00:00+00:00"
    (row,) = doc["rows"]
    assert row["spent_usd"] == "7.000000000" and row["projected_usd"] == "15.0000"  # 14 days + 16 x $0.5


async def _reads(ledger: Ledger) -> tuple:
    await ledger.start()
    try:
        start, end = date(2026, 10, 1), date(2026, 11, 15)
        series = {dim: await daily_spend(ledger, dim, start, end) for dim in ("team", "key", "tag", "model")}
        t0 = datetime(2026, 11, 10, tzinfo=UTC)
        rows = await request_rows(ledger, t0, t0 + timedelta(days=2), team="a")
        return (series, await day_model_totals(ledger, start, end),
                [(r.request_id, r.started_at, r.tags, r.cost_nanos) for r in rows],
                await hourly_profile(ledger, date(2026, 11, 14), team="a"))
    finally:
        await ledger.close()


def test_finops_reads_agree_on_sqlite_and_postgresql(pg_schema: str, tmp_path: Path) -> None:  # noqa: F811
    records = _records()
    asyncio.run(_write(open_ledger(PG_URL, spool_dir=None, schema=pg_schema), records))
    asyncio.run(_write(SqliteLedger(tmp_path / "l.db", spool_dir=None), records))
    pg = asyncio.run(_reads(open_ledger(PG_URL, spool_dir=None, schema=pg_schema)))
    lite = asyncio.run(_reads(SqliteLedger(tmp_path / "l.db", spool_dir=None)))
    assert pg == lite
    series, totals, rows, profile = pg
    assert series["tag"][Scope("tag", "a", "project=x")][date(2026, 11, 2)] == 2_000_000_000
    assert totals[(date(2026, 11, 2), "gpt-4o-mini")] == (1_500_000_000, 2000, 207, 2)
    assert [r[0] for r in rows] == ["f108", "f109", "f111", "f112"]  # team a, Nov 10-11, in order
    assert rows[0][1] == datetime(2026, 11, 10, 9, tzinfo=UTC) and rows[0][2] == {"project": "x"}
    assert profile is not None and profile[8] == 0.0 and profile[9] == profile[23] == 1.0
