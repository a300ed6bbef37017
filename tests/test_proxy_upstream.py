"""Upstream failures through a real proxy and mock upstreams on loopback HTTP: status mapping, fallbacks, cooldowns,
disconnects. (A hanging upstream is held to a short ``upstream_timeout_s``: only the mapping to 504 matters.)"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import mock_config
from tests.waiting import eventually

AUTH = {"authorization": "Bearer sk-test"}
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}


def _stats(mock) -> dict:
    return httpx.get(mock.url + "/_mock/stats").json()


@pytest.mark.parametrize(("kind", "status", "code"), [("429", 429, "upstream_rate_limited"),
                                                    ("500", 502, "upstream_error")])
def test_upstream_failures_map_to_openai_errors(tmp_path: Path, start_mock, start_proxy, kind: str, status: int,
                                                code: str) -> None:
    mock = start_mock("--fail-rate", "1", "--fail-kind", kind)
    proxy = start_proxy(mock_config(tmp_path, {"small": [mock.url]}))
    resp = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert resp.status_code == status
    error = resp.json()["error"]
    assert error["code"] == code and error["type"] == ("rate_limit_error" if status == 429 else "api_error")
    if status == 429:
        assert int(resp.headers["retry-after"]) >= 1


def test_upstream_timeout_maps_to_504(tmp_path: Path, start_mock, start_proxy) -> None:
    mock = start_mock("--fail-rate", "1", "--fail-kind", "timeout", "--hang-s", "30")
    config = mock_config(tmp_path, {"small": [mock.url]})
    config.write_text(config.read_text().replace("upstream_timeout_s: 5", "upstream_timeout_s: 0.3"))
    proxy = start_proxy(config)
    started = time.monotonic()
    resp = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=20)
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 10


def test_unreachable_upstream_is_502_not_a_traceback(tmp_path: Path, start_proxy) -> None:
    proxy = start_proxy(mock_config(tmp_path, {"small": ["http://127.0.0.1:9"]}))
    resp = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert resp.status_code == 502
    message = resp.json()["error"]["message"]
    assert "small-0 connection failed" in message and "127.0.0.1" not in message  # the deployment id, not its URL


def test_failing_deployment_falls_back_within_tier_then_up(tmp_path: Path, start_mock, start_proxy) -> None:
    broken = start_mock("--fail-rate", "1", "--fail-kind", "500")
    healthy = start_mock()
    proxy = start_proxy(mock_config(tmp_path, {"small": [broken.url], "mid": [healthy.url]}))
    resp = httpx.post(proxy.url + "/v1/chat/completions", json={**CHAT, "model": "small"}, headers=AUTH)
    assert resp.status_code == 200
    assert resp.headers["x-tiergate-deployment"] == "mid-0"
    assert resp.headers["x-tiergate-attempts"] == "2"
    assert _stats(broken)["requests"] >= 1


def test_cooldown_skips_a_failing_deployment(tmp_path: Path, start_mock, start_proxy) -> None:
    broken = start_mock("--fail-rate", "1", "--fail-kind", "500")
    healthy = start_mock()
    config = mock_config(tmp_path, {"small": [broken.url, healthy.url]},
                         server_extra="  cooldown_after_failures: 1")
    proxy = start_proxy(config)
    attempts = []
    # The first deployment is a weighted draw per request: 40 requests try the broken one first at least once
    # (all but 2**-40 of the time) and, without the cooldown, about 20 times.
    for _ in range(40):
        resp = httpx.post(proxy.url + "/v1/chat/completions", json={**CHAT, "model": "small"}, headers=AUTH)
        assert resp.status_code == 200
        assert resp.headers["x-tiergate-deployment"] == "small-1"
        attempts.append(resp.headers.get("x-tiergate-attempts", "1"))
    # its one failure cooled it down: only that request paid the second attempt
    assert attempts.count("2") == 1
    assert _stats(broken)["requests"] == 1


def test_stream_falls_back_before_first_byte(tmp_path: Path, start_mock, start_proxy) -> None:
    broken = start_mock("--fail-rate", "1", "--fail-kind", "429")
    healthy = start_mock()
    proxy = start_proxy(mock_config(tmp_path, {"small": [broken.url], "mid": [healthy.url]}))
    body = {**CHAT, "model": "small", "stream": True}
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=body, headers=AUTH) as resp:
        assert resp.status_code == 200
        assert resp.headers["x-tiergate-deployment"] == "mid-0"
        raw = resp.read()
    assert raw.endswith(b"data: [DONE]\n\n")


def test_client_disconnect_cancels_the_upstream_stream(tmp_path: Path, start_mock, start_proxy) -> None:
    mock = start_mock("--tokens-per-s", "20")
    proxy = start_proxy(mock_config(tmp_path, {"small": [mock.url]}))
    body = {**CHAT, "model": "small", "stream": True, "max_tokens": 400}
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=body, headers=AUTH) as resp:
        lines = resp.iter_lines()
        for _ in range(3):
            next(lines)
    # the proxy must notice and drop its upstream connection: the mock sees the stream end early
    stats = eventually(lambda: (s := _stats(mock)).get("streams_aborted", 0) >= 1 and s, "the upstream stream aborted")
    assert stats.get("streams_aborted", 0) >= 1, stats


def test_in_process_simulator_is_held_to_the_upstream_timeout(tmp_path: Path, start_proxy) -> None:
    config = tmp_path / "sim.yaml"
    digest = __import__("hashlib").sha256(b"sk-test").hexdigest()
    config.write_text(
        "server: {upstream_timeout_s: 0.3}\n"
        f"metering: {{ledger: 'sqlite:///{tmp_path}/ledger.db'}}\n"
        "tiers:\n  - name: small\n    deployments:\n"
        "      - {id: hang, model: simulated/gpt-4o-mini, simulator: {fail_rate: 1, fail_kind: timeout, hang_s: 30}}\n"
        f"teams:\n  t:\n    keys:\n      - {{id: k, sha256: '{digest}'}}\n"
    )
    proxy = start_proxy(config)
    started = time.monotonic()
    resp = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=20)
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 8
