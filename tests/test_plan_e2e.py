"""``tiergate plan`` and ``POST /v1/spend/plan`` against a real proxy (loopback HTTP) whose tiers are ``tiergate
mock-upstream`` over HTTP, with the SQLite and the PostgreSQL ledger: after real traffic (scored, pinned, shadowed
and judged), a candidate with other thresholds and a max_tokens cap gives the same plan from the CLI and the API,
and its after-cost equals a computation over the ledger's records made here with the candidate's prices; a bad
candidate is a 400 naming its line and field. ``GET /v1/spend/forecast`` is the CLI's forecast, for an admin key
every team, for a team key its own."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from metering.ledger import open_ledger
from metering.record import UsageRecord
from tests.conftest import ROOT
from tests.finops_helpers import tiergate
from tests.metering_fixtures import PG_URL, pg_schema  # noqa: F401  (pg_schema is a fixture)
from tests.waiting import eventually

KEYS = {"t": "sk-plan-t", "u": "sk-plan-u", "admin": "sk-plan-admin"}
PRICES = {"small": (1, 2), "mid": (5, 10), "frontier": (20, 40), "judge": (3, 6)}  # $ per 1M in / out
MODELS = {"small": "gpt-4o-mini", "mid": "gpt-4o", "frontier": "o1", "judge": "gpt-4o-mini"}
PROMPTS = ["Hello!", "What is 2 + 2?", "Let f(x) = x^3 - 3x + 1. Find all real roots.",
           "Suppose a, b and c are positive reals with a + b + c = 3. Prove that a^2/b + b^2/c + c^2/a >= 3, then "
           "find when equality holds.", "Summarise the causes of the First World War in three sentences.",
           "Write a Python function that merges two sorted lists, with tests.", "Thanks, that helps.",
           "Derive the closed form of the sum of k^3 for k = 1..n and prove it by induction."]
CAP = 24


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _policy(ledger: str, schema: str, spool: Path, mock_url: str, thresholds: str, team_extra: str = "") -> str:
    lines = ["metering:", f"  ledger: {ledger}", f"  ledger_schema: {schema}", f"  spool_dir: {spool}",
             "admin_keys:", "  - id: admin", f"    sha256: {_sha(KEYS['admin'])}", "tiers:"]
    for tier, (inp, out) in PRICES.items():
        lines += [f"  - name: {tier}", "    deployments:",
                  f"      - {{id: {tier}-0, model: openai/{MODELS[tier]}, api_base: {mock_url}/v1, "
                  f"price: {{input: {inp}, output: {out}}}}}"]
    lines.append("teams:")
    for team in ("t", "u"):
        lines += [f"  {team}:", "    keys:", f"      - id: {team}-key", f"        sha256: {_sha(KEYS[team])}",
                  "    tiers: {floor: small, ceiling: frontier}",
                  f"    routing: {{thresholds: {thresholds}, allow_pinning: true}}",
                  "    budgets: {team: {monthly_usd: '50', daily_usd: '5'}}"]
        if team == "t":
            lines.append("    learning: {shadow_share: 1.0, shadow_daily_usd: 100, judge: judge-0}")
        lines.append(team_extra)
    return "\n".join(line for line in lines if line) + "\n"


def _records(ledger_url: str, schema: str, since: datetime, until: datetime) -> tuple[list[UsageRecord], int]:
    async def go() -> tuple[list[UsageRecord], int]:
        ledger = open_ledger(ledger_url, spool_dir=None, schema=schema)
        await ledger.start()
        try:
            return [r async for r in ledger.records(since, until)], len(await ledger.outcomes(since))
        finally:
            await ledger.close()
    return asyncio.run(go())


def _tier(score: float, thresholds: dict[str, float]) -> str:
    """The routing rule as the README states it: the most capable tier whose threshold the score reaches."""
    chosen = "small"
    for tier in ("mid", "frontier"):
        if score >= thresholds[tier]:
            chosen = tier
    return chosen


def _cost(tier: str, prompt: int, completion: int) -> int:
    inp, out = PRICES[tier]
    return prompt * inp * 1000 + completion * out * 1000  # $ per 1M tokens = 1000 nano-dollars per token


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``tiergate ARGS``: exit code, stdout and stderr (run by the CLI's ``main`` in this process)."""
    return tiergate(*args)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_plan_cli_and_api_agree_with_the_ledger_and_forecast_scopes(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest, start_mock: Any, start_proxy: Any) -> None:
    if backend == "postgres":  # a private schema, dropped afterwards (fails under CI=true without a server)
        ledger_url, schema = PG_URL, request.getfixturevalue("pg_schema")
    else:
        ledger_url, schema = f"sqlite:///{tmp_path / 'ledger.db'}", "public"
    mock = start_mock()
    serving = tmp_path / "serving.yaml"
    serving.write_text(_policy(ledger_url, schema, tmp_path / "spool", mock.url, "{mid: 0.321, frontier: 0.416}"))
    proxy = start_proxy(serving)
    since = datetime.now(UTC) - timedelta(seconds=5)

    clients = {team: OpenAI(base_url=proxy.url + "/v1", api_key=KEYS[team], max_retries=0) for team in ("t", "u")}
    for i, prompt in enumerate(PROMPTS):
        team = "t" if i % 2 == 0 else "u"
        reply = clients[team].chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": prompt}], max_tokens=40 + 5 * i)
        assert reply.http_response.status_code == 200
    pinned = clients["u"].chat.completions.create(model="gpt-4o", max_tokens=60,
                                                  messages=[{"role": "user", "content": "Pinned: name three rivers."}])
    assert pinned.choices[0].message.content
    legacy = clients["u"].completions.create(model="auto", prompt="Say hello.", max_tokens=30)  # never scored
    assert legacy.choices[0].text

    # Wait until t's shadow and judge calls are in the database (the CLI reads it, not the proxy's memory).
    scored_t = sum(1 for i in range(len(PROMPTS)) if i % 2 == 0)
    until = datetime.now(UTC) + timedelta(seconds=60)

    def stored() -> tuple[list[UsageRecord], int] | None:
        records, judged = _records(ledger_url, schema, since, until)
        chats = sum(r.purpose == "chat" for r in records)
        done = (judged >= scored_t and sum(r.purpose == "judge" for r in records) >= scored_t
                and chats >= len(PROMPTS) + 2)
        return (records, judged) if done else None

    records, judged = eventually(stored, "the shadow and judge records in the ledger", timeout_s=60)
    assert judged == scored_t and len([r for r in records if r.purpose == "chat"]) == len(PROMPTS) + 2

    # A candidate that places the observed scores differently: thresholds between recorded scores.
    scores = sorted({r.score for r in records if r.purpose == "chat" and r.score is not None})
    assert len(scores) >= 3, scores
    new = {"mid": (scores[0] + scores[1]) / 2, "frontier": (scores[-2] + scores[-1]) / 2}
    candidate_text = _policy(ledger_url, schema, tmp_path / "spool", mock.url,
                             f"{{mid: {new['mid']!r}, frontier: {new['frontier']!r}}}",
                             team_extra=f"    max_tokens: {{cap: {CAP}}}")
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(candidate_text)

    # The expected plan, computed here from the records with the candidate's rule and prices.
    expected_after = 0
    moved = 0
    for r in records:
        if not r.model:
            continue
        if r.purpose in ("shadow", "judge"):
            expected_after += r.cost_nanos  # t keeps its learning block
            continue
        if r.requested_model == "gpt-4o":
            tier = "mid"  # the pin holds
        elif r.api == "completions":
            tier = "small"  # unscored: the floor
        else:
            assert r.score is not None
            tier = _tier(r.score, new)
        moved += tier != r.tier
        expected_after += _cost(tier, r.prompt_tokens, min(r.completion_tokens, CAP))
    assert moved >= 2

    window = ["--since", since.isoformat(), "--until", until.isoformat()]
    done = _cli("plan", "--config", str(candidate), *window, "--json")
    assert done.returncode == 0, done.stderr
    from_cli = json.loads(done.stdout)
    admin = {"authorization": f"Bearer {KEYS['admin']}"}
    answer = httpx.post(proxy.url + "/v1/spend/plan", headers=admin, timeout=60, json={
        "config_yaml": candidate_text, "since": since.isoformat(), "until": until.isoformat()})
    assert answer.status_code == 200, answer.text
    assert answer.json() == from_cli
    total = from_cli["total"]
    assert total["before_nanos"] == sum(r.cost_nanos for r in records)
    assert total["after_nanos"] == expected_after
    assert total["moved"] == moved and total["requests"] == len(PROMPTS) + 2
    assert total["output_capped"] == sum(1 for r in records if r.purpose == "chat" and r.completion_tokens > CAP)
    assert from_cli["treatments"]["measuring"] == 2 * scored_t and from_cli["treatments"]["pinned"] == 1
    assert from_cli["treatments"]["unscored"] == 1
    assert from_cli["quality"] is not None and from_cli["quality"]["judged"] == scored_t
    assert any("Output length cannot be known" in a for a in from_cli["assumptions"])
    text = _cli("plan", "--config", str(candidate), *window, "--team", "t")
    assert text.returncode == 0 and "re-priced under policy" in text.stdout and "\nt " in text.stdout

    # Refusals: a team key, a bad candidate (line and field), an unknown team, a bad window.
    as_team = httpx.post(proxy.url + "/v1/spend/plan", headers={"authorization": f"Bearer {KEYS['t']}"},
                         json={"config_yaml": candidate_text}, timeout=30)
    assert as_team.status_code == 403 and as_team.json()["error"]["code"] == "admin_key_required"
    bad_text = candidate_text.replace("allow_pinning: true", "allow_pining: true", 1)
    bad_line = bad_text.splitlines().index(next(s for s in bad_text.splitlines() if "allow_pining" in s)) + 1
    bad = httpx.post(proxy.url + "/v1/spend/plan", headers=admin, json={"config_yaml": bad_text}, timeout=30)
    assert bad.status_code == 400, bad.text
    assert f"config_yaml:{bad_line}: teams.t.routing.allow_pining" in bad.json()["error"]["message"]
    assert bad.json()["error"]["param"] == "config_yaml"
    (tmp_path / "bad.yaml").write_text(bad_text)
    bad_cli = _cli("plan", "--config", str(tmp_path / "bad.yaml"))
    assert bad_cli.returncode == 2 and f"bad.yaml:{bad_line}: teams.t.routing.allow_pining" in bad_cli.stderr
    nosuch = httpx.post(proxy.url + "/v1/spend/plan", headers=admin, timeout=30,
                        json={"config_yaml": candidate_text, "team": "nosuch"})
    assert nosuch.status_code == 404 and "known teams: t, u" in nosuch.json()["error"]["message"]
    backwards = httpx.post(proxy.url + "/v1/spend/plan", headers=admin, timeout=30,
                           json={"config_yaml": candidate_text, "since": "2026-01-02", "until": "2026-01-01"})
    assert backwards.status_code == 400 and "forwards" in backwards.json()["error"]["message"]

    # Forecasts: the CLI's document; an admin sees both teams, a team key its own.
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()

    def forecast(key: str, **params: str) -> httpx.Response:
        return httpx.get(proxy.url + "/v1/spend/forecast", params=params, timeout=30,
                         headers={"authorization": f"Bearer {KEYS[key]}"})

    every = forecast("admin", group_by="team", as_of=tomorrow)
    assert every.status_code == 200, every.text
    cli = _cli("forecast", "--config", str(serving), "--group-by", "team", "--as-of", tomorrow, "--json")
    assert cli.returncode == 0, cli.stderr
    assert every.json() == json.loads(cli.stdout)
    assert {row["team"] for row in every.json()["rows"]} == {"t", "u"}
    own = forecast("t", group_by="key", as_of=tomorrow).json()
    assert [(row["team"], row["key"]) for row in own["rows"]] == [("t", "t-key")] and own["team"] == "t"
    assert own["rows"][0]["budgets"] == [] and forecast("t").json()["total"]["budgets"]  # t's team caps
    now = forecast("admin", group_by="model").json()
    assert now["now"] is not None and {row["model"] for row in now["rows"]} >= {"gpt-4o-mini"}
    assert forecast("t", team="u").status_code == 403
    unknown = forecast("admin", team="nosuch")
    assert unknown.status_code == 404 and "known teams: t, u" in unknown.json()["error"]["message"]
    wrong = forecast("admin", group_by="purpose")
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "group_by"
    assert forecast("admin", as_of="tomorrow").status_code == 400


