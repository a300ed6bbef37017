"""The dashboard's routing-evidence panel in a real browser (headless Chromium via Playwright, as
``tests/test_dashboard.py``) against a real proxy (served in the test process, over loopback HTTP): simulated
tiers, shadow share 1.0, the simulator's judge, a SQLite ledger, traffic through the openai SDK, so the judged
samples come through the real path (shadow call, judge call, outcome store).

Per team the panel must show exactly what ``GET /v1/routing/evidence`` says for the range in view: its summary
sentence, saved percents, chat, counterfactual and measuring money (``data-usd``, to the nano-dollar), the quality
ratio and its bootstrap interval, and per tier the judged count, mean grade, Wilson interval and spend; a team
without judged samples gets the empty state naming the ``learning:`` block. For an admin key, each team's serving
routing model from ``GET /v1/routing/models/{team}``: the default for two teams, a version promoted by
``tiergate learn --team`` (outside the serving worker: it reaches the worker through the ledger) for the third. A
team key sees its own team and no model line.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from proxy import runtime
from tests.conftest import Server, free_port, start_server
from tests.finops_helpers import tiergate
from tests.test_dashboard import _assert_usd, _open, _shown_matches, _wait_for_refreshes, _wait_for_view, browser  # noqa: F401
from tests.test_evidence_e2e import _sha
from tests.test_learn_features_only import _features_only, _write
from tests.test_learn_features_only import _rows as _learn_rows
from tests.test_shadow_e2e import _rows, _wait_for
from tests.waiting import eventually

KEYS = {"t": "sk-evd-t", "m": "sk-evd-m", "quiet": "sk-evd-quiet", "admin": "sk-evd-admin"}
LEARNING = "    learning: {shadow_share: 1.0, shadow_daily_usd: 100, judge: judge-sim}"
ROUTING = {  # t stays on small (judged against the ceiling), m goes to mid (judged against the floor)
    "t": "    routing: {thresholds: {frontier: 0.99}}",
    "m": "    routing: {thresholds: {mid: 0.0, frontier: 0.99}}",
    "quiet": "    routing: {thresholds: {frontier: 0.99}}",
}
SENT = {"t": 6, "m": 3, "quiet": 3}


def _config(tmp: Path) -> Path:
    lines = [
        "metering:", f"  ledger: sqlite:///{tmp}/ledger.db",
        "admin_keys:", "  - id: admin", f"    sha256: {_sha(KEYS['admin'])}",
        "tiers:",
        "  - name: small", "    deployments:", "      - id: small-sim", "        model: simulated/gpt-4o-mini",
        "  - name: mid", "    deployments:", "      - id: mid-sim", "        model: simulated/gpt-4o",
        "  - name: frontier", "    deployments:", "      - id: frontier-sim", "        model: simulated/o1",
        "  - name: judge", "    deployments:", "      - id: judge-sim", "        model: simulated/o1",
        "teams:",
    ]
    for team in ("t", "m", "quiet"):
        lines += [f"  {team}:", "    keys:", f"      - id: {team}-key", f"        sha256: {_sha(KEYS[team])}",
                  "    tiers: {floor: small, ceiling: frontier}", ROUTING[team]]
        if team != "quiet":  # quiet never turned learning on: the empty state
            lines.append(LEARNING)
    path = tmp / "evidence.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _send(proxy: Server, team: str, count: int) -> None:
    client = OpenAI(base_url=f"{proxy.url}/v1", api_key=KEYS[team], max_retries=0, timeout=60)
    for i in range(count):
        content = f"{team} question {i}: " + "explain why the sky is blue " * (1 + i % 3)
        answer = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": content}],
                                                max_tokens=40 + 10 * i)
        assert answer.choices[0].message.content


def _settled(db: Path, team: str, count: int) -> None:
    """Until each of the team's ``count`` requests has its shadow and judge records and its outcome row."""
    for sql in (f"SELECT * FROM outcomes WHERE team = '{team}'",
                f"SELECT * FROM records WHERE team = '{team}' AND purpose = 'shadow'",
                f"SELECT * FROM records WHERE team = '{team}' AND purpose = 'judge'"):
        assert len(_wait_for(db, sql, count)) == count, sql


