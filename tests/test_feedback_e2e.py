"""Cost per valuable output against a real proxy on loopback HTTP (simulated tiers, SQLite ledger): the official SDKs
make chat (plain and streamed), Responses and Messages requests; their records carry the wire format, the id the
client saw and the routing model's id; feedback names requests by that id or by the request id over HTTP; another
team's request is a 404 like an unknown one; bad bodies are 400s naming the field; and the value report (API, CSV and
``tiergate value``) equals a computation over the ledger's own rows, to the nano-dollar."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson

from metering.feedback import feedback_pairs
from metering.ledger import open_ledger
from metering.money import format_usd
from tests.anthropic_sdk import GROUP, anthropic
from tests.finops_helpers import tiergate
from tests.test_evidence_e2e import _sha
from tests.test_shadow_e2e import _rows
from tests.waiting import eventually

pytestmark = GROUP  # tests.anthropic_sdk: one worker imports the SDK

KEYS = {"t": "sk-fb-t", "u": "sk-fb-u", "admin": "sk-fb-admin"}


def _config(tmp_path: Path) -> Path:
    lines = [
        "metering:", f"  ledger: sqlite:///{tmp_path}/ledger.db",
        "admin_keys:", "  - id: admin", f"    sha256: {_sha(KEYS['admin'])}",
        "tiers:",
        "  - name: small", "    deployments:", "      - id: small-sim", "        model: simulated/gpt-4o-mini",
        "  - name: frontier", "    deployments:", "      - id: frontier-sim", "        model: simulated/gpt-4o",
        "teams:",
    ]
    for team in ("t", "u"):
        lines += [f"  {team}:", "    keys:", f"      - id: {team}-key", f"        sha256: {_sha(KEYS[team])}",
                  "    routing: {thresholds: {frontier: 0.9}}"]
    path = tmp_path / "feedback.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _post(proxy: Any, key: str, body: Any) -> httpx.Response:
    return httpx.post(proxy.url + "/v1/feedback", headers={"authorization": f"Bearer {KEYS[key]}"}, timeout=30,
                      content=orjson.dumps(body))


def _records(db: Path, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The requests' records, once the group-commit writer has them (it lingers up to 50 ms)."""
    def committed() -> dict[str, dict[str, Any]] | None:
        found = {r["request_id"]: r for r in _rows(db, "SELECT * FROM records")}
        return found if all(rid in found for rid in request_ids) else None

    return eventually(committed, f"the records of {request_ids}")


