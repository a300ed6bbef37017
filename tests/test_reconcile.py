"""Reconciliation: the documented provider export formats (fixtures in tests/fixtures/invoices/) against a real
SQLite ledger holding known records, through ``tiergate reconcile`` in a subprocess and the pure functions.

The ledger (UTC days 2026-11-03..05): gpt-4o-mini every day, gpt-4o on the 3rd and 5th (the invoice also bills the
4th: a day missing from the ledger), claude-sonnet-4 on the 3rd and 4th (the 4th invoiced 7% above the ledger with
the same tokens: a price gap), and the OpenAI invoice bills gpt-4.1-nano on the 5th, which the ledger never saw.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from metering.finops.invoices import InvoiceError, read_invoice
from metering.finops.reconcile import LedgerCell, Tolerance, match_models, reconcile
from metering.ledger.sqlite import SqliteLedger
from metering.record import UsageRecord
from tests.conftest import ROOT
from tests.finops_helpers import policy_file, tiergate
from tests.forked import run_cli

FIXTURES = ROOT / "tests" / "fixtures" / "invoices"
OPENAI_COSTS = FIXTURES / "openai_costs.json"
OPENAI_USAGE = FIXTURES / "openai_usage_completions.json"
ANTHROPIC_COST = FIXTURES / "anthropic_cost_report.json"
ANTHROPIC_USAGE = FIXTURES / "anthropic_usage_report.json"
SONNET = "anthropic/claude-sonnet-4-20250514"

# (day of November, model, prompt, cached, cache written, completion, cost in nano-dollars)
RECORDS = [
    (3, "gpt-4o-mini", 100_000, 0, 0, 20_000, 27_000_000),
    (3, "gpt-4o-mini", 300_000, 100_000, 0, 50_000, 67_500_000),
    (3, "gpt-4o", 200_000, 0, 0, 30_000, 800_000_000),
    (3, SONNET, 150_000, 0, 0, 40_000, 1_050_000_000),
    (4, "gpt-4o-mini", 100_000, 0, 0, 10_000, 21_000_000),
    (4, SONNET, 200_000, 50_000, 30_000, 100_000, 2_100_000_000),
    (5, "gpt-4o-mini", 50_000, 0, 0, 10_000, 13_500_000),
    (5, "gpt-4o", 10_000, 0, 0, 5_000, 75_000_000),
]


def _record(i: int, day: int, model: str, prompt: int, cached: int, written: int, completion: int,
            cost: int) -> UsageRecord:
    started = datetime(2026, 11, day, 9, tzinfo=UTC) + timedelta(minutes=i)
    return UsageRecord(request_id=f"rc-{i}", started_at=started, ended_at=started + timedelta(seconds=2),
                       team="t", key_id="k", requested_model="auto", model=model, status=200, tier="small",
                       prompt_tokens=prompt, cached_tokens=cached, cache_write_tokens=written,
                       completion_tokens=completion, cost_nanos=cost)


def seed(db: Path, records: list[tuple] = RECORDS) -> None:
    async def go() -> None:
        ledger = SqliteLedger(db, spool_dir=None)
        await ledger.start()
        for i, row in enumerate(records):
            await ledger.write(_record(i, *row))
        await ledger.close()

    asyncio.run(go())


def config(tmp_path: Path, db: Path) -> Path:
    return policy_file(tmp_path / "policy.yaml", db, f'  t:\n    keys: [{{id: k, sha256: "{"0" * 64}"}}]\n')


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return tiergate("reconcile", *args)


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    db = tmp_path / "ledger.db"
    seed(db)
    return config(tmp_path, db)


def test_fixtures_parse_to_the_documented_amounts() -> None:
    costs = read_invoice(OPENAI_COSTS)
    assert costs.source == "openai-costs" and costs.provider == "openai"
    assert costs.days == {date(2026, 11, d) for d in (3, 4, 5, 6)}  # the 6th: an empty bucket still counts
    mini = [ln for ln in costs.lines if ln.day == date(2026, 11, 3) and ln.model == "gpt-4o-mini-2024-07-18"]
    assert sum(ln.cost_nanos or 0 for ln in mini) == 94_500_000  # dollars, parsed exactly (no float)
    cost = read_invoice(ANTHROPIC_COST)
    # Anthropic's amount is a decimal string in cents: "45.00" is $0.45.
    assert [ln.cost_nanos for ln in cost.lines][:2] == [450_000_000, 600_000_000]
    usage = read_invoice(ANTHROPIC_USAGE)
    day4 = [ln for ln in usage.lines if ln.day == date(2026, 11, 4)]
    # Two hourly buckets add into their day; input counts uncached + cache reads + cache writes.
    assert sum(ln.input_tokens or 0 for ln in day4) == 200_000
    assert sum(ln.output_tokens or 0 for ln in day4) == 100_000
    assert read_invoice(OPENAI_USAGE).lines[0].requests == 2


def test_exact_match_exits_0_with_capture_rate_1(policy: Path) -> None:
    out = run("--config", policy, "--invoice", OPENAI_COSTS, "--invoice", OPENAI_USAGE, "--invoice", ANTHROPIC_COST,
              "--invoice", ANTHROPIC_USAGE, "--start", "2026-11-03", "--end", "2026-11-04", "--tolerance", "0",
              "--tolerance-usd", "0", "--json")
    assert out.returncode == 0, out.stderr + out.stdout
    doc = json.loads(out.stdout)
    assert doc["ok"] is True and doc["capture_rate"] == 1.0 and doc["token_capture_rate"] == 1.0
    assert doc["ledger_cost_usd"] == doc["invoice_cost_usd"] == "1.944500000"
    assert {(r["model"], r["ledger_model"], r["status"]) for r in doc["rows"]} == {
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini", "ok"), ("gpt-4o-2024-08-06", "gpt-4o", "ok"),
        ("claude-sonnet-4-20250514", SONNET, "ok")}


def test_missing_day_unknown_model_and_price_gap_exit_1(policy: Path) -> None:
    # In a process of its own once: the real entry point's exit code.
    out = run_cli(["reconcile", "--config", str(policy), "--invoice", str(OPENAI_COSTS), "--invoice", str(OPENAI_USAGE),
                   "--invoice", str(ANTHROPIC_COST), "--invoice", str(ANTHROPIC_USAGE), "--json"], cwd=ROOT)
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["start"], doc["end"]) == ("2026-11-03", "2026-11-07")  # the exports' days, end exclusive
    status = {(r["day"], r["model"]): r["status"] for r in doc["rows"]}
    assert status[("2026-11-04", "gpt-4o-2024-08-06")] == "missing_in_ledger"
    assert status[("2026-11-05", "gpt-4.1-nano-2025-04-14")] == "unknown_model"
    assert status[("2026-11-04", "claude-sonnet-4-20250514")] == "price_gap"
    assert sum(s == "ok" for s in status.values()) == 6
    assert doc["unknown_models"] == ["gpt-4.1-nano-2025-04-14"]
    # Largest gap first: gpt-4o's missing $0.45, then Sonnet's $0.15, then nano's $0.03.
    assert [(g["model"], g["gap_usd"]) for g in doc["largest_gaps"]] == [
        ("gpt-4o-2024-08-06", "0.450000000"), ("claude-sonnet-4-20250514", "0.150000000"),
        ("gpt-4.1-nano-2025-04-14", "0.030000000")]
    assert doc["ledger_cost_usd"] == "4.154000000" and doc["invoice_cost_usd"] == "4.784000000"
    text = run("--config", policy, "--invoice", OPENAI_COSTS, "--invoice", ANTHROPIC_COST)
    assert text.returncode == 1 and "unknown models (billed, never metered): gpt-4.1-nano-2025-04-14" in text.stdout


def test_unpriced_model_and_uncovered_provider(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    seed(db, RECORDS + [(5, "gpt-4o-mini", 1000, 0, 0, 100, 0), (5, "gemini/gemini-2.0-flash", 10, 0, 0, 5, 9)])
    cells = asyncio.run(_cells(db))
    invoices = [read_invoice(OPENAI_COSTS), read_invoice(OPENAI_USAGE)]
    result = reconcile(cells, invoices, date(2026, 11, 5), date(2026, 11, 6))
    mini = next(r for r in result.rows if r.model == "gpt-4o-mini-2024-07-18")
    # An extra request metered at $0 hides in the cost (the same), not in the tokens (2% more than billed) ...
    assert mini.status == "usage_gap" and mini.gap_nanos == 0
    assert result.uncovered_models == ("gemini/gemini-2.0-flash",)  # no Gemini export: not compared
    zero = reconcile({(date(2026, 11, 5), "gpt-4o-mini"): LedgerCell(0, 1000, 100, 1)}, [read_invoice(OPENAI_COSTS)],
                     date(2026, 11, 5), date(2026, 11, 6))
    # ... and a model metered only at $0 is unpriced.
    assert {r.model: r.status for r in zero.rows}["gpt-4o-mini-2024-07-18"] == "unpriced"
    assert zero.models("unpriced") == ["gpt-4o-mini-2024-07-18"]


async def _cells(db: Path) -> dict:
    from metering.finops.daily import day_model_totals

    ledger = SqliteLedger(db, spool_dir=None)
    await ledger.start()
    try:
        return {k: LedgerCell(*v) for k, v in (await day_model_totals(ledger, date(2026, 11, 1),
                                                                     date(2026, 12, 1))).items()}
    finally:
        await ledger.close()


def test_tolerance_absorbs_provider_rounding() -> None:
    tol = Tolerance(relative=0.01, absolute_nanos=10_000_000)
    assert tol.cost_ok(1_000_000_000, 1_009_000_000) and not tol.cost_ok(1_000_000_000, 1_011_000_000)
    assert tol.cost_ok(1_000, 5_000_000)  # below a cent, rounding is not a gap


def test_model_names_match_across_prefixes_and_snapshots() -> None:
    assert match_models(["gpt-4o-mini-2024-07-18", "claude-sonnet-4-20250514", "o3"],
                        ["gpt-4o-mini", SONNET, "o1"]) == {"gpt-4o-mini-2024-07-18": "gpt-4o-mini",
                                                           "claude-sonnet-4-20250514": SONNET}
    # Two ledger snapshots of one model: ambiguous, so no guess.
    assert match_models(["gpt-4o-2024-11-20"], ["gpt-4o-2024-08-06", "gpt-4o-2024-05-13"]) == {}


@pytest.mark.parametrize("edit, line, field", [
    (('"input_tokens": 400000', '"input_tokens": "400000"'), 11, "input_tokens"),
    (('"start_time": 1793750400', '"start_time": 1793840000'), 43, "start_time"),
])
def test_bad_input_exits_2_naming_file_line_and_field(policy: Path, tmp_path: Path, edit: tuple[str, str],
                                                      line: int, field: str) -> None:
    bad = tmp_path / "bad.json"
    text = OPENAI_USAGE.read_text()
    assert edit[0] in text
    bad.write_text(text.replace(edit[0], edit[1], 1))
    out = run("--config", policy, "--invoice", bad)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines()[0].startswith(f"tiergate reconcile: {bad}:{line}: {field}: ")


def test_unreadable_inputs_exit_2(policy: Path, tmp_path: Path) -> None:
    not_json = tmp_path / "x.json"
    not_json.write_text('{"data": [\n  {"results": [}\n')
    out = run("--config", policy, "--invoice", not_json)
    assert out.returncode == 2 and f"{not_json}:2: not JSON" in out.stderr
    euros = tmp_path / "eur.json"
    euros.write_text(OPENAI_COSTS.read_text().replace('"currency": "usd"', '"currency": "eur"', 1))
    out = run("--config", policy, "--invoice", euros)
    assert out.returncode == 2 and "currency: only USD is reconciled" in out.stderr
    with pytest.raises(InvoiceError, match="cannot read"):
        read_invoice(tmp_path / "absent.json")
    assert run("--config", policy, "--invoice", OPENAI_COSTS, "--tolerance-usd", "lots").returncode == 2


def test_cost_amounts_never_pass_through_float(tmp_path: Path) -> None:
    # 0.1 + 0.2 in float is 0.30000000000000004; parsed as decimals the day is exactly $0.3.
    doc = json.loads(OPENAI_COSTS.read_text())
    doc["data"] = [doc["data"][3]]
    doc["data"][0]["results"] = [
        {"object": "organization.costs.result", "amount": {"value": v, "currency": "usd"}, "line_item": None,
         "project_id": None} for v in ("__A__", "__B__")]
    path = tmp_path / "sum.json"
    path.write_text(json.dumps(doc).replace('"__A__"', "0.1").replace('"__B__"', "0.2"))
    assert sum(ln.cost_nanos or 0 for ln in read_invoice(path).lines) == int(Decimal("0.3") * 10**9)
