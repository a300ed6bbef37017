"""Malformed input is refused at the edge with a 400 naming the field (issue 11, item 5), and the ledger records the
status the client got. Each reproduction of the issue has its case here; the real app runs in process over the demo
policy (in-process simulator, temporary SQLite ledger)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from proxy.body import MAX_DEPTH, MAX_N, MAX_TAG_VALUE_CHARS, MAX_TAGS
from tests.conftest import DEMO_KEYS
from tests.fuzz_harness import FuzzApp, deep_value, encode, nested_json
from upstream.base import Endpoint, UpstreamReply

RESEARCH = {"authorization": f"Bearer {DEMO_KEYS['research']}"}
ADMIN = {"authorization": f"Bearer {DEMO_KEYS['admin']}"}
HI = {"role": "user", "content": "hi"}


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzApp]:
    with FuzzApp(tmp_path_factory.mktemp("edge")) as app:
        yield app


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "small", "max_tokens": 8, "messages": [HI], **fields}


def _refused(resp: httpx.Response, param: str) -> dict[str, Any]:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    return error


def _post(app: FuzzApp, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    raw = body if isinstance(body, bytes) else encode(body)
    return app.client.post(path, content=raw, headers={**RESEARCH, **(headers or {})})


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/route"])
@pytest.mark.parametrize(("message", "param"), [
    ({"role": [], "content": "hi"}, "messages[1].role"),
    ({"role": {"a": 1}, "content": "hi"}, "messages[1].role"),
    ({"role": "assistant", "content": "hi", "tool_calls": 5}, "messages[1].tool_calls"),
    ({"role": "assistant", "tool_calls": True}, "messages[1].tool_calls"),
    ({"role": "assistant", "tool_calls": [{"function": "abc"}]}, "messages[1].tool_calls[0].id"),
    ({"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": "abc"}]},
     "messages[1].tool_calls[0].function"),
    ({"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"role": "user", "content": [{"type": []}]}, "messages[1].content[0].type"),
    ({"role": "user", "content": [{"type": "video_game"}]}, "messages[1].content[0].type"),
    ({"role": "user", "content": [{"type": "text", "text": 5}]}, "messages[1].content[0].text"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5}}]},
     "messages[1].content[0].image_url.url"),
    ({"role": "user", "content": [7]}, "messages[1].content[0]"),
])
def test_issue_reproductions_are_400s_naming_the_field(fuzz_app: FuzzApp, path: str, message: dict[str, Any],
                                                       param: str) -> None:
    _refused(_post(fuzz_app, path, _chat(messages=[HI, message])), param)


@pytest.mark.parametrize(("fields", "param"), [
    ({"tools": [{"type": "function", "function": "f"}]}, "tools[0].function"),
    ({"tools": [{"type": "function", "function": {"name": 3}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "browser"}]}, "tools[0].type"),
    ({"tools": {"type": "function"}}, "tools"),
    ({"functions": [{"description": "no name"}]}, "functions[0].name"),
    ({"response_format": {"type": ["json_object"]}}, "response_format.type"),
    ({"n": MAX_N + 1}, "n"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"user": 5}, "user"),
])
def test_fields_the_pipeline_reads_are_checked(fuzz_app: FuzzApp, fields: dict[str, Any], param: str) -> None:
    _refused(_post(fuzz_app, "/v1/chat/completions", _chat(**fields)), param)


def test_nesting_depth_is_limited_before_anything_recurses(fuzz_app: FuzzApp) -> None:
    """300 levels passed orjson's decoder (1,024) but broke its encoder (255) on the way to an HTTP upstream."""
    def body(depth: int) -> bytes:
        return encode(_chat(logit_bias=deep_value(depth)))

    assert body(4).count(b"[") == 1 + 2  # messages' own array plus the nested value's: the helper nests as told
    for depth in (MAX_DEPTH + 1, 300, 1000):
        assert _refused(_post(fuzz_app, "/v1/chat/completions", body(depth)), "logit_bias")["code"] == "too_deep"
    deep_message = _chat(messages=[{**HI, "extra": json.loads(nested_json(MAX_DEPTH - 1))}])  # 2 levels deeper
    _refused(_post(fuzz_app, "/v1/route", deep_message), "messages")
    assert _post(fuzz_app, "/v1/route", body(MAX_DEPTH)).status_code == 200


def test_tags_that_would_poison_the_ledger_are_refused(fuzz_app: FuzzApp) -> None:
    _refused(_post(fuzz_app, "/v1/chat/completions", _chat(metadata={"owner": "a\u0000b"})), "metadata.owner")
    _refused(_post(fuzz_app, "/v1/chat/completions", _chat(), {"x-tiergate-tag-owner": "x" * 9000}),
             "x-tiergate-tag-owner")
    _refused(_post(fuzz_app, "/v1/chat/completions", _chat(metadata={"owner": "v" * (MAX_TAG_VALUE_CHARS + 1)})),
             "metadata.owner")
    _refused(_post(fuzz_app, "/v1/chat/completions", _chat(metadata={"k" * 65: "v"})), "metadata." + "k" * 65)
    _refused(_post(fuzz_app, "/v1/chat/completions", _chat(metadata={"a\tb": "v"})), "metadata.a\tb")
    _refused(_post(fuzz_app, "/v1/chat/completions", _chat(metadata={"owner": 5})), "metadata.owner")
    _refused(_post(fuzz_app, "/v1/embeddings", {"model": "small", "input": "x",
                                                "metadata": {f"k{i}": "v" for i in range(MAX_TAGS + 1)}}), "metadata")
    too_many = {f"x-tiergate-tag-k{i}": "v" for i in range(MAX_TAGS + 1)}
    _refused(_post(fuzz_app, "/v1/completions", {"model": "small", "prompt": "x"}, too_many), "x-tiergate-tag-*")
    _refused(_post(fuzz_app, "/v1/chat/completions", _chat(), {"x-tiergate-tag-": "v"}), "x-tiergate-tag-")


