"""``tiergate bill`` end to end (the CLI's ``main`` with its exit code and output) against a SQLite ledger, JSON and
CSV agreeing."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import pytest

from metering.ledger.sqlite import SqliteLedger
from proxy.cli import build_parser
from tests.conftest import demo_config
from tests.finops_helpers import tiergate
from tests.metering_fixtures import T0, make_record


def _seed(db: Path) -> None:
    async def go() -> None:
        ledger = SqliteLedger(db, spool_dir=None)
        await ledger.start()
        for i, (team, model, cost) in enumerate([("a", "m1", 1_500_000_001), ("a", "m2", 7), ("b", "m1", 99)]):
            await ledger.write(make_record(i, team=team, model=model, cost_nanos=cost))
        await ledger.write(make_record(9, team="a", model="m1", cost_nanos=5, started_at=T0.replace(month=10)))
        await ledger.close()

    asyncio.run(go())


def _bill(*args: str) -> str:
    out = tiergate("bill", *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_bill_json_and_csv_agree(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    _seed(db)
    config = demo_config(tmp_path)
    config.write_text(config.read_text().replace(f"sqlite:///{tmp_path}/ledger.db", f"sqlite:///{db}"))
    as_json = json.loads(_bill("--config", str(config), "--team", "a", "--period", "2026-11"))
    assert as_json["totals"]["cost_usd"] == "1.500000008"
    assert [(r["model"], r["cost_usd"]) for r in as_json["rows"]] == [("m1", "1.500000001"), ("m2", "0.000000007")]
    rows = list(csv.DictReader(io.StringIO(_bill("--ledger", f"sqlite:///{db}", "--team", "a", "--period",
                                                 "2026-11", "--format", "csv"))))
    assert rows == [{k: str(v) for k, v in r.items()} for r in as_json["rows"]]


def test_bill_rejects_bad_period() -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bill", "--ledger", "sqlite:///x.db", "--team", "a", "--period", "2026-13"])
    assert exc.value.code == 2


def test_bill_names_an_invalid_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: []\nteams: {}\n")
    run = tiergate("bill", "--config", bad, "--team", "a", "--period", "2026-11")
    assert run.returncode == 2 and str(bad) in run.stderr and "tiers" in run.stderr


def test_bill_for_an_unknown_team_names_the_known_ones(tmp_path: Path) -> None:
    """A typo is exit 2 naming the teams of the ledger (and, with --config, of the policy), not a $0 bill; a team
    the policy knows but that spent nothing is a real $0 bill."""
    db = tmp_path / "ledger.db"
    _seed(db)
    config = demo_config(tmp_path)
    config.write_text(config.read_text().replace(f"sqlite:///{tmp_path}/ledger.db", f"sqlite:///{db}"))
    typo = tiergate("bill", "--ledger", f"sqlite:///{db}", "--team", "nosuch", "--period", "2026-11")
    assert typo.returncode == 2 and typo.stdout == ""
    assert "unknown team 'nosuch'; known teams: a, b" in typo.stderr
    from_config = tiergate("bill", "--config", config, "--team", "nosuch", "--period", "2026-11")
    assert from_config.returncode == 2 and "known teams: a, b, research, support" in from_config.stderr
    idle = json.loads(_bill("--config", str(config), "--team", "support", "--period", "2026-11"))
    assert idle["totals"]["cost_usd"] == "0.000000000" and idle["rows"] == []


def test_bill_groups_tags_with_any_dimension_and_shows_untagged_records(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"

    async def seed() -> None:
        ledger = SqliteLedger(db, spool_dir=None)
        await ledger.start()
        for i, (model, tags, cost) in enumerate([("m1", {"exp": "e1"}, 10), ("m2", {"exp": "e1"}, 20),
                                                 ("m1", {}, 300), ("m2", {"exp": "e2", "env": "ci"}, 4_000)]):
            await ledger.write(make_record(i, team="a", model=model, tags=tags, cost_nanos=cost))
        await ledger.close()

    asyncio.run(seed())
    rows = list(csv.DictReader(io.StringIO(_bill("--ledger", f"sqlite:///{db}", "--team", "a", "--period", "2026-11",
                                                 "--group-by", "tag,model", "--format", "csv"))))
    assert [(r["tag_key"], r["tag_value"], r["model"], r["cost_usd"]) for r in rows] == [
        ("env", "ci", "m2", "0.000004000"), ("env", "", "m1", "0.000000310"), ("env", "", "m2", "0.000000020"),
        ("exp", "e1", "m1", "0.000000010"), ("exp", "e1", "m2", "0.000000020"), ("exp", "e2", "m2", "0.000004000"),
        ("exp", "", "m1", "0.000000300")]
    for key in ("env", "exp"):  # each tag key's rows, untagged included, add up to the bill
        assert sum(int(r["requests"]) for r in rows if r["tag_key"] == key) == 4
