"""Budget alerts through a served proxy: ``tiergate serve --workers 2`` on real Redis, with a SQLite and a PostgreSQL
ledger. A team, a key and a tag budget each fire 50 / 80 / 100 % exactly once, at the request whose settled cost
crossed the line (previous spend < threshold <= spend, and the difference is that request's cost); a local aiohttp
webhook receives exactly those; ``GET /v1/alerts`` lists them; refusals (429) are listed and counted in
``/metrics``; a team's own ``alert_thresholds`` replace the defaults.

The same proxy serves the experiment manifests of ``tests/experiments_scenario.py`` (their own teams, added to this
policy; that module has their setup and checks): a two-worker proxy costs ~5 s of CPU to start, so the two scenarios
share one per backend. Each checks only its own teams' alerts, rows and webhook posts.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from metering.money import usd_to_nanos
from tests.conftest import POSTGRES_DSN, REDIS_URL, Process, require_service
from tests.experiments_scenario import (
    Setup,
    _check_alerts,
    _check_api,
    _check_cli,
    _spend_by_key,
    _spend_by_tags,
    _stored,
)
from tests.metering_fixtures import pg_schema  # noqa: F401  (fixture)
from tests.proxy_metering_helpers import (
    ADMIN_AUTH,
    TeamSpec,
    chat,
    drop_redis_state,
    new_team,
    postgres_up,
    redis_up,
)
from tests.waiting import eventually
from tests.webhook_receiver import Webhook

CAPS = {"team": Decimal("0.0004"), "key": Decimal("0.0003"), "tag": Decimal("0.0002")}  # USD per day
TAG = {"exp": "e1"}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_thresholds_and_experiments_fire_once_across_two_workers(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest, start_mock: Any, start_proxy: Any) -> None:
    """The budget crossings (this module) and the experiment manifests (``tests/experiments_scenario``) on one
    two-worker proxy: both spend, both are checked live, one graceful stop drains the alerters, then both check what
    was stored and posted, and the experiments' command lines read the ledger."""
    require_service("Redis", redis_up(REDIS_URL), REDIS_URL)
    if backend == "postgres":
        require_service("PostgreSQL", postgres_up(POSTGRES_DSN), POSTGRES_DSN)
        ledger, schema = POSTGRES_DSN, request.getfixturevalue("pg_schema")
    else:
        ledger, schema = f"sqlite:///{tmp_path / 'ledger.db'}", None
    # Spends past every cap: downgrade keeps serving (and settling) beyond 100 %.
    spender = new_team("alerts", budgets={
        "team": {"daily_usd": str(CAPS["team"])}, "per_key": {"daily_usd": str(CAPS["key"])},
        "per_tag": {"exp=e1": {"daily_usd": str(CAPS["tag"])}}, "on_exceeded": "downgrade"})
    # Refused at its cap, with its own thresholds.
    refused = new_team("refused", budgets={"team": {"daily_usd": "0.00003"}, "alert_thresholds": [40]})
    with Webhook.in_thread() as hook:
        s = Setup(tmp_path, start_mock(), ledger, schema, hook, others=(spender, refused))
        proxy = s.proxy = start_proxy(s.path, workers=2)
        try:
            costs = _spend(proxy, spender, refused)
            spent, tagged = _spend_by_key(s), _spend_by_tags(s)
            _check_live(proxy, spender, refused, costs)
            _check_api(s, spent, tagged)
            proxy.stop()  # a graceful stop drains both workers' alerters: nothing may arrive twice after this
            _check_stored(hook, spender, refused, costs, ledger, schema or "public")
            _check_alerts(s, hook, spent, ledger, schema or "public")
            _check_cli(s, tmp_path)
        finally:
            for team in (spender, refused, s.spender, s.rejecter):
                drop_redis_state(REDIS_URL, team.name)


def _spend(proxy: Process, spender: TeamSpec, refused: TeamSpec) -> dict[str, Any]:
    """Sequential requests (two workers share them): the spender to 120 % of its team cap, the refused team until
    three 429s. Returns each served request's cost by request id, and the 429 count."""
    costs: dict[str, int] = {}
    spent = 0
    with httpx.Client(timeout=30) as http:
        n = 0
        while spent * 100 < 120 * usd_to_nanos(CAPS["team"]):
            rid = f"alert-e2e-{uuid.uuid4().hex[:8]}-{n}"
            resp = http.post(proxy.url + "/v1/chat/completions", headers={**spender.auth, "x-request-id": rid},
                             json=chat(f"spend a little, {n}", metadata=TAG))
            assert resp.status_code == 200, resp.text
            costs[rid] = usd_to_nanos(Decimal(resp.headers["x-tiergate-cost-usd"]))
            spent += costs[rid]
            n += 1
        refusals = 0
        while refusals < 3:
            resp = http.post(proxy.url + "/v1/chat/completions", headers=refused.auth, json=chat("over budget"))
            assert resp.status_code in (200, 429), resp.text
            refusals += resp.status_code == 429
    return {"costs": costs, "refusals": refusals}