def test_sane_tags_reach_the_ledger(fuzz_app: FuzzApp) -> None:
    value = "é" * MAX_TAG_VALUE_CHARS
    resp = _post(fuzz_app, "/v1/chat/completions", _chat(metadata={"owner": value}), {"x-tiergate-tag-env": "prod"})
    assert resp.status_code == 200, resp.text
    assert fuzz_app.ledger_tags(resp.headers["x-request-id"]) == {"owner": value, "env": "prod"}


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {"model": "small", "prompt": ["a", [1, 2]]}, "prompt[1]"),
    ("/v1/completions", {"model": "small", "prompt": [1, -2]}, "prompt[1]"),
    ("/v1/completions", {"model": "small", "prompt": [[1], [True]]}, "prompt[1]"),
    ("/v1/completions", {"model": "small", "prompt": []}, "prompt"),
    ("/v1/completions", {"model": "small", "prompt": "x", "best_of": 21}, "best_of"),
    ("/v1/embeddings", {"model": "small", "input": {"text": "x"}}, "input"),
    ("/v1/embeddings", {"model": "small", "input": [None]}, "input[0]"),
])
def test_prompt_shapes_are_checked(fuzz_app: FuzzApp, path: str, body: dict[str, Any], param: str) -> None:
    _refused(_post(fuzz_app, path, body), param)


@pytest.mark.parametrize("body", [{"model": "small", "prompt": [[1, 2], [3]], "max_tokens": 4},
                                  {"model": "small", "prompt": ["a", "b"], "max_tokens": 4}])
def test_every_prompt_shape_openai_accepts_is_served(fuzz_app: FuzzApp, body: dict[str, Any]) -> None:
    assert _post(fuzz_app, "/v1/completions", body).status_code == 200


@pytest.mark.parametrize(("query", "param"), [
    ("/v1/spend/report?end=9999-12-31", "end"),
    ("/v1/spend/report?start=0000-01-01", "start"),
    ("/v1/spend/report?start=1999-12-31", "start"),
    ("/v1/spend/report?start=tomorrow", "start"),
    ("/v1/spend/percentiles?end=9999-12-31", "end"),
    ("/v1/spend/timeseries?day=9999-12-31", "day"),
    ("/v1/spend/timeseries?day=2026-02-30", "day"),
    ("/v1/spend/requests?limit=%C2%B2", "limit"),
    ("/v1/spend/requests?hours=" + "9" * 5000, "hours"),
    ("/v1/spend/requests?order=cheapest", "order"),
    ("/v1/spend/report?team=a%00b", "team"),
    ("/v1/spend/report?group_by=colour", "group_by"),
])
def test_spend_parameters_out_of_range_are_400s(fuzz_app: FuzzApp, query: str, param: str) -> None:
    _refused(fuzz_app.client.get(query, headers=ADMIN), param)


def test_the_latest_day_still_answers(fuzz_app: FuzzApp) -> None:
    resp = fuzz_app.client.get("/v1/spend/report?start=2026-01-01&end=9998-12-31", headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["end"] == "9998-12-31"


class _BrokenUpstream:
    """An upstream client with a bug (what a JSON encoder's recursion error in upstream/http.py was)."""

    async def send(self, endpoint: Endpoint, body: dict[str, Any]) -> UpstreamReply:
        raise RuntimeError("a bug below the gateway")

    async def stream(self, endpoint: Endpoint, body: dict[str, Any]) -> AsyncIterator[bytes]:
        raise RuntimeError("a bug below the gateway")
        yield b""  # pragma: no cover  (makes this an async generator, as the interface requires)

    async def close(self) -> None:
        return None


def test_an_unexpected_error_is_recorded_as_the_500_the_client_got(fuzz_app: FuzzApp,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection at the upstream seam: the ledger said 499 "client disconnected" for a client that got 500."""
    monkeypatch.setattr(fuzz_app.app.state.runtime.pool, "get", lambda dep: _BrokenUpstream())
    resp = _post(fuzz_app, "/v1/chat/completions", _chat())
    assert resp.status_code == 500
    fuzz_app.settled()
    assert fuzz_app.ledger_statuses(resp.headers["x-request-id"]) == [500]


def test_a_cancelled_request_is_recorded_as_499(fuzz_app: FuzzApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real cancellation (the client went away while the upstream was working) still records 499."""
    started = asyncio.Event()

    class Hanging(_BrokenUpstream):
        async def send(self, endpoint: Endpoint, body: dict[str, Any]) -> UpstreamReply:
            started.set()
            await asyncio.sleep(60)
            raise AssertionError("cancelled before this")

    monkeypatch.setattr(fuzz_app.app.state.runtime.pool, "get", lambda dep: Hanging())
    request_id = "cancelled-request-1"

    async def call_and_cancel() -> None:
        transport = httpx.ASGITransport(app=fuzz_app.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tiergate") as client:
            task = asyncio.create_task(client.post("/v1/chat/completions", content=encode(_chat()),
                                                   headers={**RESEARCH, "x-request-id": request_id}))
            await asyncio.wait_for(started.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    assert fuzz_app.client.portal is not None
    fuzz_app.client.portal.call(call_and_cancel)
    fuzz_app.settled()
    assert fuzz_app.ledger_statuses(request_id) == [499]
