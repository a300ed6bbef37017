"""Budget alerts through a served proxy: ``tiergate serve --workers 2`` on real Redis, with a SQLite and a PostgreSQL
ledger. A team, a key and a tag budget each fire 50 / 80 / 100 % exactly once, at the request whose settled cost
crossed the line (previous spend < threshold <= spend, and the difference is that request's cost); a local aiohttp
webhook receives exactly those; ``GET /v1/alerts`` lists them; refusals (429) are listed and counted in
``/metrics``; a team's own ``alert_thresholds`` replace the defaults.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from metering.ledger import open_ledger
from metering.ledger.alert_log import AlertEvent, AlertQuery
from metering.money import usd_to_nanos
from tests.conftest import POSTGRES_DSN, REDIS_URL, Process, require_service
from tests.metering_fixtures import pg_schema  # noqa: F401  (fixture)
from tests.proxy_metering_helpers import (
    ADMIN_AUTH,
    TeamSpec,
    chat,
    drop_redis_state,
    new_team,
    postgres_up,
    redis_up,
    write_config,
)
from tests.waiting import eventually
from tests.webhook_receiver import Webhook

CAPS = {"team": Decimal("0.0004"), "key": Decimal("0.0003"), "tag": Decimal("0.0002")}  # USD per day
TAG = {"exp": "e1"}


def _config(tmp_path: Path, mock: Process, ledger: str, schema: str | None, hook: Webhook,
            spender: TeamSpec, refused: TeamSpec) -> Path:
    path = write_config(tmp_path / "alerts.yaml", {"small": [mock.url]}, [spender, refused], ledger, redis=REDIS_URL,
                        alert_webhook=hook.url)
    if schema is not None:
        data = yaml.safe_load(path.read_text())
        data["metering"]["ledger_schema"] = schema
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_thresholds_fire_once_at_the_crossing_request_across_two_workers(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest, start_mock: Any, start_proxy: Any) -> None:
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
        proxy = start_proxy(_config(tmp_path, start_mock(), ledger, schema, hook, spender, refused), workers=2)
        try:
            costs = _spend(proxy, spender, refused)
            _check(proxy, hook, spender, refused, costs, ledger, schema or "public")
        finally:
            for team in (spender, refused):
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


def _check(proxy: Process, hook: Webhook, spender: TeamSpec, refused: TeamSpec, spent: dict[str, Any],
           ledger: str, schema: str) -> None:
    costs: dict[str, int] = spent["costs"]
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

    proxy.stop()  # a graceful stop drains both workers' alerters: nothing may arrive twice after this
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
    # the webhook got exactly the stored alerts, each once
    bodies = [b["alert"] for b in hook.bodies]
    assert sorted(b["id"] for b in bodies) == sorted(e.id for e in mine + theirs)
    by_id = {e.id: e for e in mine}
    for body in bodies:
        if body["id"] in by_id:
            e = by_id[body["id"]]
            assert (body["scope"], body["threshold_pct"], body["request_id"]) == (e.scope, e.threshold_pct,
                                                                                  e.request_id)
            assert usd_to_nanos(Decimal(body["spent_usd"])) == e.spent_nanos
            assert usd_to_nanos(Decimal(body["limit_usd"])) == e.limit_nanos


async def _stored(url: str, schema: str) -> list[AlertEvent]:
    ledger = open_ledger(url, spool_dir=None, schema=schema)
    await ledger.start()
    try:
        now = datetime.now(UTC)
        return await ledger.alerts(AlertQuery(now - timedelta(hours=1), now + timedelta(hours=1), limit=1000))
    finally:
        await ledger.close()
