"""Fuzzing the in-process app: hypothesis strategies over OpenAI request shapes, tag headers and spend queries, and
the check every answer must pass (no 5xx, errors in OpenAI's shape, the ledger's status equal to the client's).

Shared by tests/test_fuzz.py (a bounded, derandomized run in the test command) and benchmarks/fuzz/run.py (long
runs). The app is the real one (proxy.app.create_app) over the demo policy with the in-process simulator unpaced,
a temporary SQLite ledger, and its lifespan run by starlette's TestClient.
"""

from __future__ import annotations

import re
import sqlite3
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from hypothesis import strategies as st
from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.body import MAX_DEPTH, MAX_TAG_KEY_CHARS, MAX_TAG_VALUE_CHARS, MAX_TAGS
from tests.conftest import DEMO_KEYS, demo_config

MODEL_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/route")
SPEND_PATHS = ("/v1/spend/report", "/v1/spend/teams", "/v1/spend/percentiles", "/v1/spend/requests",
               "/v1/spend/timeseries")
ERROR_KEYS = {"message", "type", "param", "code"}


def fuzz_config(tmp: Path, classifier: str = "default") -> Path:
    """The demo policy, unpaced (the simulator's TTFT and token rate would make every example take seconds) and with
    research's caps raised so a long run is not all 429s; support keeps its small caps to exercise refusals."""
    path = demo_config(tmp, classifier)
    text = re.sub(r"\n\s+simulator: \{[^}]*\}", "", path.read_text())
    text = text.replace('daily_usd: "25", monthly_usd: "500"', 'daily_usd: "100000", monthly_usd: "1000000"')
    path.write_text(text)
    return path


# ---- strategies ----------------------------------------------------------------------------------------------------
# Requests are drawn well formed, then most are broken in one place: one value anywhere in the body (a role, a
# content part's type, a tool call, a tag...) replaced by any JSON value, or a field removed. That reaches every
# check behind the first, which bodies broken everywhere at once would not.

_scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
junk = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                            max_size=3), max_leaves=6)
_DEEP = "\x1bdeep:"  # a placeholder string the encoder swaps for raw nested JSON (orjson stops at 255 levels)


def nested_json(depth: int) -> bytes:
    """A value ``depth`` levels deep counting the body it sits in: depth - 1 containers, lists and objects mixed."""
    opens = [b'{"k":' if i % 2 else b"[" for i in range(depth - 1)]
    closes = [b"}" if i % 2 else b"]" for i in reversed(range(depth - 1))]
    return b"".join(opens) + b"1" + b"".join(closes)


def encode(body: Any) -> bytes:
    """orjson.dumps, with every placeholder made by ``deep`` replaced by the nested JSON it stands for."""
    raw = orjson.dumps(body)
    return re.sub(rb'"\\u001bdeep:(\d+)"', lambda m: nested_json(int(m.group(1))), raw)


# Depths around the limit and the encoder's (255) and decoder's (1024) own limits.
def deep_value(depth: int) -> str:
    """A placeholder ``encode`` turns into a value ``depth`` levels deep."""
    return f"{_DEEP}{depth}"


deep = st.sampled_from([MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 256, 300, 1100]).map(deep_value)
_bad_strings = st.sampled_from(["", "a\x00b", "\x1b[31m", "x" * 9000, "v" * (MAX_TAG_VALUE_CHARS + 1), "\u2028"])
_replacement = junk | deep | _bad_strings | st.text(max_size=20)  # any Unicode, control characters included

_words = st.text(alphabet=string.ascii_letters + " .,?'é中", min_size=1, max_size=60)
_ident = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12)
_part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": _words}),
    st.fixed_dictionaries({"type": st.just("image_url"),
                           "image_url": st.fixed_dictionaries({"url": st.just("https://x.test/a.png")},
                                                              optional={"detail": st.just("low")})}),
    st.fixed_dictionaries({"type": st.just("input_audio"),
                           "input_audio": st.fixed_dictionaries({"data": st.just("AAAA"), "format": st.just("wav")})}),
    st.fixed_dictionaries({"type": st.just("file"), "file": st.fixed_dictionaries({"file_id": st.just("file-1")})}),
)
_function_call = st.fixed_dictionaries({"name": _ident, "arguments": st.just('{"q": 1}')})
_tool_call = st.fixed_dictionaries({"id": st.just("call_1"), "type": st.just("function"), "function": _function_call})
_content = _words | st.lists(_part, min_size=1, max_size=3)
_message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user"]), "content": _content},
                          optional={"name": _ident}),
    st.fixed_dictionaries({"role": st.just("assistant")},
                          optional={"content": _words, "tool_calls": st.lists(_tool_call, min_size=1, max_size=2)}),
    st.fixed_dictionaries({"role": st.just("tool"), "content": _words, "tool_call_id": st.just("call_1")}),
)
_tool = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": _ident}, optional={"description": _words, "parameters": st.just({"type": "object", "properties": {}})})})
_tag_key = st.text(alphabet=string.ascii_lowercase + string.digits + "-_", min_size=1, max_size=MAX_TAG_KEY_CHARS)
_tag_value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=MAX_TAG_VALUE_CHARS)
_metadata = st.dictionaries(_tag_key, _tag_value, max_size=4)