def test_feedback_and_cost_per_accepted_output(tmp_path: Path, start_proxy) -> None:
    db = tmp_path / "ledger.db"
    config = _config(tmp_path)
    proxy = start_proxy(config)
    oai = openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEYS["t"], max_retries=0)
    seen: dict[str, tuple[str, str]] = {}  # name -> (request id, the answer id the client saw)

    for i in range(3):
        raw = oai.chat.completions.with_raw_response.create(
            model="auto", max_tokens=30 + 10 * i, messages=[{"role": "user", "content": f"Say hello #{i}."}])
        seen[f"chat{i}"] = (raw.headers["x-request-id"], raw.parse().id)
    with oai.chat.completions.with_streaming_response.create(
            model="auto", stream=True, max_tokens=40,
            messages=[{"role": "user", "content": "Stream a haiku."}]) as streamed:
        ids = {chunk.id for chunk in streamed.parse()}
        assert len(ids) == 1
        seen["stream"] = (streamed.headers["x-request-id"], ids.pop())
    raw = oai.responses.with_raw_response.create(model="auto", input="Name three rivers.", max_output_tokens=40)
    seen["responses"] = (raw.headers["x-request-id"], raw.parse().id)
    claude = anthropic.Anthropic(base_url=proxy.url, api_key=KEYS["t"], max_retries=0)
    raw = claude.messages.with_raw_response.create(model="auto", max_tokens=40,
                                                   messages=[{"role": "user", "content": "Name a lake."}])
    seen["messages"] = (raw.headers["x-request-id"], raw.parse().id)
    other = openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEYS["u"], max_retries=0)
    raw = other.chat.completions.with_raw_response.create(model="auto", max_tokens=20,
                                                          messages=[{"role": "user", "content": "Hi from u."}])
    u_request = (raw.headers["x-request-id"], raw.parse().id)

    # -- the records: wire format, the id the client saw, the routing model that scored the request
    classifier = httpx.get(proxy.url + "/readyz", headers={"authorization": f"Bearer {KEYS['admin']}"}).json()
    records = _records(db, [rid for rid, _ in seen.values()])
    apis = {name: records[rid]["api"] for name, (rid, _) in seen.items()}
    assert apis == {"chat0": "chat", "chat1": "chat", "chat2": "chat", "stream": "chat", "responses": "responses",
                    "messages": "messages"}
    for name, (rid, answer_id) in seen.items():
        assert records[rid]["response_id"] == answer_id, name
        assert records[rid]["router_model"] == classifier["classifier"], name
    assert seen["responses"][1].startswith("resp_") and seen["messages"][1].startswith("msg_")
    assert seen["chat0"][1].startswith("chatcmpl") and seen["stream"][1].startswith("chatcmpl")

    # -- feedback by answer id and by request id; a second verdict on chat1 replaces its first
    verdicts = [
        ({"response_id": seen["chat0"][1], "label": "accepted"}, True),
        ({"request_id": seen["chat1"][0], "score": 0.2}, False),
        ({"request_id": seen["chat1"][0], "score": 0.9, "comment": "on second thought, fine"}, True),
        ({"request_id": seen["chat2"][0], "label": "rejected", "score": 1}, False),
        ({"response_id": seen["stream"][1], "label": "too-long", "score": 0.7}, True),
        ({"response_id": seen["responses"][1], "label": "accepted"}, True),
        ({"response_id": seen["messages"][1], "score": 0.3}, False),
    ]
    for body, accepted in verdicts:
        reply = _post(proxy, "t", body)
        assert reply.status_code == 200, reply.text
        given = reply.json()
        assert given["accepted"] is accepted
        named = body.get("request_id") or body["response_id"]
        assert named in (given["request_id"], given["response_id"])
    assert reply.json()["request_id"] == seen["messages"][0]  # found by its msg_ id

    # -- another team's request is exactly as unknown as a made-up one
    cross = _post(proxy, "u", {"request_id": seen["chat0"][0], "label": "accepted"})
    unknown = _post(proxy, "u", {"request_id": "req-nobody-made", "label": "accepted"})
    assert cross.status_code == unknown.status_code == 404
    assert cross.json()["error"]["code"] == unknown.json()["error"]["code"] == "not_found"
    assert (cross.json()["error"]["message"].replace(seen["chat0"][0], "X")
            == unknown.json()["error"]["message"].replace("req-nobody-made", "X"))
    assert _post(proxy, "u", {"response_id": seen["responses"][1], "score": 1}).status_code == 404
    assert _post(proxy, "t", {"response_id": u_request[1], "score": 1}).status_code == 404
    assert _post(proxy, "u", {"response_id": u_request[1], "score": 1}).status_code == 200

    # -- bad bodies: a 400 in OpenAI's shape naming the field; an admin key is not a team's
    rid = seen["chat0"][0]
    for body, param in [
        ({"request_id": rid}, "score"),
        ({"request_id": rid, "score": 1.5}, "score"),
        ({"request_id": rid, "score": True}, "score"),
        ({"request_id": rid, "score": "0.5"}, "score"),
        ({"request_id": rid, "label": "x" * 65}, "label"),
        ({"request_id": rid, "label": ""}, "label"),
        ({"request_id": rid, "label": "ok", "comment": "é" * 1025}, "comment"),
        ({"request_id": rid, "response_id": seen["chat0"][1], "label": "ok"}, "response_id"),
        ({"label": "accepted"}, "request_id"),
        ({"request_id": rid, "label": "ok", "lable": "typo"}, "lable"),
        ({"request_id": 7, "label": "ok"}, "request_id"),
    ]:
        reply = _post(proxy, "t", body)
        assert reply.status_code == 400, (body, reply.text)
        assert reply.json()["error"]["param"] == param, (body, reply.text)
    assert httpx.post(proxy.url + "/v1/feedback", headers={"authorization": f"Bearer {KEYS['t']}"},
                      content=b"not json").status_code == 400
    assert _post(proxy, "admin", {"request_id": rid, "label": "accepted"}).status_code == 403
    assert httpx.post(proxy.url + "/v1/feedback", content=b"{}").status_code == 401

    # -- the value report equals the ledger's own rows
    today = datetime.now(UTC).date()
    period = {"start": today.isoformat(), "end": (today + timedelta(days=1)).isoformat()}
    answered = [r for r in _rows(db, "SELECT * FROM records WHERE team = 't'") if r["purpose"] in ("chat", "embedding")]
    cost = sum(r["cost_nanos"] for r in answered)
    assert cost > 0 and len(answered) == 6
    value = httpx.get(proxy.url + "/v1/spend/value", params={**period, "group_by": "team"},
                      headers={"authorization": f"Bearer {KEYS['t']}"}).json()
    each = (2 * cost + 4) // 8  # four accepted outputs, rounded half up to a nano-dollar
    assert value["rows"] == [{"team": "t", "requests": 6, "with_feedback": 6, "accepted": 4,
                              "cost_usd": format_usd(cost), "cost_per_accepted_usd": format_usd(each)}]
    assert value["totals"]["cost_per_accepted_usd"] == format_usd(each)
    everyone = httpx.get(proxy.url + "/v1/spend/value", params={**period, "group_by": "model,tier"},
                         headers={"authorization": f"Bearer {KEYS['admin']}"}).json()
    u_cost = sum(r["cost_nanos"] for r in _rows(db, "SELECT * FROM records WHERE team = 'u'"))
    assert everyone["totals"]["requests"] == 7 and everyone["totals"]["accepted"] == 5
    assert everyone["totals"]["cost_usd"] == format_usd(cost + u_cost)
    assert sum(r["accepted"] for r in everyone["rows"]) == 5
    csv_text = httpx.get(proxy.url + "/v1/spend/value", params={**period, "format": "csv", "group_by": "team"},
                         headers={"authorization": f"Bearer {KEYS['t']}"}).text
    assert csv_text.splitlines() == ["team,requests,with_feedback,accepted,cost_usd,cost_per_accepted_usd",
                                     f"t,6,6,4,{format_usd(cost)},{format_usd(each)}"]
    for params, status in (({"group_by": "day"}, 400), ({"team": "u"}, 403)):
        assert httpx.get(proxy.url + "/v1/spend/value", params=params,
                         headers={"authorization": f"Bearer {KEYS['t']}"}).status_code == status

    cli = ["value", "--config", str(config), "--team", "t", "--start", period["start"], "--end", period["end"]]
    done = tiergate(*cli, "--format", "json")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == value
    table = tiergate(*cli)
    assert table.returncode == 0, table.stderr
    assert f"t      6         6              4         {format_usd(cost)}  {format_usd(each)}" in table.stdout

    # -- the reports and views that show the new columns
    report = httpx.get(proxy.url + "/v1/spend/report", params={**period, "group_by": "api", "team": "t"},
                       headers={"authorization": f"Bearer {KEYS['t']}"}).json()
    assert {r["api"]: r["requests"] for r in report["rows"]} == {"chat": 4, "messages": 1, "responses": 1}
    recent = httpx.get(proxy.url + "/v1/spend/requests", params={"order": "recent"},
                       headers={"authorization": f"Bearer {KEYS['t']}"}).json()["requests"]
    shown = {r["request_id"]: (r["api"], r["response_id"]) for r in recent}
    assert shown[seen["messages"][0]] == ("messages", seen["messages"][1])

    # -- the learning loop's reader: each request's latest verdict
    async def pairs() -> list[tuple[str, float | None, str | None]]:
        ledger = open_ledger(f"sqlite:///{db}", spool_dir=None)
        await ledger.start()
        try:
            return await feedback_pairs(ledger, datetime.now(UTC) - timedelta(hours=1), "t")
        finally:
            await ledger.close()

    latest = {rid: (score, label) for rid, score, label in asyncio.run(pairs())}
    assert latest[seen["chat1"][0]] == (0.9, None) and latest[seen["stream"][0]] == (0.7, "too-long")
    assert len(latest) == 6
    assert len(_rows(db, "SELECT * FROM feedback")) == 8  # history kept: chat1's first verdict, and u's own
