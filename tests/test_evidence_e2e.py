"""``GET /v1/routing/evidence`` and ``tiergate evidence`` against a real proxy on loopback HTTP: simulated tiers, shadow
share 1.0, the simulator's judge, a SQLite ledger. The API's savings equal a direct computation over the ledger's
records (exact nano-dollars), its quality ratio equals the outcome rows' sums, a streamed request is shadowed and
judged too, and access and dates behave as on the spend endpoints."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from metering.evidence import percent
from metering.money import format_usd
from tests.finops_helpers import tiergate
from tests.test_shadow_e2e import _rows, _wait_for

N = 8  # non-streamed requests, plus one streamed
KEYS = {"t": "sk-ev-t", "u": "sk-ev-u", "admin": "sk-ev-admin"}


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _config(tmp_path: Path) -> Path:
    lines = [
        "metering:", f"  ledger: sqlite:///{tmp_path}/ledger.db",
        "admin_keys:", "  - id: admin", f"    sha256: {_sha(KEYS['admin'])}",
        "tiers:",
        "  - name: small", "    deployments:", "      - id: small-sim", "        model: simulated/gpt-4o-mini",
        "  - name: frontier", "    deployments:", "      - id: frontier-sim", "        model: simulated/gpt-4o",
        "  - name: judge", "    deployments:", "      - id: judge-sim", "        model: simulated/o1",
        "teams:",
    ]
    for team in ("t", "u"):
        lines += [f"  {team}:", "    keys:", f"      - id: {team}-key", f"        sha256: {_sha(KEYS[team])}",
                  "    tiers: {floor: small, ceiling: frontier}",
                  "    routing: {thresholds: {frontier: 0.99}}",  # stays on small, shadowed on the ceiling
                  "    learning: {shadow_share: 1.0, shadow_daily_usd: 100, judge: judge-sim}"]
    path = tmp_path / "evidence.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _get(proxy, key: str, **params: str) -> httpx.Response:
    return httpx.get(proxy.url + "/v1/routing/evidence", params=params,
                     headers={"authorization": f"Bearer {KEYS[key]}"}, timeout=30)


def test_evidence_matches_the_ledger(tmp_path: Path, start_proxy) -> None:
    db = tmp_path / "ledger.db"
    config = _config(tmp_path)
    proxy = start_proxy(config)
    headers = {"authorization": f"Bearer {KEYS['t']}"}
    for i in range(N):
        content = f"Question {i}: " + "explain why the sky is blue " * (1 + i % 4)
        reply = httpx.post(proxy.url + "/v1/chat/completions", headers=headers, timeout=30,
                           json={"model": "auto", "messages": [{"role": "user", "content": content}],
                                 "max_tokens": 40 + 10 * i})
        assert reply.status_code == 200, reply.text
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", headers=headers, timeout=30,
                      json={"model": "auto", "stream": True, "max_tokens": 60,
                            "messages": [{"role": "user", "content": "Stream me a haiku about rivers."}]}) as streamed:
        assert streamed.status_code == 200
        body = b"".join(streamed.iter_bytes())
        streamed_id = streamed.headers["x-request-id"]
    assert b"data: [DONE]" in body

    outcomes = _wait_for(db, "SELECT * FROM outcomes WHERE team = 't'", N + 1)
    assert len(outcomes) == N + 1
    # the streamed request was shadowed and judged like the others (its relayed text was the routed answer)
    assert [o["routed_tier"] for o in outcomes if o["request_id"] == streamed_id] == ["small"]
    assert len(_wait_for(db, f"SELECT * FROM records WHERE request_id = '{streamed_id}.judge'", 1)) == 1

    today = datetime.now(UTC).date()
    period = {"start": today.isoformat(), "end": (today + timedelta(days=1)).isoformat()}
    answer = _get(proxy, "admin", team="t", **period)
    assert answer.status_code == 200, answer.text
    found = answer.json()

    # X: the ledger's chat records, exact nano-dollars
    (cost, counterfactual), = [tuple(r) for r in _rows(
        db, "SELECT SUM(cost_nanos), SUM(counterfactual_cost_nanos) FROM records "
            "WHERE team = 't' AND purpose = 'chat'")]
    (measuring,), = [tuple(r) for r in _rows(
        db, "SELECT SUM(cost_nanos) FROM records WHERE team = 't' AND purpose IN ('shadow', 'judge')")]
    assert 0 < cost < counterfactual and measuring > 0
    assert found["saved_percent"] == str(percent(counterfactual - cost, counterfactual))
    assert found["saved_net_of_measuring_percent"] == str(percent(counterfactual - cost - measuring, counterfactual))
    assert (found["cost_usd"], found["counterfactual_cost_usd"], found["measuring_cost_usd"]) == (
        format_usd(cost), format_usd(counterfactual), format_usd(measuring))
    assert {(s["purpose"], s["tier"], s["requests"]) for s in found["chat_per_tier"] + found["measuring"]} == {
        ("chat", "small", N + 1), ("shadow", "frontier", N + 1), ("judge", "judge", N + 1)}

    # Y: every request stayed on small and was judged against the ceiling
    routed, ceiling = sum(o["weak_score"] for o in outcomes), sum(o["strong_score"] for o in outcomes)
    assert (found["judged"], found["judged_vs_ceiling"], found["judged_not_vs_ceiling"]) == (N + 1, N + 1, {})
    assert ceiling > 0  # the simulated answers are fixed by their prompts: the ceiling wins some comparisons
    ratio = found["quality_ratio"]
    assert ratio["value"] == routed / ceiling and ratio["low"] <= ratio["value"] <= ratio["high"]
    assert f"at {100 * routed / ceiling:.1f}% of its judged quality ({N + 1} judged samples" in found["summary"]
    assert found["summary"].startswith(f"routing saved {found['saved_percent']}% against always-frontier")
    small = next(q for q in found["quality_per_tier"] if q["tier"] == "small")
    assert small["n"] == N + 1 and small["mean_grade"] == routed / (N + 1)

    # the CLI reads the same ledger the same way
    cli = tiergate("evidence", "--config", config, "--team", "t", "--start", period["start"], "--end", period["end"],
                   "--json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == found
    unknown = tiergate("evidence", "--config", config, "--team", "nope")
    assert unknown.returncode == 2 and "known teams: t, u" in unknown.stderr

    # access and dates, as on the spend endpoints
    own = _get(proxy, "t", **period)
    assert own.status_code == 200 and own.json() == found  # a team key: its own, no team parameter needed
    assert _get(proxy, "u", team="t").status_code == 403
    missing = _get(proxy, "admin", team="nope")
    assert missing.status_code == 404 and "known teams: t, u" in missing.json()["error"]["message"]
    assert _get(proxy, "admin").status_code == 400  # evidence is per team
    bad = _get(proxy, "admin", team="t", start="2026-13-01")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "start"
    assert _get(proxy, "admin", team="t", start=period["end"], end=period["start"]).status_code == 400
    empty = _get(proxy, "admin", team="t", end=period["start"], start=(today - timedelta(days=3)).isoformat())
    assert empty.status_code == 200 and empty.json()["judged"] == 0  # end is exclusive: today is not in it
    assert empty.json()["saved_percent"] is None
