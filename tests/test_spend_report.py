"""The spend report's P50/P95 output tokens per team and model, JSON and CSV agreeing; query parameters out of
range are 400s naming the parameter; one date convention (start inclusive, end exclusive); an unknown team is a
404 naming the known ones; tag rows include the untagged records and combine with any dimension."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import DEMO_KEYS, POSTGRES_DSN, Process, require_service
from tests.metering_fixtures import pg_schema  # noqa: F401  (fixture)
from tests.proxy_metering_helpers import ADMIN_AUTH, chat, new_team, postgres_up, write_config

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


def _get(proxy: Process, path: str, headers: dict[str, str] = ADMIN, **params: str) -> httpx.Response:
    return httpx.get(proxy.url + path, params=params, headers=headers, timeout=30)


def test_report_days_are_start_inclusive_end_exclusive(demo_proxy: Process) -> None:
    research = {"authorization": f"Bearer {DEMO_KEYS['research']}"}
    assert httpx.post(demo_proxy.url + "/v1/chat/completions", headers=research, timeout=30,
                      json={"model": "small", "messages": [{"role": "user", "content": "one day"}]}).status_code == 200
    today = datetime.now(UTC).date()
    day = {"start": str(today), "end": str(today + timedelta(days=1)), "team": "research"}
    one_day = _get(demo_proxy, "/v1/spend/report", **day).json()
    assert one_day["totals"]["requests"] >= 1 and (one_day["start"], one_day["end"]) == (day["start"], day["end"])
    assert _get(demo_proxy, "/v1/spend/report", team="research").json()["totals"] == one_day["totals"]  # month so far
    before = _get(demo_proxy, "/v1/spend/report", start=str(today - timedelta(days=1)), end=str(today),
                  team="research").json()
    assert before["totals"]["requests"] == 0  # end is exclusive: today is not in [yesterday, today)
    empty = _get(demo_proxy, "/v1/spend/report", start=str(today), end=str(today))
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "end"
    assert "exclusive" in empty.json()["error"]["message"]
    pct = _get(demo_proxy, "/v1/spend/percentiles", **day).json()["rows"]
    assert sum(r["requests"] for r in pct) == one_day["totals"]["requests"]


def test_unknown_team_is_a_404_naming_the_known_ones(demo_proxy: Process) -> None:
    for path in ("/v1/spend/report", "/v1/spend/teams", "/v1/spend/percentiles", "/v1/spend/requests",
                 "/v1/spend/timeseries", "/v1/alerts"):
        resp = _get(demo_proxy, path, team="nosuch")
        assert resp.status_code == 404, (path, resp.text)
        error = resp.json()["error"]
        assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "not_found", "team")
        assert error["message"] == "unknown team 'nosuch'; known teams: research, support"
    support = {"authorization": f"Bearer {DEMO_KEYS['support']}"}
    assert _get(demo_proxy, "/v1/spend/report", support, team="nosuch").status_code == 403  # not its team either
    assert _get(demo_proxy, "/v1/spend/report", team="support").status_code == 200  # known: in the policy


def test_tag_rows_include_untagged_records_and_combine_with_any_dimension(demo_proxy: Process) -> None:
    support = {"authorization": f"Bearer {DEMO_KEYS['support']}"}
    for n, metadata in enumerate([{"feature": "faq"}, {"feature": "faq", "ticket": "t1"}, None, None]):
        body = {"model": "small", "messages": [{"role": "user", "content": f"tagged {n}"}],
                **({"metadata": metadata} if metadata else {})}
        assert httpx.post(demo_proxy.url + "/v1/chat/completions", headers=support, json=body,
                          timeout=30).status_code == 200
    report = _get(demo_proxy, "/v1/spend/report", group_by="tag", team="support").json()
    total = report["totals"]
    for key in {r["tag_key"] for r in report["rows"]}:
        rows = [r for r in report["rows"] if r["tag_key"] == key]
        assert sum(r["requests"] for r in rows) == total["requests"], key
        assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal(total["cost_usd"]), key
        assert [r["tag_value"] for r in rows][-1] is None  # the untagged row comes after the key's values
    feature = {r["tag_value"]: r["requests"] for r in report["rows"] if r["tag_key"] == "feature"}
    assert feature["faq"] >= 2 and feature[None] >= 2
    by_tier = _get(demo_proxy, "/v1/spend/report", group_by="tier,tag,key", team="support")
    assert by_tier.status_code == 200
    rows = by_tier.json()["rows"]
    assert list(rows[0])[:4] == ["tier", "tag_key", "tag_value", "key_id"]
    ticket = [r for r in rows if r["tag_key"] == "ticket"]
    assert sum(r["requests"] for r in ticket) == total["requests"]
    as_csv = list(csv.DictReader(io.StringIO(_get(demo_proxy, "/v1/spend/report", group_by="tag", team="support",
                                                  format="csv").text)))
    assert [(r["tag_key"], r["tag_value"]) for r in as_csv] == [
        (r["tag_key"], r["tag_value"] or "") for r in report["rows"]]  # untagged: an empty cell
