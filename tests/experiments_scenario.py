"""Experiment manifests through a served proxy: ``tiergate serve --workers 2`` on real Redis, the simulator's mock
upstream, the OpenAI SDK as the client, a SQLite and a PostgreSQL ledger. The scenario runs in
``tests/test_alerts_e2e.py``, on the same two-worker proxy as the budget-crossing scenario (its own teams, in one
policy): a proxy start per backend instead of two. Its setup and checks are here:

- An experiment attributed by key, with ``on_exceeded: downgrade``, is spent to 120 % of its lifetime budget: its
  50 / 80 / 100 % alerts fire exactly once each (across both workers), at the request whose settled cost crossed
  the line, to the webhook and into ``GET /v1/alerts``; past 100 % its requests are downgraded, still metered.
- An experiment attributed by a tag set, rejecting: its requests get 429 ``budget_exceeded`` naming the experiment
  once its budget is spent, while the same team's requests outside it still pass; an expired experiment's request
  is a 403 ``experiment_expired`` saying so.
- ``GET /v1/spend/experiments`` shows owner, purpose, budget, spend (exactly the served requests' costs), remaining,
  status and the projection; ``group_by=experiment`` splits the team's spend into experiment rows and the rest;
  ``tiergate experiments --json`` prints what the API does; ``tiergate check-config --fail-over-budget`` fails
  naming the experiments projected over budget, and passes once their budgets are raised.

The API read is answered by either worker while the other may still hold the last requests' records in its
group-commit buffer (spooled, answered, not yet committed): ``flush`` commits the other workers' spooled records
too, so the report counts every request that completed before it (a refused, zero-cost one included) and does not
change afterwards. ``tests/test_metering_ledger.py: test_a_flush_commits_what_the_other_workers_spooled`` pins that
down without a proxy.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import yaml

from metering.ledger import open_ledger
from metering.ledger.alert_log import AlertEvent, AlertQuery
from metering.money import usd_to_nanos
from tests.conftest import REDIS_URL, Process
from tests.proxy_metering_helpers import (
    ADMIN_AUTH,
    TeamSpec,
    new_team,
    sha,
    tiergate,
    write_config,
)
from tests.webhook_receiver import Webhook

BUDGETS = {"spend": Decimal("0.0002"), "tagged": Decimal("0.00005")}
TAGS = {"project": "churn", "env": "dev"}


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


class Setup:
    def __init__(self, tmp_path: Path, mock: Process, ledger: str, schema: str | None, hook: Webhook,
                 others: tuple[TeamSpec, ...] = ()) -> None:
        """The experiments' policy, with ``others`` (another scenario's teams) served by the same proxy."""
        self.uid = uuid.uuid4().hex[:8]
        self.spender = new_team("expa", budgets={"on_exceeded": "downgrade"})
        self.rejecter = new_team("expb", budgets={"on_exceeded": "reject"})
        self.exp_key = "sk-exp-" + uuid.uuid4().hex  # the spender's second key: the key-attributed experiment's
        self.names = {"spend": f"spend-{self.uid}", "tagged": f"tagged-{self.uid}", "old": f"old-{self.uid}"}
        self.path = write_config(tmp_path / "experiments.yaml", {"small": [mock.url]},
                                 [self.spender, self.rejecter, *others], ledger, redis=REDIS_URL,
                                 alert_webhook=hook.url)
        data = yaml.safe_load(self.path.read_text())
        if schema is not None:
            data["metering"]["ledger_schema"] = schema
        data["teams"][self.spender.name]["keys"].append({"id": "exp-key", "sha256": sha(self.exp_key)})
        now = datetime.now(UTC)
        data["experiments"] = [
            {"name": self.names["spend"], "owner": "ana@example.com", "purpose": "prompt v2 against v1",
             "team": self.spender.name, "budget_usd": str(BUDGETS["spend"]),
             "starts_at": _iso(now - timedelta(minutes=5)), "ttl": "2h", "keys": ["exp-key"]},
            {"name": self.names["tagged"], "owner": "bo@example.com", "purpose": "churn eval",
             "team": self.rejecter.name, "budget_usd": str(BUDGETS["tagged"]),
             "starts_at": _iso(now - timedelta(minutes=5)), "ttl": "1h", "tags": TAGS},
            {"name": self.names["old"], "owner": "cy@example.com", "purpose": "last week's test",
             "team": self.rejecter.name, "expires_at": _iso(now - timedelta(minutes=1))},
        ]
        self.data = data
        self.path.write_text(yaml.safe_dump(data, sort_keys=False))

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.proxy.url + "/v1", api_key=key, max_retries=0, timeout=30)

    proxy: Process


def _chat(client: openai.OpenAI, text: str, **extra: Any) -> tuple[str, int, dict[str, str]]:
    rid = f"exp-e2e-{uuid.uuid4().hex[:12]}"
    raw = client.chat.completions.with_raw_response.create(
        model="small", messages=[{"role": "user", "content": text}], max_tokens=16,
        extra_headers={"x-request-id": rid}, **extra)
    assert raw.parse().choices[0].message.content is not None
    return rid, usd_to_nanos(Decimal(raw.headers["x-tiergate-cost-usd"])), dict(raw.headers)


def _spend_by_key(s: Setup) -> dict[str, Any]:
    """The key-attributed experiment to 120 % of its budget (downgrade keeps it served), and three requests of the
    same team's other key (no experiment)."""
    costs: dict[str, int] = {}
    downgraded = 0
    exp, other = s.client(s.exp_key), s.client(s.spender.key)
    n = 0
    while sum(costs.values()) * 100 < 120 * usd_to_nanos(BUDGETS["spend"]):
        rid, cost, headers = _chat(exp, f"experiment request {n}")
        costs[rid] = cost
        downgraded += headers.get("x-tiergate-budget") == "downgraded"
        n += 1
    outside = [_chat(other, f"ordinary request {i}")[1] for i in range(3)]
    assert downgraded > 0  # past its cap, served at the floor rather than refused (on_exceeded: downgrade)
    return {"costs": costs, "outside": outside}


