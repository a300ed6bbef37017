"""Bad input gets the documented status and an OpenAI-format error body; nothing answers with HTML."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from conftest import DEMO_KEYS, Process, demo_config

AUTH = {"authorization": f"Bearer {DEMO_KEYS['research']}"}


def _error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def test_malformed_json(demo_proxy: Process) -> None:
    resp = httpx.post(demo_proxy.url + "/v1/chat/completions", content=b"{not json", headers=AUTH)
    assert _error(resp, 400)["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": 42, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "auto", "messages": "hello"}, "messages"),
        ({"model": "auto", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "auto", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}, "max_tokens"),
        ({"model": "auto", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        ({"model": "auto", "messages": [{"role": "user", "content": "x"}], "temperature": 7}, "temperature"),
    ],
)
def test_schema_violations_name_the_field(demo_proxy: Process, body: dict, param: str) -> None:
    resp = httpx.post(demo_proxy.url + "/v1/chat/completions", json=body, headers=AUTH)
    error = _error(resp, 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_oversize_body(tmp_path: Path, start_proxy) -> None:
    config = demo_config(tmp_path)
    config.write_text(config.read_text().replace("max_body_bytes: 4194304", "max_body_bytes: 2048"))
    proxy = start_proxy(config)
    big = {"model": "auto", "messages": [{"role": "user", "content": "x" * 5000}]}
    resp = httpx.post(proxy.url + "/v1/chat/completions", json=big, headers=AUTH)
    assert _error(resp, 413)["code"] == "body_too_large"


def test_missing_and_invalid_key(demo_proxy: Process) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "x"}]}
    assert _error(httpx.post(demo_proxy.url + "/v1/chat/completions", json=body), 401)["code"] == "missing_api_key"
    resp = httpx.post(demo_proxy.url + "/v1/chat/completions", json=body, headers={"api-key": "nope"})
    assert _error(resp, 401)["code"] == "invalid_api_key"
    ok = httpx.post(demo_proxy.url + "/v1/chat/completions", json=body, headers={"api-key": DEMO_KEYS["research"]})
    assert ok.status_code == 200


def test_unknown_model_lists_allowed(demo_proxy: Process) -> None:
    body = {"model": "claude-9", "messages": [{"role": "user", "content": "x"}]}
    error = _error(httpx.post(demo_proxy.url + "/v1/chat/completions", json=body, headers=AUTH), 404)
    assert error["code"] == "model_not_found" and "gpt-4o-mini" in error["message"]


def test_unknown_endpoint_and_method_are_json(demo_proxy: Process) -> None:
    _error(httpx.get(demo_proxy.url + "/v1/nothing-here", headers=AUTH), 404)
    _error(httpx.get(demo_proxy.url + "/v1/chat/completions", headers=AUTH), 405)


def test_request_id_is_honoured_or_made(demo_proxy: Process) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "x"}]}
    mine = httpx.post(demo_proxy.url + "/v1/chat/completions", json=body, headers={**AUTH, "x-request-id": "abc-123"})
    assert mine.headers["x-request-id"] == "abc-123"
    failed = httpx.post(demo_proxy.url + "/v1/chat/completions", content=b"[", headers=AUTH)
    assert failed.headers["x-request-id"].startswith("req_")


def test_admin_key_cannot_call_models(demo_proxy: Process) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "x"}]}
    resp = httpx.post(demo_proxy.url + "/v1/chat/completions", json=body,
                      headers={"authorization": f"Bearer {DEMO_KEYS['admin']}"})
    assert _error(resp, 403)["code"] == "team_key_required"