_common = {
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "metadata": _metadata,
    "max_tokens": st.integers(1, 24),
    "n": st.integers(1, 3),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "user": _ident,
    "seed": st.integers(0, 99),
    "logit_bias": st.dictionaries(st.integers(0, 9999).map(str), st.integers(-100, 100), max_size=2),
}
_models = st.sampled_from(["auto", "auto", "auto", "small", "mid", "frontier", "gpt-4o-mini", "gpt-4o", "nope"])
_token_input = _words | st.lists(_words, min_size=1, max_size=3) | st.lists(st.integers(0, 50_000), min_size=1,
                                                                              max_size=4) \
    | st.lists(st.lists(st.integers(0, 50_000), min_size=1, max_size=3), min_size=1, max_size=2)

chat_body = st.fixed_dictionaries(
    {"model": _models, "messages": st.lists(_message, min_size=1, max_size=3)},
    optional={**_common, "max_completion_tokens": st.integers(1, 24), "tools": st.lists(_tool, min_size=1, max_size=2),
              "tool_choice": st.just("auto"), "response_format": st.just({"type": "json_object"})},
)
completion_body = st.fixed_dictionaries({"model": _models, "prompt": _token_input},
                                        optional={**_common, "best_of": st.integers(1, 3)})
embedding_body = st.fixed_dictionaries({"model": st.just("small"), "input": _token_input},
                                       optional={"metadata": _metadata, "user": _ident})
_raw = st.sampled_from([b"", b"{", b"[]", b"null", b'"x"', b'{"model": "auto"', b"\xff\xfe"]) | st.binary(max_size=20)


