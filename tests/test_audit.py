"""``tiergate audit`` against hand-made ledgers (SQLite and PostgreSQL) with hand-computed answers, and once as a
command (the CLI's ``main``, exit code and output) on the demo config.

Prices (litellm's table, nano-dollars per token): gpt-4o-mini input 150, cached 75, output 600; gpt-4o input 2500,
cached 1250, output 10000. The window is 3 days, so a monthly projection is exactly 10x the window's amount.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from metering.audit import AuditReport, TeamRules, audit, monthly, nearest_rank, render_text
from metering.ledger import open_ledger
from metering.record import UsageRecord
from tests.conftest import demo_config
from tests.finops_helpers import tiergate
from tests.metering_fixtures import PG_URL, make_record, pg_schema  # noqa: F401  (pg_schema is a fixture)

START = datetime(2026, 11, 1, tzinfo=UTC)
END = START + timedelta(days=3)
AT = START + timedelta(days=1)
RULES = {
    "a": TeamRules(frontier_tier="frontier", simple_below=0.35, max_tokens_cap=2048),
    "b": TeamRules(frontier_tier="mid", simple_below=0.5, max_tokens_cap=1024),
}


def _records() -> list[UsageRecord]:
    n = iter(range(10_000))

    def rec(**kw: Any) -> UsageRecord:
        return make_record(next(n), started_at=kw.pop("started_at", AT), **kw)

    a1 = dict(team="a", key_id="a1", model="gpt-4o", tier="mid")
    a2 = dict(team="a", key_id="a2", model="o1", tier="frontier", cost_nanos=90_000, counterfactual_cost_nanos=90_000)
    out = [
        # key a1: system prompts average exactly 500 (not flagged); 2 x 1,024 cached and 3,000 saved tokens on gpt-4o
        rec(**a1, system_tokens=600, completion_tokens=100, score=0.1, cached_tokens=1024),
        rec(**a1, system_tokens=600, completion_tokens=200, score=0.2, cached_tokens=1024),
        rec(**a1, system_tokens=700, completion_tokens=300, score=0.9, context_saved_tokens=3000),
        rec(**a1, system_tokens=100, completion_tokens=1000, score=None),
        # key a2: average 600 (flagged); both scored simple yet served by the frontier tier
        rec(**a2, system_tokens=800, completion_tokens=50, score=0.3),
        rec(**a2, system_tokens=400, completion_tokens=60, score=0.34),
        # a summary: counts for routing savings and its own cost, never as a chat request
        rec(team="a", key_id="a1", purpose="summarization", completion_tokens=300, cost_nanos=1234,
            counterfactual_cost_nanos=5000, system_tokens=90),
        # the client went away mid-answer (499): billed, so its prompt and savings count as in the spend report;
        # its cut-short length is left out of the output percentiles
        rec(**a1, status=499, system_tokens=500, completion_tokens=7000, cost_nanos=5_000,
            counterfactual_cost_nanos=20_000, score=None),
        # never counted: failed before any token (not billed), answered by the response cache, before the window,
        # at its (exclusive) end
        rec(**{**a2, "status": 502, "cost_nanos": 0, "counterfactual_cost_nanos": 0}, system_tokens=9999,
            completion_tokens=5000, score=0.1),
        rec(**a1, deployment="response-cache", system_tokens=9999, completion_tokens=4000, cached_tokens=1000,
            context_saved_tokens=500),
        rec(**a1, started_at=START - timedelta(microseconds=1), system_tokens=9999, completion_tokens=9999,
            cached_tokens=9999),
        rec(**a1, started_at=END, system_tokens=9999, completion_tokens=9999, cached_tokens=9999),
    ]
    # team b: 20 small-tier answers of 10..200 tokens (P95 = 190, 10 tokens above it), scores 0.00..0.95
    out += [rec(team="b", key_id="b1", completion_tokens=10 * (i + 1), score=i / 20,
                cached_tokens=2000 if i == 0 else 0) for i in range(20)]
    out.append(rec(team="b", key_id="b1", model="gpt-4o", tier="mid", completion_tokens=30, score=0.2))
    out.append(rec(team="b", key_id="b1", model="my-llama", completion_tokens=5, cached_tokens=100, cost_nanos=0,
                   counterfactual_cost_nanos=0))
    return out


def check(report: AuditReport) -> None:
    prompts = {(r.team, r.key_id): (r.requests, r.total_tokens, r.max_tokens, r.flagged) for r in report.system_prompts}
    assert prompts == {
        ("a", None): (7, 3700, 800, True), ("a", "a1"): (5, 2500, 700, False), ("a", "a2"): (2, 1200, 800, True),
        ("b", None): (22, 0, 0, False), ("b", "b1"): (22, 0, 0, False),
    }
    outputs = {(r.team, r.model): (r.requests, r.p50, r.p95, r.max, r.cap, r.tokens_above_p95) for r in report.outputs}
    assert outputs == {
        ("a", "gpt-4o"): (4, 200, 1000, 1000, 2048, 0), ("a", "o1"): (2, 50, 60, 60, 2048, 0),
        ("b", "gpt-4o-mini"): (20, 100, 190, 200, 1024, 10), ("b", "gpt-4o"): (1, 30, 30, 30, 1024, 0),
        ("b", "my-llama"): (1, 5, 5, 5, 1024, 0),
    }
    frontier = {r.team: (r.frontier_tier, r.simple_requests, r.on_frontier) for r in report.frontier}
    assert frontier == {"a": ("frontier", 4, 2), "b": ("mid", 11, 1)}
    assert report.frontier[0].share == 0.5

    window = {name: (lever.window_nanos, lever.monthly_nanos) for name, lever in report.levers.items()}
    routing = 4 * (450_000 - 27_000) + (20_000 - 5_000) + (5000 - 1234) + 21 * (450_000 - 27_000)
    assert window == {
        "routing": (routing, 10 * routing),
        "prefix_caching": (2048 * 1250 + 2000 * 75, 10 * (2048 * 1250 + 2000 * 75)),
        "rolling_summaries": (3000 * 2500, 10 * 3000 * 2500),
        "max_tokens_p95": (10 * 600, 10 * 10 * 600),
    }
    assert report.levers["prefix_caching"].teams == {"a": (2_560_000, 25_600_000), "b": (150_000, 1_500_000)}
    assert report.summarization_cost_nanos == 1234
    assert report.response_cache_savings_nanos == 450_000 - 27_000
    assert report.unpriced_models == ["my-llama"]
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["levers"]["rolling_summaries"]["monthly_usd"] == "0.075000000"
    assert as_json["report_savings_usd"] == f"0.{routing + 423_000:09d}"
    text = render_text(report)
    assert text.count("OVER") == 2 and "0.075000000" in text and "50.0%" in text
    assert "client-aborted (499)" in text and "the spend report's savings_usd" in text


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """``(url, schema)`` of an empty ledger: a SQLite file, or a fresh schema on the test PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}", "public"
    return PG_URL, request.getfixturevalue("pg_schema")


