"""Shadow sampling end to end: a real proxy process, simulated tiers, the simulator's judge mode, a SQLite ledger.

Every request of team ``t`` is shadowed (share 1.0): one shadow and one judge call each, metered with purposes
``shadow`` and ``judge``, an outcome row per judged request; the daily cap stops shadowing; a failing judge keeps
its usage record and stores no outcome; prompts are stored only where the team opted in.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import httpx
import orjson

from classifiers.features import FEATURE_NAMES
from tests.waiting import eventually

TEAMS = {  # team -> (key, learning block)
    "t": ("sk-t", "{shadow_share: 1.0, shadow_daily_usd: 100, judge: judge-sim}"),
    "capped": ("sk-capped", "{shadow_share: 1.0, shadow_daily_usd: 0.000000001, judge: judge-sim}"),
    "failing": ("sk-failing", "{shadow_share: 1.0, shadow_daily_usd: 100, judge: broken-judge}"),
    "open": ("sk-open", "{shadow_share: 1.0, shadow_daily_usd: 100, judge: judge, store_prompts: true}"),
}


def _config(tmp_path: Path) -> Path:
    lines = [
        "metering:", f"  ledger: sqlite:///{tmp_path}/ledger.db",
        "tiers:",
        "  - name: small", "    deployments:", "      - id: small-sim", "        model: simulated/gpt-4o-mini",
        "  - name: frontier", "    deployments:", "      - id: frontier-sim", "        model: simulated/gpt-4o",
        # the shadowed answer is slow, so a client that waited for it could not have its answer first
        "        simulator: {latency_ms: 300}",
        "  - name: judge", "    deployments:", "      - id: judge-sim", "        model: simulated/o1",
        "      - id: broken-judge", "        model: simulated/o1",
        "        simulator: {fail_rate: 1.0, fail_kind: '500'}",
        "teams:",
    ]
    for team, (key, learning) in TEAMS.items():
        lines += [f"  {team}:", "    keys:", f"      - id: {team}-key",
                  f"        sha256: {hashlib.sha256(key.encode()).hexdigest()}",
                  "    tiers: {floor: small, ceiling: frontier}",
                  "    routing: {thresholds: {frontier: 0.99}}",  # everything stays on small: shadowed on frontier
                  f"    learning: {learning}"]
    path = tmp_path / "shadow.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _chat(proxy, key: str, content: str) -> httpx.Response:
    return httpx.post(proxy.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": "auto", "messages": [{"role": "user", "content": content}], "max_tokens": 40},
                      timeout=30)


def _rows(db: Path, sql: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        conn.close()


def _wait_for(db: Path, sql: str, count: int) -> list[sqlite3.Row]:
    """The query's rows once there are at least ``count``: shadow and judge calls run after the client's answer and
    the ledger commits in groups, so they arrive a little later."""
    def enough() -> list[sqlite3.Row] | None:
        rows = _rows(db, sql)
        return rows if len(rows) >= count else None

    return eventually(enough, f"{count} row(s) of {sql}")


def test_shadow_judge_outcomes_and_caps(tmp_path: Path, start_proxy) -> None:
    db = tmp_path / "ledger.db"
    proxy = start_proxy(_config(tmp_path))

    first = _chat(proxy, "sk-t", "What is the capital of France?")
    assert first.status_code == 200 and first.headers["x-tiergate-tier"] == "small"
    # the client has its answer before the shadow (300 ms upstream) and the judge ran: no outcome yet
    assert _rows(db, "SELECT * FROM outcomes") == []
    again = _chat(proxy, "sk-t", "What is the capital of France?")
    assert again.json()["choices"] == first.json()["choices"]  # the client's answer is the routed tier's, unchanged

    records = _wait_for(db, "SELECT * FROM records WHERE team = 't' ORDER BY started_at", 6)
    by_purpose: dict[str, list[sqlite3.Row]] = {}
    for r in records:
        by_purpose.setdefault(r["purpose"], []).append(r)
    assert sorted((p, len(v)) for p, v in by_purpose.items()) == [("chat", 2), ("judge", 2), ("shadow", 2)]
    chat, shadow, judge = by_purpose["chat"][0], by_purpose["shadow"][0], by_purpose["judge"][0]
    assert shadow["tier"] == "frontier" and judge["deployment"] == "judge-sim"
    assert all(r["status"] == 200 and r["cost_nanos"] > 0 for r in records)
    # ordering: the shadow started once the client's request had ended, the judge once the shadow had
    assert chat["ended_at"] <= shadow["started_at"] and shadow["ended_at"] <= judge["started_at"]

    outcomes = _wait_for(db, "SELECT * FROM outcomes WHERE team = 't'", 2)
    assert len(outcomes) == 2
    for o in outcomes:
        assert (o["weak_tier"], o["strong_tier"], o["routed_tier"]) == ("small", "frontier", "small")
        assert (o["weak_score"], o["strong_score"]) in ((1.0, 0.0), (0.0, 1.0), (0.5, 0.5))
        assert len(orjson.loads(o["features"])) == len(FEATURE_NAMES) and o["messages"] is None
        assert o["judge"] == "judge-sim" and 0.0 <= o["prior_score"] <= 1.0

    # the daily cap (settled spend): the first request's shadow spend reaches it, a later one is not shadowed
    assert _chat(proxy, "sk-capped", "Name a colour.").status_code == 200
    assert len(_wait_for(db, "SELECT * FROM records WHERE team = 'capped' AND purpose = 'judge'", 1)) == 1
    assert _chat(proxy, "sk-capped", "Name another colour.").status_code == 200
    # the failing judge: its usage records are kept (failed), no outcome is stored
    assert _chat(proxy, "sk-failing", "Name a fruit.").status_code == 200
    # opted in: the messages are stored
    assert _chat(proxy, "sk-open", "Name a river.").status_code == 200

    failing = _wait_for(db, "SELECT * FROM records WHERE team = 'failing' AND purpose = 'judge'", 1)
    assert len(failing) == 1 and failing[0]["status"] >= 500 and failing[0]["cost_nanos"] == 0
    opened = _wait_for(db, "SELECT * FROM outcomes WHERE team = 'open'", 1)
    assert orjson.loads(opened[0]["messages"]) == [{"role": "user", "content": "Name a river."}]
    assert opened[0]["judge"] == "judge-sim"  # a tier named as judge: its first deployment
    capped = _wait_for(db, "SELECT purpose, COUNT(*) AS n FROM records WHERE team = 'capped' GROUP BY purpose", 3)
    assert {r["purpose"]: r["n"] for r in capped} == {"chat": 2, "shadow": 1, "judge": 1}
    assert _rows(db, "SELECT * FROM outcomes WHERE team = 'failing'") == []