def _spend_by_tags(s: Setup) -> dict[str, Any]:
    client = s.client(s.rejecter.key)
    costs: dict[str, int] = {}
    refused = None
    for n in range(200):
        try:
            rid, cost, _ = _chat(client, f"tagged request {n}", metadata=TAGS)
            costs[rid] = cost
        except openai.RateLimitError as exc:
            refused = exc
            break
    assert refused is not None and refused.status_code == 429 and refused.code == "budget_exceeded"
    assert f"lifetime budget of experiment {s.names['tagged']} of team {s.rejecter.name} exceeded" in refused.message
    # the same team outside the experiment (one of its two tags only) is not held by its budget
    _, outside, _ = _chat(client, "half the tags", metadata={"project": "churn"})
    # an expired experiment: 403 saying so, whether it is named by the client's tag
    with pytest.raises(openai.PermissionDeniedError) as expired:
        _chat(client, "too late", metadata={"experiment": s.names["old"]})
    assert expired.value.status_code == 403 and expired.value.code == "experiment_expired"
    assert f"experiment '{s.names['old']}' of team '{s.rejecter.name}' (owner cy@example.com) expired at" in \
        expired.value.message
    return {"costs": costs, "outside": outside}


def _get(s: Setup, path: str, auth: dict[str, str] = ADMIN_AUTH, **params: str) -> httpx.Response:
    return httpx.get(s.proxy.url + path, params=params, headers=auth, timeout=30)


def _check_api(s: Setup, spent: dict[str, Any], tagged: dict[str, Any]) -> None:
    resp = _get(s, "/v1/spend/experiments")
    assert resp.status_code == 200, resp.text
    rows = {r["name"]: r for r in resp.json()["experiments"]}
    mine = rows[s.names["spend"]]
    total = sum(spent["costs"].values())
    assert (mine["team"], mine["owner"], mine["purpose"], mine["status"], mine["requests"]) == (
        s.spender.name, "ana@example.com", "prompt v2 against v1", "over_budget", len(spent["costs"]))
    assert usd_to_nanos(Decimal(mine["spent_usd"])) == total  # exactly the served requests, from the ledger
    assert Decimal(mine["budget_usd"]) == BUDGETS["spend"] and mine["remaining_usd"] == "0.000000000"
    assert mine["projected_over_budget"] is True and mine["forecast_basis"] == "run rate"
    assert Decimal(mine["projected_usd"]) >= Decimal(mine["spent_usd"]).quantize(Decimal("0.0001"))
    tag_row = rows[s.names["tagged"]]
    assert usd_to_nanos(Decimal(tag_row["spent_usd"])) == sum(tagged["costs"].values())
    assert tag_row["tags"] == TAGS and tag_row["status"] == "active"
    assert usd_to_nanos(Decimal(tag_row["spent_usd"])) <= usd_to_nanos(BUDGETS["tagged"])  # refused, never over
    assert rows[s.names["old"]]["status"] == "expired" and rows[s.names["old"]]["requests"] == 0
    # a team key sees its own team's experiments only
    own = _get(s, "/v1/spend/experiments", {"authorization": f"Bearer {s.rejecter.key}"})
    assert {r["name"] for r in own.json()["experiments"]} == {s.names["tagged"], s.names["old"]}
    assert _get(s, "/v1/spend/experiments", {"authorization": f"Bearer {s.rejecter.key}"},
                team=s.spender.name).status_code == 403
    # the report by experiment: the experiment's row and the rest of the team, summing to the team's total
    report = _get(s, "/v1/spend/report", team=s.spender.name, group_by="team,experiment",
                  start=(datetime.now(UTC) - timedelta(days=1)).date().isoformat())
    assert report.status_code == 200, report.text
    got = {r["experiment"]: (r["requests"], usd_to_nanos(Decimal(r["cost_usd"]))) for r in report.json()["rows"]}
    assert got == {s.names["spend"]: (len(spent["costs"]), total), None: (3, sum(spent["outside"]))}
    csv = _get(s, "/v1/spend/report", team=s.spender.name, group_by="experiment", format="csv",
               start=(datetime.now(UTC) - timedelta(days=1)).date().isoformat())
    assert csv.text.splitlines()[0].startswith("experiment,requests,") and s.names["spend"] in csv.text
    s.api_rows = resp.json()["experiments"]  # type: ignore[attr-defined]