def _alerts(proxy: Process, auth: dict[str, str] = ADMIN_AUTH, **params: str) -> list[dict[str, Any]]:
    resp = httpx.get(proxy.url + "/v1/alerts", params=params, headers=auth, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()["alerts"]


def _refusal_counter(proxy: Process, team: str) -> float:
    text = httpx.get(proxy.url + "/metrics", headers=ADMIN_AUTH, timeout=30).text
    return sum(float(row.rsplit(" ", 1)[1]) for row in text.splitlines()
               if row.startswith("tiergate_budget_refusals_total{") and f'team="{team}"' in row
               and 'scope="team"' in row)


def _check_live(proxy: Process, spender: TeamSpec, refused: TeamSpec, spent: dict[str, Any]) -> None:
    """What the running proxy answers: the alerts, the refusals and their counter, who sees what."""
    # 3 scopes x 3 thresholds; settles reach Redis when the workers' budget leases close (within a second)
    eventually(lambda: len(_alerts(proxy, team=spender.name, kind="threshold")) >= 9, "nine threshold alerts")
    eventually(lambda: len(_alerts(proxy, team=refused.name, kind="threshold")) >= 1, "the refused team's alert")
    refusals = _alerts(proxy, team=refused.name, kind="refusal")
    assert len(refusals) == spent["refusals"] == 3  # each 429 is a row ...
    assert {(r["scope"], r["team"], r["key_id"], r["limit_usd"]) for r in refusals} == {
        ("team", refused.name, f"{refused.name}-key", "0.000030000")}
    assert all(Decimal(r["amount_usd"]) > 0 and Decimal(r["spent_usd"]) <= Decimal("0.00003") for r in refusals)
    eventually(lambda: _refusal_counter(proxy, refused.name) == 3, "the refusal counter")  # ... and counted
    # a team key sees its own alerts only; bad parameters are 400s in the OpenAI error shape
    assert {a["team"] for a in _alerts(proxy, refused.auth)} == {refused.name}
    bad = httpx.get(proxy.url + "/v1/alerts", params={"kind": "bogus"}, headers=ADMIN_AUTH, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "kind"


def _check_stored(hook: Webhook, spender: TeamSpec, refused: TeamSpec, spent: dict[str, Any], ledger: str,
                  schema: str) -> None:
    """After the stop: the stored alerts, each fired at its crossing request, and the webhook's posts of them."""
    costs: dict[str, int] = spent["costs"]
    stored = asyncio.run(_stored(ledger, schema))
    mine = [e for e in stored if e.team == spender.name and e.kind == "threshold"]
    assert sorted((e.scope, e.threshold_pct) for e in mine) == sorted(
        (scope, pct) for scope in CAPS for pct in (50, 80, 100))
    for e in mine:
        limit = usd_to_nanos(CAPS[e.scope])
        assert e.limit_nanos == limit
        assert e.previous_nanos is not None and e.previous_nanos * 100 < e.threshold_pct * limit <= e.spent_nanos * 100
        assert e.request_id in costs and e.spent_nanos - e.previous_nanos == e.amount_nanos == costs[e.request_id]
        assert e.spent_nanos <= sum(costs.values())
        assert e.scope_name == {"team": "", "key": f"{spender.name}-key", "tag": "exp=e1"}[e.scope]
    # the refused team: only its configured 40 %, once; never a 100 % for being refused
    theirs = [e for e in stored if e.team == refused.name and e.kind == "threshold"]
    assert [e.threshold_pct for e in theirs] == [40]
    # the webhook got exactly the stored alerts of these teams, each once
    bodies = [b["alert"] for b in hook.bodies if b["alert"]["team"] in (spender.name, refused.name)]
    assert sorted(b["id"] for b in bodies) == sorted(e.id for e in mine + theirs)
    by_id = {e.id: e for e in mine}
    for body in bodies:
        if body["id"] in by_id:
            e = by_id[body["id"]]
            assert (body["scope"], body["threshold_pct"], body["request_id"]) == (e.scope, e.threshold_pct,
                                                                                  e.request_id)
            assert usd_to_nanos(Decimal(body["spent_usd"])) == e.spent_nanos
            assert usd_to_nanos(Decimal(body["limit_usd"])) == e.limit_nanos

