"""Bad input gets the documented status and an OpenAI-format error body; nothing answers with HTML.

An unexpected exception (a route registered here that fails, served by a real uvicorn in a thread) is logged once
with the request id its 500 body names, and the keep-alive connection survives it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from proxy.app import create_app
from tests.conftest import DEMO_KEYS, Process, demo_config, free_port
from tests.waiting import eventually

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
        # issue 11, item 5: these were 500s (the full set runs in process in test_edge_validation.py)
        ({"model": "auto", "messages": [{"role": [], "content": "x"}]}, "messages[0].role"),
        ({"model": "auto", "messages": [{"role": "assistant", "tool_calls": 5}]}, "messages[0].tool_calls"),
        ({"model": "auto", "messages": [{"role": "user", "content": [{"type": []}]}]}, "messages[0].content[0].type"),
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


def test_unknown_dashboard_asset_is_a_json_404(demo_proxy: Process) -> None:
    assert _error(httpx.get(demo_proxy.url + "/dashboard/nothing.js"), 404)["code"] == "not_found"


async def _injected_fault(request: Request) -> Response:
    raise RuntimeError("injected fault")


async def _fault_mid_body(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield b"data: {}\n\n"
        raise RuntimeError("injected fault mid-body")

    return StreamingResponse(body(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def faulty_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The proxy app plus one failing route, under uvicorn with the worker's HTTP stack (httptools, keep-alive).
    ``log_config=None``: uvicorn's records reach the root logger, so a test sees uvicorn's logging too."""
    app = create_app(str(demo_config(tmp_path_factory.mktemp("faulty"), classifier="length")))
    app.router.add_route("/test/fault", _injected_fault, methods=["GET"])
    app.router.add_route("/test/fault-mid-body", _fault_mid_body, methods=["GET"])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http="httptools", lifespan="on",
                                           log_config=None, log_level="info", timeout_keep_alive=30))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    eventually(lambda: server.started, "the faulty proxy started")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _local_port(resp: httpx.Response) -> int:
    return resp.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_a_500_is_logged_once_with_its_request_id_and_keeps_the_connection(
        faulty_proxy: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with httpx.Client(base_url=faulty_proxy, timeout=10) as client:
        failed = client.get("/test/fault")
        first_port = _local_port(failed)
        error = _error(failed, 500)
        request_id = failed.headers["x-request-id"]
        assert error["code"] == "internal_error" and request_id in error["message"]
        assert "connection" not in failed.headers  # no "connection: close"
        after = client.get("/healthz")
        assert after.status_code == 200
        assert _local_port(after) == first_port  # the same TCP connection served both
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert request_id in errors[0].getMessage() and errors[0].exc_info is not None
    assert "injected fault" in caplog.text  # the traceback is in that one record


def test_a_fault_mid_body_cuts_the_connection_and_is_logged_with_its_request_id(
        faulty_proxy: str, caplog: pytest.LogCaptureFixture) -> None:
    """Once bytes are out, a 500 cannot be sent: closing the connection is what tells the client the body is cut."""
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(faulty_proxy + "/test/fault-mid-body", headers={"x-request-id": "cut-short"}, timeout=10)
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1 and "cut-short" in tracebacks[0].getMessage()
    assert tracebacks[0].levelno == logging.ERROR


def test_client_gone_mid_upload_is_info(faulty_proxy: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    host, port = faulty_proxy.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: tiergate\r\nx-request-id: upload-gone\r\n"
                     b"authorization: Bearer " + DEMO_KEYS["research"].encode() + b"\r\n"
                     b"content-type: application/json\r\ncontent-length: 100000\r\n\r\n{\"model\": \"auto\", ")
    eventually(lambda: any("upload-gone" in r.getMessage() for r in caplog.records), "the upload-gone log line")
    mine = [r for r in caplog.records if "upload-gone" in r.getMessage()]
    assert [r.levelno for r in mine] == [logging.INFO], [r.getMessage() for r in mine]
    assert "disconnected" in mine[0].getMessage() and mine[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