def test_audit_numbers(ledger_url: tuple[str, str]) -> None:
    url, schema = ledger_url

    async def scenario() -> AuditReport:
        ledger = open_ledger(url, spool_dir=None, schema=schema)
        await ledger.start()
        try:
            for record in _records():
                await ledger.write(record)
            result = await audit(ledger, START, END, RULES)
            # the audit's savings agree with the spend report over the same (whole) days
            spend = await ledger.report(START.date(), END.date(), group_by=())
            assert result.to_dict()["report_savings_usd"] == spend.totals.to_dict()["savings_usd"]
            return result
        finally:
            await ledger.close()

    check(asyncio.run(scenario()))


def test_projection_and_percentile_arithmetic() -> None:
    week = timedelta(days=7)
    assert monthly(7, week) == 30 and monthly(1, week) == 4  # 4.29 rounds down
    assert monthly(Decimal("0.5"), timedelta(days=30)) == 0 and monthly(Decimal("1.5"), timedelta(days=30)) == 2
    assert nearest_rank({v: 1 for v in range(1, 101)}, 95) == 95
    assert nearest_rank({5: 1, 10: 1, 20: 1}, 95) == 20 and nearest_rank({5: 1, 10: 1, 20: 1}, 50) == 10
    assert nearest_rank({7: 19, 1000: 1}, 95) == 7  # the one outlier is the top 5%


def test_audit_cli_on_the_demo_config(tmp_path: Path) -> None:
    now = datetime.now(UTC) - timedelta(minutes=5)
    records = [
        make_record(1, team="research", key_id="research-demo", model="gpt-4o-mini", tier="small", score=0.1,
                    started_at=now, system_tokens=1500, cached_tokens=1024),
        make_record(2, team="research", key_id="research-demo", model="o1", tier="frontier", score=0.15,
                    started_at=now, system_tokens=1500),
        make_record(3, team="support", key_id="support-demo", model="gpt-4o-mini", score=0.1, started_at=now),
    ]

    async def seed() -> None:
        ledger = open_ledger(f"sqlite:///{tmp_path}/ledger.db", spool_dir=None)
        await ledger.start()
        for record in records:
            await ledger.write(record)
        await ledger.close()

    asyncio.run(seed())
    out = tiergate("audit", "--config", demo_config(tmp_path), "--since", "1d", "--format", "json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    rows = {(r["team"], r["key_id"]): r for r in report["system_prompts"]["rows"]}
    assert rows[("research", "research-demo")]["flagged"] and not rows[("support", "support-demo")]["flagged"]
    # demo policy: research may reach 'frontier' and leaves 'small' at 0.180; support tops out at 'mid' (0.180)
    assert {r["team"]: (r["frontier_tier"], r["simple_requests"], r["on_frontier"])
            for r in report["frontier_on_simple"]} == {"research": ("frontier", 2, 1), "support": ("mid", 1, 0)}
    assert {r["team"]: r["max_tokens_cap"] for r in report["output_tokens"]} == {"research": 2048, "support": 1024}
    assert report["levers"]["prefix_caching"]["monthly_usd"] == "0.002304000"  # 1,024 x 75 nanos x 30 days / 1 day
