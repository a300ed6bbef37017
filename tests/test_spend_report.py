"""The spend report's P50/P95 output tokens per team and model, JSON and CSV agreeing; query parameters out of
range are 400s naming the parameter."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import httpx
import yaml

from conftest import DEMO_KEYS, POSTGRES_DSN, Process, require_service
from metering_fixtures import pg_schema  # noqa: F401  (fixture)
from proxy_metering_helpers import ADMIN_AUTH, chat, new_team, postgres_up, write_config

ADMIN = {"authorization": f"Bearer {DEMO_KEYS['admin']}"}


def test_report_by_team_and_model_carries_output_percentiles(demo_proxy: Process) -> None:
    research = {"authorization": f"Bearer {DEMO_KEYS['research']}"}
    sizes = []
    for n in range(5):
        resp = httpx.post(demo_proxy.url + "/v1/chat/completions", headers=research, timeout=30,
                          json={"model": "small", "messages": [{"role": "user", "content": f"question {n}"}]})
        sizes.append(resp.json()["usage"]["completion_tokens"])
    url = demo_proxy.url + "/v1/spend/report?group_by=team,model"
    rows = httpx.get(url, headers=ADMIN).json()["rows"]
    row = next(r for r in rows if r["team"] == "research" and r["model"] == "gpt-4o-mini")
    assert min(sizes) <= row["p50_output_tokens"] <= row["p95_output_tokens"] <= max(
        [*sizes, row["p95_output_tokens"]])
    assert row["p95_output_tokens"] >= sorted(sizes)[len(sizes) // 2]
    table = list(csv.DictReader(io.StringIO(httpx.get(url + "&format=csv", headers=ADMIN).text)))
    match = next(r for r in table if r["team"] == "research" and r["model"] == "gpt-4o-mini")
    assert int(match["p95_output_tokens"]) == row["p95_output_tokens"]
    assert match["cost_usd"] == row["cost_usd"]
    # other groupings keep exactly the documented columns
    header = httpx.get(demo_proxy.url + "/v1/spend/report?group_by=tier&format=csv", headers=ADMIN).text.splitlines()[0]
    assert header == ("tier,requests,prompt_tokens,completion_tokens,cached_tokens,reasoning_tokens,cost_usd,"
                      "counterfactual_cost_usd,savings_usd")


def test_spend_parameters_out_of_range_are_400s_on_the_postgres_ledger(tmp_path: Path, pg_schema: str,
                                                                       start_mock: Any, start_proxy: Any) -> None:
    """Issue 11, item 5, on a served proxy over PostgreSQL: dates at the calendar's end overflowed (500), and a NUL in
    ``team`` would reach psycopg (500); each is a 400 naming the parameter, and the extremes that are allowed
    still answer from the real database."""
    require_service("PostgreSQL", postgres_up(POSTGRES_DSN), POSTGRES_DSN)
    team = new_team("spendq")
    config = write_config(tmp_path / "c.yaml", {"small": [start_mock().url]}, [team], POSTGRES_DSN)
    data = yaml.safe_load(config.read_text())
    data["metering"]["ledger_schema"] = pg_schema
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    proxy = start_proxy(config)
    assert httpx.post(proxy.url + "/v1/chat/completions", json=chat("hi", max_tokens=4), headers=team.auth,
                      timeout=30).status_code == 200
    for path, params, param in [
        ("/v1/spend/report", {"end": "9999-12-31"}, "end"),
        ("/v1/spend/report", {"start": "0000-01-01"}, "start"),
        ("/v1/spend/percentiles", {"end": "9999-12-31"}, "end"),
        ("/v1/spend/timeseries", {"day": "9999-12-31"}, "day"),
        ("/v1/spend/requests", {"hours": "²"}, "hours"),
        ("/v1/spend/report", {"team": "a\x00b"}, "team"),
    ]:
        resp = httpx.get(proxy.url + path, params=params, headers=ADMIN_AUTH, timeout=30)
        assert resp.status_code == 400, (path, params, resp.text)
        assert resp.json()["error"]["param"] == param
    widest = httpx.get(proxy.url + "/v1/spend/report", params={"start": "2000-01-01", "end": "9998-12-31",
                                                              "team": team.name}, headers=ADMIN_AUTH, timeout=30)
    assert widest.status_code == 200 and widest.json()["totals"]["requests"] == 1
    last_day = httpx.get(proxy.url + "/v1/spend/timeseries", params={"day": "9998-12-31"}, headers=ADMIN_AUTH)
    assert last_day.status_code == 200 and len(last_day.json()["points"]) == 24
