"""Internals stay out of client-facing answers: failed upstreams are named by deployment id with a generic reason
(the proxy's log keeps their URLs), and /readyz details need an admin key. A real proxy and mock upstreams on
loopback HTTP (a mock process where a test kills it). (/metrics access: tests/test_metrics.py.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import orjson

from tests.conftest import mock_config
from tests.helpers_simulator import MockServer

AUTH = {"authorization": "Bearer sk-test"}
CHAT = {"model": "small", "messages": [{"role": "user", "content": "hello"}]}


def _length_scored(config: Path) -> Path:
    config.write_text(config.read_text().replace("model: default", "model: length"))
    return config


def _host(url: str) -> str:
    return url.removeprefix("http://")


def test_failed_attempts_name_deployments_not_urls_and_readyz_details_need_an_admin_key(
        tmp_path: Path, start_mock, start_proxy) -> None:
    broken = start_mock("--fail-rate", "1", "--fail-kind", "500")
    hanging = start_mock("--fail-rate", "1", "--fail-kind", "timeout", "--hang-s", "30")
    config = _length_scored(mock_config(tmp_path, {"small": [broken.url], "mid": [hanging.url]},
                                        server_extra="  cooldown_after_failures: 100"))
    config.write_text(config.read_text().replace("upstream_timeout_s: 5", "upstream_timeout_s: 1")
                      + f"admin_keys:\n  - id: ops\n    sha256: {hashlib.sha256(b'sk-ops').hexdigest()}\n")
    proxy = start_proxy(config)

    for headers in ({}, AUTH, {"authorization": "Bearer wrong"}):
        public = httpx.get(proxy.url + "/readyz", headers=headers).json()
        assert public == {"status": "ready", "config": {"sha256": hashlib.sha256(config.read_bytes()).hexdigest()}}
    admin = httpx.get(proxy.url + "/readyz", headers={"authorization": "Bearer sk-ops"}).json()["config"]
    assert admin["path"] == str(config.resolve())
    assert admin["last_reload_error"] is None and admin["pending_restart"] == []

    resp = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=30)
    assert resp.status_code == 504
    error = resp.json()["error"]
    assert error["code"] == "upstream_timeout"
    assert error["message"] == "upstream timed out (small-0 answered 5xx; mid-0 timed out)"

    resp = httpx.post(proxy.url + "/v1/chat/completions", json={**CHAT, "model": "gpt-4o-mini"}, headers=AUTH,
                      timeout=30)  # pinned to the broken deployment's model: no fallback
    assert resp.status_code == 502
    assert resp.json()["error"]["message"] == "upstream failed (small-0 answered 5xx)"
    log = proxy.output()
    assert _host(broken.url) in log and _host(hanging.url) in log  # the operator still sees which URL failed


def test_stream_cut_names_the_deployment_not_its_url(tmp_path: Path, start_proxy) -> None:
    # a process, killed mid-stream below (``python -m simulator``: the mock without the CLI's imports)
    upstream = MockServer("--tokens-per-s", "20", process=True).wait_ready()
    try:
        proxy = start_proxy(_length_scored(mock_config(tmp_path, {"small": [upstream.root]})))
        body = {**CHAT, "stream": True, "max_tokens": 400}
        with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            assert upstream.process is not None
            upstream.process.kill()  # the upstream dies mid-stream
            upstream.process.wait()
            events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    finally:
        upstream.stop()
    error = orjson.loads(events[-1])["error"]
    assert error["code"] == "upstream_stream_error"
    assert error["message"] == "upstream stream from deployment small-0 ended early: connection failed"
    assert _host(upstream.root) in proxy.output()
