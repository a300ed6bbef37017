"""The spend report's P50/P95 output tokens per team and model, JSON and CSV agreeing."""

from __future__ import annotations

import csv
import io

import httpx

from conftest import DEMO_KEYS, Process

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