def _slots(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a body a value sits (object keys and array indices), outermost first."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield (*path, key)
        yield from _slots(item, (*path, key))


@st.composite
def broken(draw: st.DrawFn, body: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A well-formed body with one value replaced (or its key removed), anywhere in it."""
    value = orjson.loads(orjson.dumps(draw(body)))  # a copy: st.just() hands out the same object every time
    *parent_path, key = draw(st.sampled_from(list(_slots(value))))
    parent = value
    for step in parent_path:
        parent = parent[step]
    if isinstance(parent, dict) and draw(st.integers(0, 4)) == 0:
        del parent[key]
    else:
        parent[key] = draw(_replacement)
    return value


_header_key = _tag_key | st.text(alphabet=string.ascii_lowercase + "-", max_size=MAX_TAG_KEY_CHARS + 2)
_header_value = _tag_value | st.text(alphabet=st.characters(max_codepoint=255), max_size=20) \
    | st.sampled_from(["x" * 9000, "a\x00b", "v" * (MAX_TAG_VALUE_CHARS + 1)])
_good_tags = st.dictionaries(_tag_key, _tag_value, max_size=3)
tag_headers = st.one_of(_good_tags, _good_tags, st.dictionaries(_header_key, _header_value, max_size=MAX_TAGS + 2))
_keys = st.sampled_from(["research"] * 8 + ["support", "admin", "bad", None])


@st.composite
def model_request(draw: st.DrawFn) -> dict[str, Any]:
    """One model-endpoint request: path, headers and the body bytes."""
    path = draw(st.sampled_from(MODEL_PATHS))
    body = {"/v1/completions": completion_body, "/v1/embeddings": embedding_body}.get(path, chat_body)
    raw = draw(st.one_of(body.map(encode), body.map(encode), broken(body).map(encode),
                         broken(body).map(encode), broken(body).map(encode), _raw, junk.map(encode)))
    headers = {f"x-tiergate-tag-{k}": v for k, v in draw(tag_headers).items()}
    tier = draw(st.none() | st.none() | st.sampled_from(["small", "mid", "frontier", "nope"]))
    if tier is not None:
        headers["x-tiergate-tier"] = tier
    return {"method": "POST", "path": path, "headers": _auth(draw(_keys)) | headers, "content": raw}


_text = st.text(max_size=20)
_day = st.one_of(st.dates().map(str), st.sampled_from(["9999-12-31", "0000-01-01", "0001-01-01", "2026-13-01",
                                                        "20260101", "2026-W01-1", ""]), _text)
_count = st.one_of(st.integers(-5, 10**6).map(str), st.sampled_from(["²", "١٢", "9" * 5000, "0x10", " 5"]), _text)
_groups = st.lists(st.sampled_from(["team", "model", "day", "tier", "tag", "key", "purpose", "", "nope"]), max_size=3)
_spend_params = st.fixed_dictionaries({}, optional={
    "start": _day, "end": _day, "day": _day, "limit": _count, "hours": _count,
    "order": st.sampled_from(["cost", "recent", "nope"]) | _text, "bucket": st.sampled_from(["hour", "day"]) | _text,
    "format": st.sampled_from(["csv", "json"]) | _text, "group_by": _groups.map(",".join) | _text,
    "team": st.sampled_from(["research", "support", "ghost"]) | _text,
})


@st.composite
def spend_request(draw: st.DrawFn) -> dict[str, Any]:
    tags = draw(st.dictionaries(_header_key, _header_value, max_size=2))
    headers = {f"x-tiergate-tag-{k}": v for k, v in tags.items()}
    return {"method": "GET", "path": draw(st.sampled_from(SPEND_PATHS)),
            "headers": _auth(draw(st.sampled_from(["admin", "research", "support"]))) | headers,
            "params": draw(_spend_params)}


def _auth(who: str | None) -> dict[str, str]:
    if who is None:
        return {}
    return {"authorization": f"Bearer {DEMO_KEYS.get(who, 'sk-not-a-key')}"}


# ---- the app and the checks ----------------------------------------------------------------------------------------

@dataclass
class Tally:
    """What a run saw: requests by endpoint and status, and every broken promise (empty when all held)."""

    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    reached_pipeline: int = 0
    problems: list[str] = field(default_factory=list)


class FuzzApp:
    """The real app in process, with the lifespan run; ``send`` makes one request and checks its answer."""

    def __init__(self, tmp: Path, classifier: str = "default") -> None:
        self._ledger = tmp / "ledger.db"
        self.app = create_app(str(fuzz_config(tmp, classifier)))
        self.client = TestClient(self.app, raise_server_exceptions=False)

    def __enter__(self) -> FuzzApp:
        self.client.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(*exc)

    def settled(self) -> None:
        """Wait for background settlements (streams settle after their last byte) and the ledger's commit."""
        runtime = self.app.state.runtime

        async def settle() -> None:
            await runtime.pipeline.drain()
            await runtime.meter.ledger.flush()

        assert self.client.portal is not None
        self.client.portal.call(settle)

    def ledger_statuses(self, request_id: str) -> list[int]:
        with sqlite3.connect(self._ledger) as conn:
            return [row[0] for row in conn.execute("SELECT status FROM records WHERE request_id = ?", (request_id,))]

    def ledger_tags(self, request_id: str) -> dict[str, str]:
        self.settled()
        with sqlite3.connect(self._ledger) as conn:
            row = conn.execute("SELECT tags FROM records WHERE request_id = ?", (request_id,)).fetchone()
        return orjson.loads(row[0])

    def send(self, request: dict[str, Any], tally: Tally) -> list[str]:
        """Make ``request``; return what is wrong with the answer (nothing, when the proxy kept its promises)."""
        resp = self.client.request(request["method"], request["path"], headers=_encoded(request["headers"]),
                                    content=request.get("content"), params=request.get("params"))
        tally.requests += 1
        tally.statuses[f"{request['path']} {resp.status_code}"] += 1
        where = f"{request['method']} {request['path']} -> {resp.status_code}: {_short(request)}"
        problems = []
        if resp.status_code >= 500:
            problems.append(f"5xx {where}: {resp.text[:300]}")
        if resp.status_code >= 400:
            problems += [f"{p} {where}" for p in _error_shape(resp.content)]
        if request["method"] == "POST" and request["path"] != "/v1/route":
            self.settled()
            recorded = self.ledger_statuses(resp.headers["x-request-id"])
            tally.reached_pipeline += bool(recorded)
            if any(status != resp.status_code for status in recorded):
                problems.append(f"ledger status {recorded} != client's {where}")
            if resp.status_code == 200 and len(recorded) != 1:
                problems.append(f"{len(recorded)} ledger records for a 200 {where}")
        tally.problems += problems
        return problems


def _encoded(headers: dict[str, str]) -> dict[str, bytes]:
    return {k: v.encode("latin-1") for k, v in headers.items()}


def _error_shape(content: bytes) -> Iterator[str]:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        yield "error body is not JSON"
        return
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(error) != ERROR_KEYS:
        yield f"error body is not OpenAI's shape ({content[:120]!r})"
    elif not (isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)):
        yield "error message/type are not non-empty strings"


def _short(request: dict[str, Any]) -> str:
    shown = request.get("content") or request.get("params")
    text = repr(shown)
    return text if len(text) < 400 else text[:400] + "..."