def test_plan_and_forecast_answer_any_input_in_the_error_shape(tmp_path: Path) -> None:
    """Any body or query: a plan, a forecast, or an OpenAI-shaped 4xx naming the parameter; never a 500."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from starlette.testclient import TestClient

    from proxy.app import create_app
    from tests.fuzz_harness import fuzz_config, junk

    good = (ROOT / "configs" / "demo.yaml").read_text()
    admin, team = {"authorization": "Bearer sk-demo-admin"}, {"authorization": "Bearer sk-demo-research"}
    shape = {"message", "type", "param", "code"}
    yaml_text = st.one_of(st.just(good), st.text(max_size=200), st.builds(
        lambda i, s: good[:i] + s + good[i:], st.integers(0, len(good)), st.text(max_size=8)))
    field = st.text(max_size=25) | junk
    bodies = st.fixed_dictionaries({}, optional={"config_yaml": yaml_text | junk, "since": field, "until": field,
                                                 "team": field, "other": junk}) | junk
    queries = st.dictionaries(st.sampled_from(["group_by", "team", "as_of", "other"]), st.text(max_size=20),
                              max_size=3)
    with TestClient(create_app(str(fuzz_config(tmp_path)))) as client:
        control = client.post("/v1/spend/plan", headers=admin, json={"config_yaml": "tiers:\n  - name: \x1f\n"})
        assert control.status_code == 400 and "config_yaml:2:" in control.json()["error"]["message"]

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(bodies)
        def plan(body: Any) -> None:
            reply = client.post("/v1/spend/plan", headers=admin, json=body)
            assert reply.status_code in (200, 400, 404), (body, reply.text)
            assert reply.status_code == 200 or set(reply.json()["error"]) == shape

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(queries, st.booleans())
        def forecast(params: dict[str, str], as_admin: bool) -> None:
            reply = client.get("/v1/spend/forecast", params=params, headers=admin if as_admin else team)
            assert reply.status_code in (200, 400, 403, 404), (params, reply.text)
            assert reply.status_code == 200 or set(reply.json()["error"]) == shape

        plan()
        forecast()
