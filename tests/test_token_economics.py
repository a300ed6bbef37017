"""Token-economics levers end to end: proxy and mock-upstream processes, requests inspected at the upstream."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import mock_config

AUTH = {"authorization": "Bearer sk-test"}
SYSTEM = {"role": "system", "content": "You are the support agent of a large online shop. " * 120}


def _requests(mock) -> list[dict]:
    return httpx.get(mock.url + "/_mock/requests").json()["requests"]


def _chat(proxy, body: dict) -> httpx.Response:
    resp = httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp


def test_rolling_summary_trims_what_reaches_the_upstream_and_is_reused(tmp_path: Path, start_mock, start_proxy) -> None:
    mock = start_mock()
    config = mock_config(tmp_path, {"small": [mock.url], "mid": [mock.url]},
                         team_extra="    context: {history_budget_tokens: 3000, keep_last_turns: 3}")
    proxy = start_proxy(config)
    messages = [SYSTEM]
    headers_seen = []
    for n in range(14):
        messages.append({"role": "user", "content": f"Question {n}: where is order {n}? " + "details " * 80})
        resp = _chat(proxy, {"model": "mid", "messages": messages})
        headers_seen.append(resp.headers.get("x-tiergate-context"))
        messages.append(resp.json()["choices"][0]["message"])
    assert headers_seen[0] is None
    trimmed = [h for h in headers_seen if h]
    assert trimmed and trimmed[-1].startswith("trimmed;summarized=")
    saved = int(trimmed[-1].rsplit("saved_tokens=", 1)[1])
    assert saved > 1000

    seen = _requests(mock)
    chats = [r["body"] for r in seen if r["body"]["model"] == "gpt-4o"]  # the mid tier
    summaries = [r["body"] for r in seen if r["body"]["model"] == "gpt-4o-mini"]  # written by the cheapest tier
    last = chats[-1]["messages"]
    assert last[0] == SYSTEM  # the system prompt is never summarized
    assert last[1]["role"] == "system" and last[1]["content"].startswith("Summary of the earlier part")
    assert last[-1] == messages[-2]  # the newest user turn reaches the upstream unchanged
    # Trimming keeps the provider cache key: it names the client's system prompt, not the summary after it.
    assert len({c.get("prompt_cache_key") for c in chats}) == 1
    # Each aged-out span is summarized once: summaries <= number of distinct cut points, far fewer than turns.
    distinct = len(set(trimmed))
    assert 1 <= len(summaries) <= distinct
    report = httpx.get(proxy.url + "/v1/spend/report?group_by=team", headers=AUTH).json()
    assert report["totals"]["requests"] == 14 + len(summaries)


def test_summarizer_failure_falls_back_to_truncation(tmp_path: Path, start_mock, start_proxy) -> None:
    good = start_mock()
    broken = start_mock("--fail-rate", "1", "--fail-kind", "500")
    # one attempt: the summary request to the broken cheapest tier may not fall back to the healthy one
    config = mock_config(tmp_path, {"small": [broken.url], "mid": [good.url]}, server_extra="  max_attempts: 1",
                         team_extra="    context: {history_budget_tokens: 2500, keep_last_turns: 2}")
    proxy = start_proxy(config)
    messages = [SYSTEM] + [m for n in range(8) for m in (
        {"role": "user", "content": f"q{n} " + "words " * 100},
        {"role": "assistant", "content": f"a{n} " + "text " * 100})]
    messages.append({"role": "user", "content": "final question"})
    resp = _chat(proxy, {"model": "mid", "messages": messages})
    assert resp.headers["x-tiergate-context"].startswith("trimmed;truncated=")
    body = [r["body"] for r in _requests(good)][-1]
    assert not any(m["role"] == "system" and "Summary" in str(m["content"]) for m in body["messages"])
    assert body["messages"][-1]["content"] == "final question"


def test_openai_prompt_cache_key_and_cached_tokens(tmp_path: Path, start_mock, start_proxy) -> None:
    mock = start_mock()
    proxy = start_proxy(mock_config(tmp_path, {"small": [mock.url]}))
    body = {"model": "small", "messages": [SYSTEM, {"role": "user", "content": "hello"}]}
    _chat(proxy, body)
    second = _chat(proxy, {**body, "messages": [SYSTEM, {"role": "user", "content": "another question"}]})
    keys = {r["body"].get("prompt_cache_key") for r in _requests(mock)}
    assert len(keys) == 1 and next(iter(keys)).startswith("tg-t-")
    assert second.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= 1024


def test_prefix_affinity_sends_a_prefix_to_one_deployment(tmp_path: Path, start_mock, start_proxy) -> None:
    mocks = [start_mock(), start_mock(), start_mock()]
    proxy = start_proxy(mock_config(tmp_path, {"small": [m.url for m in mocks]}))
    prefixes = [{"role": "system", "content": f"Agent {i}: " + "rules " * 50} for i in range(6)]
    chosen: dict[int, set[str]] = {i: set() for i in range(6)}
    for round_ in range(4):
        for i, system in enumerate(prefixes):
            resp = _chat(proxy, {"model": "small", "messages": [system, {"role": "user", "content": f"r{round_}"}]})
            chosen[i].add(resp.headers["x-tiergate-deployment"])
    assert all(len(deps) == 1 for deps in chosen.values())  # same prefix, same deployment
    assert len({next(iter(d)) for d in chosen.values()}) >= 2  # different prefixes spread out


def test_response_cache_hit_is_free_and_marked(tmp_path: Path, start_mock, start_proxy) -> None:
    mock = start_mock()
    proxy = start_proxy(mock_config(tmp_path, {"small": [mock.url]},
                                    team_extra="    context: {response_cache: true, response_cache_ttl_s: 60}"))
    body = {"model": "small", "temperature": 0, "messages": [{"role": "user", "content": "2+2?"}]}
    first = _chat(proxy, body)
    second = _chat(proxy, body)
    assert "x-tiergate-cache" not in first.headers and float(first.headers["x-tiergate-cost-usd"]) > 0
    assert second.headers["x-tiergate-cache"] == "hit" and float(second.headers["x-tiergate-cost-usd"]) == 0
    assert second.json() == first.json()
    assert len(_requests(mock)) == 1
    _chat(proxy, {**body, "temperature": 0.7})  # not deterministic: never served from the cache
    assert len(_requests(mock)) == 2


def test_max_tokens_clamped_and_reported(tmp_path: Path, start_mock, start_proxy) -> None:
    mock = start_mock()
    proxy = start_proxy(mock_config(tmp_path, {"small": [mock.url]},
                                    team_extra="    max_tokens: {default: 64, cap: 128}"))
    resp = _chat(proxy, {"model": "small", "max_completion_tokens": 5000,
                         "messages": [{"role": "user", "content": "long essay please"}]})
    assert resp.headers["x-tiergate-max-tokens"] == "128;clamped"
    assert _requests(mock)[-1]["body"]["max_completion_tokens"] == 128
    resp = _chat(proxy, {"model": "small", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.headers["x-tiergate-max-tokens"] == "64;default"
    assert _requests(mock)[-1]["body"]["max_tokens"] == 64