async def _stored(url: str, schema: str) -> list[AlertEvent]:
    """Every alert the ledger stored in the last hour (and the next), as the alert checks read them."""
    ledger = open_ledger(url, spool_dir=None, schema=schema)
    await ledger.start()
    try:
        now = datetime.now(UTC)
        return await ledger.alerts(AlertQuery(now - timedelta(hours=1), now + timedelta(hours=1), limit=1000))
    finally:
        await ledger.close()


def _check_alerts(s: Setup, hook: Webhook, spent: dict[str, Any], ledger: str, schema: str) -> None:
    costs = spent["costs"]
    stored = asyncio.run(_stored(ledger, schema))
    mine = [e for e in stored if e.team == s.spender.name and e.kind == "threshold"]
    assert sorted((e.scope, e.scope_name, e.period, e.threshold_pct) for e in mine) == [
        ("experiment", s.names["spend"], "life", pct) for pct in (50, 80, 100)]
    limit = usd_to_nanos(BUDGETS["spend"])
    for e in mine:
        assert e.limit_nanos == limit
        assert e.previous_nanos is not None and e.previous_nanos * 100 < e.threshold_pct * limit <= e.spent_nanos * 100
        assert e.request_id in costs and e.spent_nanos - e.previous_nanos == e.amount_nanos == costs[e.request_id]
    refusals = [e for e in stored if e.team == s.rejecter.name and e.kind == "refusal"]
    assert [(e.scope, e.scope_name) for e in refusals] == [("experiment", s.names["tagged"])]
    assert refusals[0].tags == {**TAGS, "experiment": s.names["tagged"]}
    bodies = [b for b in hook.bodies if b["alert"]["team"] == s.spender.name]
    assert sorted(b["alert"]["id"] for b in bodies) == sorted(e.id for e in mine)  # each once
    assert all(b["text"].startswith(f":warning: tiergate: lifetime budget of experiment {s.names['spend']} of team "
                                    f"{s.spender.name}") for b in bodies)


def _check_cli(s: Setup, tmp_path: Path) -> None:
    run = tiergate("experiments", "--config", str(s.path), "--json")
    assert run.returncode == 0, run.stderr
    cli = {r["name"]: r for r in orjson.loads(run.stdout)["experiments"]}
    moving = ("projected_usd",)  # the run rate moves with the clock between the two reads
    for api in s.api_rows:  # type: ignore[attr-defined]
        assert {k: v for k, v in cli[api["name"]].items() if k not in moving} == {
            k: v for k, v in api.items() if k not in moving}
    text = tiergate("experiments", "--config", str(s.path), "--team", s.spender.name)
    assert text.returncode == 0 and s.names["spend"] in text.stdout and "ana@example.com" in text.stdout
    assert s.names["tagged"] not in text.stdout

    bill = tiergate("bill", "--config", str(s.path), "--team", s.spender.name, "--group-by", "experiment",
                    "--period", datetime.now(UTC).strftime("%Y-%m"))
    assert bill.returncode == 0, bill.stderr
    billed = {r["experiment"]: r["cost_usd"] for r in orjson.loads(bill.stdout)["rows"]}
    assert billed[s.names["spend"]] == cli[s.names["spend"]]["spent_usd"] and None in billed

    gate = tiergate("check-config", str(s.path), "--fail-over-budget")
    assert gate.returncode == 1, gate.stdout + gate.stderr
    assert f"experiment '{s.names['spend']}' (team {s.spender.name}, owner ana@example.com) is projected" in gate.stderr
    assert s.names["old"] not in gate.stderr  # expired: it spends nothing more
    raised = dict(s.data, experiments=[dict(e, budget_usd="1000") for e in s.data["experiments"]])
    ok_path = tmp_path / "raised.yaml"
    ok_path.write_text(yaml.safe_dump(raised, sort_keys=False))
    ok = tiergate("check-config", str(ok_path), "--fail-over-budget")
    assert ok.returncode == 0 and "experiments: 3 within budget" in ok.stdout, ok.stdout + ok.stderr
