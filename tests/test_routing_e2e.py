"""Routing end to end: real proxy, real mock-upstream deployments, the shipped classifier deciding."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from classifiers.scorer import ComplexityScorer
from tests.conftest import mock_config

AUTH = {"authorization": "Bearer sk-test"}
SIMPLE = "Thanks, that's all!"
HARD = ("Let f(x) = x^3 - 3x + 1. Find all real roots exactly, then compute the integral of f from -2 to 2.\n"
        "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")


def _chat(proxy, content: str, **extra) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30)


def test_simple_goes_small_hard_goes_frontier_tools_need_a_capable_tier(tmp_path: Path, start_mock,
                                                                         start_proxy) -> None:
    scorer = ComplexityScorer.load(None)
    simple, hard = (scorer.score([{"role": "user", "content": c}]) for c in (SIMPLE, HARD))
    assert simple < hard, "the shipped model must rank the calculation above the thank-you"
    mid_threshold = simple + (hard - simple) / 3
    frontier_threshold = simple + 2 * (hard - simple) / 3
    mock = start_mock()
    config = mock_config(tmp_path, {"small": [mock.url], "mid": [mock.url], "frontier": [mock.url]},
                         team_extra=f"    routing: {{thresholds: {{mid: {mid_threshold}, "
                                    f"frontier: {frontier_threshold}}}}}")
    # the small tier cannot call tools in this policy
    config.write_text(config.read_text().replace(
        "        model: openai/gpt-4o-mini\n",
        "        model: openai/gpt-4o-mini\n        capabilities: [json_schema]\n"))
    proxy = start_proxy(config)

    low = _chat(proxy, SIMPLE)
    assert low.headers["x-tiergate-tier"] == "small" and low.json()["model"] == "gpt-4o-mini"
    assert abs(float(low.headers["x-tiergate-score"]) - simple) < 1e-3
    high = _chat(proxy, HARD)
    assert high.headers["x-tiergate-tier"] == "frontier" and high.json()["model"] == "o1"

    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    with_tools = _chat(proxy, SIMPLE, tools=tools)
    assert with_tools.headers["x-tiergate-tier"] == "mid"  # raised to the first tier that can call tools

    asked = httpx.post(proxy.url + "/v1/chat/completions", headers={**AUTH, "x-tiergate-tier": "mid"},
                       json={"model": "auto", "messages": [{"role": "user", "content": HARD}]}, timeout=30)
    assert asked.headers["x-tiergate-tier"] == "mid"

    preview = httpx.post(proxy.url + "/v1/route", headers=AUTH,
                         json={"model": "auto", "messages": [{"role": "user", "content": HARD}]}).json()
    assert preview["tier"] == "frontier" and preview["model"] == "o1" and preview["reasons"]
    assert float(preview["estimated_max_cost_usd"]) > 0
    assert httpx.get(mock.url + "/_mock/stats").json()["requests"] == 4  # the dry run called nothing


def test_expired_experiment_key_is_refused(tmp_path: Path, start_mock, start_proxy) -> None:
    mock = start_mock()
    config = mock_config(tmp_path, {"small": [mock.url]})
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    digest = hashlib.sha256(b"sk-experiment").hexdigest()
    config.write_text(config.read_text().replace(
        "    keys:\n", f"    keys:\n      - id: exp-1\n        sha256: '{digest}'\n        expires_at: '{past}'\n"))
    proxy = start_proxy(config)
    resp = httpx.post(proxy.url + "/v1/chat/completions", headers={"authorization": "Bearer sk-experiment"},
                      json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "expired_api_key" and "exp-1" in resp.json()["error"]["message"]
    assert _chat(proxy, "hi").status_code == 200  # the team's other key still works


def test_required_tags_come_from_metadata_or_headers(tmp_path: Path, start_mock, start_proxy) -> None:
    mock = start_mock()
    proxy = start_proxy(mock_config(tmp_path, {"small": [mock.url]}, team_extra="    required_tags: [owner]"))
    missing = _chat(proxy, "hi")
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_tags"
    assert "owner" in missing.json()["error"]["message"]
    assert _chat(proxy, "hi", metadata={"owner": "ana"}).status_code == 200
    by_header = httpx.post(proxy.url + "/v1/chat/completions", headers={**AUTH, "x-tiergate-tag-owner": "bo"},
                           json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert by_header.status_code == 200
    rows = httpx.get(proxy.url + "/v1/spend/report?group_by=tag", headers=AUTH).json()["rows"]
    assert {(r["tag_key"], r["tag_value"]) for r in rows} == {("owner", "ana"), ("owner", "bo")}