def _get(proxy: Server, path: str, key: str = "admin", **params: str) -> dict[str, Any]:
    response = httpx.get(proxy.url + path, params=params, headers={"authorization": f"Bearer {KEYS[key]}"},
                         timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def evidence_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("evidence")
    config = _config(tmp)
    # The proxy runs in this process: its worker's poll of the ledger for promoted team models (every 10 s) runs
    # every 0.2 s here, so the promotion by `tiergate learn` is seen without waiting out the period.
    patch = pytest.MonkeyPatch()
    patch.setattr(runtime, "TEAM_MODELS_POLL_S", 0.2)
    port = free_port()
    process = start_server(["serve", "--config", str(config), "--port", str(port)], port, tmp / "proxy.log", "/readyz")
    try:
        for team, count in SENT.items():
            _send(process, team, count)
        db = tmp / "ledger.db"
        for team in ("t", "m"):
            _settled(db, team, SENT[team])
        assert not _rows(db, "SELECT * FROM outcomes WHERE team = 'quiet'")
        # quiet gets a promoted model from judged rows exported elsewhere (it stores none itself)
        rows = [_features_only(r) for r in _learn_rows(480)]
        for r in rows:
            r["meta"]["team"] = "quiet"
        # the CLI's own main in this process, not in the serving worker: the promotion reaches the worker only
        # through the ledger, as from another host (a fresh interpreter would add seconds of imports, nothing else)
        learned = tiergate("learn", "--team", "quiet", "--config", config, "--outcomes", _write(tmp / "q.jsonl", rows))
        assert learned.returncode == 0 and "PROMOTED" in learned.stdout, learned.stdout + learned.stderr

        def served() -> bool:
            state = _get(process, "/v1/routing/models/quiet")
            return state["serving_model_id"] == state["models"][0]["model_id"]

        eventually(served, "the worker serving the model `tiergate learn` promoted")
        yield process
    finally:
        process.stop()
        patch.undo()


def _assert_evidence(page: Any, found: dict[str, Any]) -> None:
    """The team's block shows the API's evidence: sentence, percents, money, intervals, per-tier table."""
    team = found["team"]
    assert page.get_by_test_id(f"evidence-summary-{team}").inner_text() == found["summary"]
    for testid, value in ((f"evidence-saved-{team}", found["saved_percent"]),
                          (f"evidence-saved-net-{team}", found["saved_net_of_measuring_percent"])):
        assert page.get_by_test_id(testid).inner_text() == ("–" if value is None else f"{value}%")
    _assert_usd(page, f"evidence-cost-{team}", found["cost_usd"])
    _assert_usd(page, f"evidence-counterfactual-{team}", found["counterfactual_cost_usd"])
    _assert_usd(page, f"evidence-measuring-{team}", found["measuring_cost_usd"])
    assert page.get_by_test_id(f"evidence-judged-{team}").inner_text() == str(found["judged"])
    ratio = found["quality_ratio"]
    if ratio is None:
        assert page.get_by_test_id(f"evidence-quality-{team}").inner_text() == "judged quality unknown"
    else:
        value = page.get_by_test_id(f"evidence-quality-value-{team}")
        assert float(value.get_attribute("data-value")) == ratio["value"]
        assert _shown_matches(value.inner_text().rstrip("%"), repr(100 * ratio["value"]))
        low, high = page.get_by_test_id(f"evidence-quality-ci-{team}").inner_text().rstrip("%").split("–")
        assert _shown_matches(low, repr(100 * ratio["low"])) and _shown_matches(high, repr(100 * ratio["high"]))
    empty = page.get_by_test_id(f"evidence-empty-{team}")
    if found["judged"] == 0:
        assert empty.count() == 1 and "learning:" in empty.inner_text()
        assert page.get_by_test_id(f"evidence-{team}").locator("table").count() == 0
        return
    assert empty.count() == 0
    for q in found["quality_per_tier"]:
        tier = q["tier"]
        assert page.get_by_test_id(f"evidence-judged-{team}-{tier}").inner_text() == str(q["n"])
        grade = page.get_by_test_id(f"evidence-grade-{team}-{tier}")
        assert float(grade.get_attribute("data-value")) == q["mean_grade"]
        assert _shown_matches(grade.inner_text(), repr(q["mean_grade"]))
        low, high = page.get_by_test_id(f"evidence-wilson-{team}-{tier}").inner_text().split("–")
        assert _shown_matches(low, repr(q["wilson_low"])) and _shown_matches(high, repr(q["wilson_high"]))
    for c in found["chat_per_tier"]:
        _assert_usd(page, f"evidence-cost-{team}-{c['tier']}", c["cost_usd"])
        _assert_usd(page, f"evidence-counterfactual-{team}-{c['tier']}", c["counterfactual_cost_usd"])


def _assert_model(page: Any, proxy: Server, team: str) -> None:
    state = _get(proxy, f"/v1/routing/models/{team}")
    assert page.get_by_test_id(f"evidence-model-id-{team}").inner_text() == state["serving_model_id"]
    status = page.get_by_test_id(f"evidence-model-status-{team}").inner_text()
    active = state["active_version"]
    assert status == ("default model" if active is None else f"v{active} promoted")


def test_admin_sees_every_teams_evidence_and_model(evidence_proxy: Server, browser: Any,
                                                    tmp_path: Path) -> None:
    proxy = evidence_proxy
    external: list[str] = []
    page = _open(browser, proxy, KEYS["admin"], external)
    _wait_for_refreshes(page, 1)
    today = datetime.now(UTC).date()
    month_start, tomorrow = today.replace(day=1).isoformat(), (today + timedelta(days=1)).isoformat()
    found = {team: _get(proxy, "/v1/routing/evidence", team=team, start=month_start, end=tomorrow)
             for team in SENT}

    t, m, quiet = found["t"], found["m"], found["quiet"]
    # what the traffic made: t judged against the ceiling, m against the floor, quiet not at all
    assert (t["judged"], t["judged_vs_ceiling"], t["quality_ratio"] is not None) == (SENT["t"], SENT["t"], True)
    assert (m["judged"], m["judged_vs_ceiling"], m["judged_not_vs_ceiling"]) == (SENT["m"], 0, {"mid": SENT["m"]})
    assert quiet["judged"] == 0 and quiet["saved_percent"] is not None and quiet["measuring_cost_usd"] == "0.000000000"
    assert t["summary"].startswith(f"routing saved {t['saved_percent']}% against always-frontier at ")
    for team in SENT:
        _assert_evidence(page, found[team])
    assert "judged against the floor" in page.get_by_test_id("evidence-summary-m").inner_text()
    assert {q["tier"] for q in t["quality_per_tier"]} == {"small", "frontier"}
    _assert_usd(page, "evidence-measuring-t-frontier", next(s["cost_usd"] for s in t["measuring"]
                                                            if s["tier"] == "frontier"))

    # the serving model: the default for t and m, the promoted version for quiet
    for team in SENT:
        _assert_model(page, proxy, team)
    assert page.get_by_test_id("evidence-model-status-t").inner_text() == "default model"
    assert page.get_by_test_id("evidence-model-status-quiet").inner_text() == "v1 promoted"
    assert (page.get_by_test_id("evidence-model-id-quiet").inner_text()
            != page.get_by_test_id("evidence-model-id-t").inner_text())
    shot = tmp_path / "evidence.png"  # for a look at the panel: pytest --basetemp=DIR keeps it
    page.locator(".card", has=page.get_by_test_id("evidence")).screenshot(path=str(shot))
    assert shot.read_bytes().startswith(b"\x89PNG")

    # the team filter: one team's block only
    page.get_by_test_id("team-filter").select_option("t")
    _wait_for_view(page, month_start, tomorrow, "t")
    assert page.get_by_test_id("evidence-t").count() == 1 and page.get_by_test_id("evidence-m").count() == 0
    _assert_evidence(page, t)

    # a range of past days: no judged samples there, so the empty state, for the same team
    start, end = (today - timedelta(days=9)).isoformat(), (today - timedelta(days=2)).isoformat()
    page.get_by_test_id("range-start").fill(start)
    page.get_by_test_id("range-end").fill(end)
    page.get_by_test_id("range-apply").click()
    _wait_for_view(page, start, end, "t")
    past = _get(proxy, "/v1/routing/evidence", team="t", start=start, end=end)
    assert past["judged"] == 0 and past["saved_percent"] is None
    _assert_evidence(page, past)
    assert page.get_by_test_id("evidence-saved-t").inner_text() == "–"
    assert external == []  # nothing outside the proxy was asked for
    page.close()


def test_team_key_sees_its_own_evidence(evidence_proxy: Server, browser: Any) -> None:
    proxy = evidence_proxy
    page = _open(browser, proxy, KEYS["t"])
    _wait_for_refreshes(page, 1)  # the first refresh learns the key is not an admin's
    assert page.get_by_test_id("scope").inner_text() == "Team t"
    today = datetime.now(UTC).date()
    own = _get(proxy, "/v1/routing/evidence", key="t", start=today.replace(day=1).isoformat(),
               end=(today + timedelta(days=1)).isoformat())
    assert own["judged"] == SENT["t"]
    _assert_evidence(page, own)
    assert page.get_by_test_id("evidence-m").count() == 0 and page.get_by_test_id("evidence-quiet").count() == 0
    assert page.get_by_test_id("evidence-model-t").count() == 0  # routing models are an admin's
    page.close()
