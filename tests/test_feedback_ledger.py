"""The feedback table and the value report on real SQLite and PostgreSQL: the latest feedback per request counts
(history kept), only answered requests in range count, a team sees its own, and cost per accepted output is exact."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from metering.feedback import Feedback, accepted, feedback_pairs, per_accepted
from metering.ledger import Ledger, open_ledger
from tests.metering_fixtures import PG_URL, T0, make_record, pg_schema  # noqa: F401  (pg_schema is a fixture)

NOV = (date(2026, 11, 1), date(2026, 12, 1))


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}", "public"
    return PG_URL, request.getfixturevalue("pg_schema")


def test_accepted_rule() -> None:
    assert accepted(None, "accepted") and not accepted(1.0, "rejected")
    assert accepted(0.5, None) and not accepted(0.49, None) and accepted(0.7, "too-long")
    assert not accepted(None, "too-long") and not accepted(None, None)
    assert per_accepted(10, 4) == 3 and per_accepted(9, 6) == 2 and per_accepted(7, 2) == 4  # half up
    assert per_accepted(5, 0) is None


def test_value_report_and_latest_feedback(ledger_url: tuple[str, str]) -> None:
    url, schema = ledger_url
    records = [
        make_record(1, cost_nanos=1_001, model="m-a", tier="small", response_id="chatcmpl-1"),
        make_record(2, cost_nanos=2_000, model="m-a", tier="small", response_id="resp_2", api="responses"),
        make_record(3, cost_nanos=4_000, model="m-b", tier="frontier", response_id="msg_3", api="messages"),
        make_record(4, cost_nanos=8_000, model="m-b", tier="frontier"),  # no feedback
        make_record(5, cost_nanos=500, purpose="summarization", request_id="req-1.summary1"),  # not an output
        make_record(6, cost_nanos=300, purpose="embedding", model="emb", tier="embed", response_id=None),
        make_record(7, cost_nanos=90_000, started_at=T0 - timedelta(days=30)),  # October: out of range
        make_record(8, cost_nanos=16_000, team="team-b", response_id="chatcmpl-8"),
    ]
    now = datetime.now(UTC)

    def fb(request_id: str, at: int, team: str = "team-a", **given: Any) -> Feedback:
        return Feedback(request_id, team, "key-1", now + timedelta(seconds=at), **given)

    async def go() -> tuple[Any, ...]:
        ledger: Ledger = open_ledger(url, spool_dir=None, schema=schema)
        await ledger.start()
        for r in records:
            await ledger.write(r)
        await ledger.flush()
        found = (await ledger.answered(response_id="resp_2"), await ledger.answered(request_id="req-1"),
                 await ledger.answered(request_id="req-1.summary1"), await ledger.answered(response_id="nope"))
        for item in (fb("req-1", 0, label="accepted"), fb("req-1", 5, score=0.1),  # req-1 ends rejected
                     fb("req-2", 0, score=0.2), fb("req-2", 9, score=0.8, comment="better"),  # ends accepted
                     fb("req-3", 0, label="accepted"), fb("req-6", 0, label="meh", score=0.5),
                     fb("req-7", 0, label="accepted"),  # its record is out of range
                     fb("req-8", 0, team="team-b", label="accepted")):
            await ledger.add_feedback(item)
        by_team = await ledger.value(*NOV, group_by=["team"])
        a_by_tier = await ledger.value(*NOV, team="team-a", group_by=["tier", "model"])
        pairs = await feedback_pairs(ledger, now - timedelta(minutes=1), "team-a")
        later = await ledger.feedback(now + timedelta(seconds=7))
        await ledger.close()
        return found, by_team, a_by_tier, pairs, later

    found, by_team, a_by_tier, pairs, later = asyncio.run(go())
    assert found[0] == [("team-a", "req-2", "resp_2")] and found[1] == [("team-a", "req-1", "chatcmpl-1")]
    assert found[2] == [] and found[3] == []  # a summary is not an answer; an unknown id is nothing
    rows = {r.keys["team"]: r.to_dict() for r in by_team.rows}
    a_cost = 1_001 + 2_000 + 4_000 + 8_000 + 300
    assert rows["team-a"] == {"team": "team-a", "requests": 5, "with_feedback": 4, "accepted": 3,
                              "cost_usd": "0.000015301", "cost_per_accepted_usd": "0.000005100"}
    assert a_cost == 15_301 and per_accepted(a_cost, 3) == 5_100
    assert rows["team-b"]["accepted"] == 1 and rows["team-b"]["cost_per_accepted_usd"] == "0.000016000"
    assert by_team.totals.to_dict()["requests"] == 6 and by_team.totals.accepted == 4
    tiers = {(r.keys["tier"], r.keys["model"]): (r.requests, r.with_feedback, r.accepted, r.cost_nanos)
             for r in a_by_tier.rows}
    assert tiers == {("embed", "emb"): (1, 1, 1, 300), ("frontier", "m-b"): (2, 1, 1, 12_000),
                     ("small", "m-a"): (2, 2, 1, 3_001)}
    assert sorted(pairs) == [("req-1", 0.1, None), ("req-2", 0.8, None), ("req-3", None, "accepted"),
                             ("req-6", 0.5, "meh"), ("req-7", None, "accepted")]
    assert [(f.request_id, f.comment) for f in later] == [("req-2", "better")]


def test_value_group_by_is_checked(tmp_path: Path) -> None:
    async def go() -> None:
        ledger = open_ledger(f"sqlite:///{tmp_path / 'l.db'}", spool_dir=None)
        await ledger.start()
        try:
            with pytest.raises(ValueError, match="group_by"):
                await ledger.value(*NOV, group_by=["day"])
            with pytest.raises(ValueError, match="group_by"):
                await ledger.value(*NOV, group_by=[""])
        finally:
            await ledger.close()

    asyncio.run(go())
