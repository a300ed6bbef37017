"""Metering end to end through real servers on loopback HTTP (proxy and mock-upstream; a proxy process where a test
kills it with SIGKILL), real Redis and PostgreSQL.

Every expected cost is computed by hand here (Decimal, litellm's gpt-4o-mini prices) from the usage block the mock
returned, and compared to what the proxy said (``x-tiergate-cost-usd``), what it reported (``/v1/spend/report``),
what ``tiergate bill`` prints, and what sits in the raw records table.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import POSTGRES_DSN, REDIS_URL, Process, require_service
from tests.metering_fixtures import pg_schema  # noqa: F401  (fixture)
from tests.proxy_metering_helpers import (
    ADMIN_AUTH,
    Procs,
    TeamSpec,
    chat,
    cost_of,
    drop_redis_state,
    new_team,
    open_holds,
    parse_sse,
    postgres_up,
    redis_up,
    report,
    sqlite_records,
    tiergate,
    today,
    tomorrow,
    totals,
    usd,
    write_config,
)
from tests.waiting import eventually

LONG_PROMPT = " ".join(f"token{i}" for i in range(1600))  # ~3,800 tokens: well over the 1,024 caching minimum


# ---- shared processes ----------------------------------------------------------------------------------------------
# Process start-up dominates these tests on a busy 2-core machine, so one mock and one proxy serve most tests of this
# module; each test has its own team (unique name), so their records, reports and counters never mix.

SMALL_ONLY = {"tiers": {"ceiling": "small"}}
COST, STREAM, FAIL = new_team("cost", **SMALL_ONLY), new_team("stream", **SMALL_ONLY), new_team("fail")
FIN_A, FIN_B = new_team("fin", tiers={"ceiling": "mid"}), new_team("fin", tiers={"ceiling": "mid"})
DISC = new_team("disc", budgets={"team": {"daily_usd": "5"}})
DUP = new_team("dup", budgets={"team": {"daily_usd": "5"}})


class Shared:
    def __init__(self, procs: Procs, directory: Path) -> None:
        self.procs = procs
        self.dir = directory
        self.mock = procs.mock()
        self.bad = procs.mock("--fail-rate", "1", "--fail-kind", "500")
        # small and mid are healthy; "broken" (priced as o1) fails every call
        self.config = write_config(directory / "shared.yaml",
                                   {"small": [self.mock.url], "mid": [self.mock.url], "broken": [self.bad.url]},
                                   [COST, STREAM, FAIL, FIN_A, FIN_B], f"sqlite:///{directory}/ledger.db")
        self.proxy = procs.proxy(self.config)
        self.db = directory / "ledger.db"
        self._redis_proxy: tuple[Process, Process] | None = None

    def redis_proxy(self) -> tuple[Process, Process]:
        """(proxy with budgets in Redis, its slow mock: 20 tokens/s streams, 400 ms non-stream replies)."""
        if self._redis_proxy is None:
            slow = self.procs.mock("--tokens-per-s", "20", "--latency-ms", "400")
            config = write_config(self.dir / "redis.yaml", {"small": [slow.url]}, [DISC, DUP],
                                  f"sqlite:///{self.dir}/redis-ledger.db", redis=REDIS_URL)
            self._redis_proxy = (self.procs.proxy(config), slow)
        return self._redis_proxy


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    directory = tmp_path_factory.mktemp("metering-e2e")
    procs = Procs(directory)
    try:
        yield Shared(procs, directory)
    finally:
        procs.close()


def _post(proxy: Process, team: TeamSpec, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(proxy.url + "/v1/chat/completions", json=body, headers={**team.auth, **headers}, timeout=30)


def _settled(r: Any, key: str) -> dict[bytes, bytes]:
    """The budget hash once ``reserved`` is back to 0 (leases report to Redis when they close, within a second);
    on time-out its current state, for the caller's assertion to show."""
    try:
        return eventually(lambda: (h := r.hgetall(key)) and h.get(b"reserved") == b"0" and h, f"{key} settled")
    except AssertionError:
        return r.hgetall(key)


# ---- 1. exact cost, cached tokens ----------------------------------------------------------------------------------

def test_exact_cost_non_stream_and_cached_prompt(shared: Shared) -> None:
    proxy, team = shared.proxy, COST
    long_prompt = uuid.uuid4().hex + " " + LONG_PROMPT  # unique: the mock's prefix cache is cold for it

    small = _post(proxy, team, chat("What is two plus two?", max_tokens=20))
    assert small.status_code == 200, small.text
    u1 = small.json()["usage"]
    assert u1["prompt_tokens"] > 0 and u1["completion_tokens"] > 0
    expected1 = (u1["prompt_tokens"] * Decimal("0.15") + u1["completion_tokens"] * Decimal("0.60")) / 1_000_000
    assert usd(small.headers["x-tiergate-cost-usd"]) == expected1 == cost_of(u1)
    assert small.headers["x-tiergate-cost-usd"] == f"{expected1:.9f}"

    first = _post(proxy, team, chat(long_prompt, max_tokens=8))
    second = _post(proxy, team, chat(long_prompt, max_tokens=8))
    assert first.status_code == second.status_code == 200
    u2, u3 = first.json()["usage"], second.json()["usage"]
    assert u2["prompt_tokens"] >= 1500
    assert u2["prompt_tokens_details"]["cached_tokens"] == 0
    cached = u3["prompt_tokens_details"]["cached_tokens"]
    assert 1024 <= cached <= u3["prompt_tokens"], "the mock should report a prefix-cache hit on the repeat"
    expected2 = (u2["prompt_tokens"] * Decimal("0.15") + u2["completion_tokens"] * Decimal("0.60")) / 1_000_000
    expected3 = ((u3["prompt_tokens"] - cached) * Decimal("0.15") + cached * Decimal("0.075")
                 + u3["completion_tokens"] * Decimal("0.60")) / 1_000_000
    assert usd(first.headers["x-tiergate-cost-usd"]) == expected2
    assert usd(second.headers["x-tiergate-cost-usd"]) == expected3
    assert expected3 < expected2  # cached tokens really were cheaper

    tot = totals(proxy.url, team.name)
    assert tot["requests"] == 3
    assert usd(tot["cost_usd"]) == expected1 + expected2 + expected3
    assert tot["cost_usd"] == f"{expected1 + expected2 + expected3:.9f}"
    assert tot["prompt_tokens"] == u1["prompt_tokens"] + u2["prompt_tokens"] + u3["prompt_tokens"]
    assert tot["completion_tokens"] == u1["completion_tokens"] + u2["completion_tokens"] + u3["completion_tokens"]
    assert tot["cached_tokens"] == cached
    # the team's ceiling is small: the counterfactual is the tier that served, so no savings are claimed
    assert tot["counterfactual_cost_usd"] == tot["cost_usd"] and usd(tot["savings_usd"]) == 0

    rows = sqlite_records(shared.db, team.name)
    assert [r["cached_tokens"] for r in rows] == [0, 0, cached]
    assert all(r["usage_estimated"] == 0 and r["status"] == 200 for r in rows)
    assert [r["cost_nanos"] for r in rows] == [int(e * 10**9) for e in (expected1, expected2, expected3)]


# ---- 2. streams with and without include_usage ---------------------------------------------------------------------

def test_streams_metered_with_and_without_client_usage(shared: Shared) -> None:
    proxy, team, mock = shared.proxy, STREAM, shared.mock
    prompt = f"Tell me a short story about lighthouse {uuid.uuid4().hex[:6]}."

    with_usage = _post(proxy, team, chat(prompt, max_tokens=24, stream=True, stream_options={"include_usage": True}))
    assert with_usage.status_code == 200
    payloads, comments, done = parse_sse(with_usage.content)
    assert done
    usage_chunks = [p for p in payloads if p.get("usage")]
    assert len(usage_chunks) == 1 and usage_chunks[0]["choices"] == []
    usage = usage_chunks[0]["usage"]
    assert usage["completion_tokens"] > 0
    expected = cost_of(usage)
    assert usd(comments["x-tiergate-cost-usd"]) == expected
    # the cost comment comes after the last data payload and before [DONE]
    raw = with_usage.content.decode()
    assert raw.index(": x-tiergate-cost-usd=") > raw.rindex('"usage":{') and raw.rstrip().endswith("data: [DONE]")

    without = _post(proxy, team, chat(prompt, max_tokens=24, stream=True))
    assert without.status_code == 200
    payloads2, comments2, done2 = parse_sse(without.content)
    assert done2
    assert not [p for p in payloads2 if p.get("usage")], "usage chunk leaked to a client that did not ask for it"
    assert all(p["choices"] for p in payloads2), "an empty-choices chunk reached the client"
    # the proxy asked the upstream for usage anyway, and kept the client's other options
    sent = [r for r in httpx.get(mock.url + "/_mock/requests").json()["requests"]
            if r["body"]["messages"][0]["content"] == prompt]
    assert len(sent) == 2
    assert sent[1]["body"]["stream_options"] == {"include_usage": True}
    # same deterministic reply, same usage, same exact cost
    assert usd(comments2["x-tiergate-cost-usd"]) == expected
    text1 = "".join((c["delta"].get("content") or "") for p in payloads for c in p["choices"])
    text2 = "".join((c["delta"].get("content") or "") for p in payloads2 for c in p["choices"])
    assert text1 == text2 and text1

    # a stream settles after its last byte and the ledger commits in batches: wait for the writer, don't race it
    rows = eventually(lambda: (found := sqlite_records(shared.db, team.name)) and len(found) >= 2 and found,
                      "both streams' records")
    assert len(rows) == 2
    for row in rows:
        assert row["usage_estimated"] == 0, "a stream whose upstream sent usage must not be estimated"
        assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
        assert row["cost_nanos"] == int(expected * 10**9)
        assert row["status"] == 200 and row["ttft_ms"] is not None
    tot = totals(proxy.url, team.name)
    assert tot["requests"] == 2 and usd(tot["cost_usd"]) == 2 * expected


# ---- 3. client disconnect mid-stream -------------------------------------------------------------------------------

def test_client_disconnect_mid_stream_is_metered_and_releases_hold(shared: Shared) -> None:
    require_service("Redis", redis_up(REDIS_URL), REDIS_URL)
    import redis

    proxy, mock = shared.redis_proxy()
    team = DISC
    before = totals(proxy.url, team.name)
    assert before["requests"] == 0

    chunks = 0
    rid = "disc-" + uuid.uuid4().hex
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", proxy.url + "/v1/chat/completions", headers={**team.auth, "x-request-id": rid},
                           json=chat("Write a long essay about tides.", max_tokens=400, stream=True)) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    chunks += 1
                    if chunks >= 4:
                        break
    # the client is gone after ~4 chunks of a ~20 s stream

    def recorded() -> dict[str, Any] | None:
        rows = [r for r in sqlite_records(shared.dir / "redis-ledger.db", team.name) if r["request_id"] == rid]
        return rows[0] if rows else None

    row = eventually(recorded, "the disconnected stream's record")
    assert row is not None, "a disconnected stream left no usage record"
    assert row["status"] == 499
    assert row["usage_estimated"] == 1
    assert row["prompt_tokens"] > 0
    assert 0 < row["completion_tokens"] < 400, "the tokens generated so far are metered, not max_tokens"
    assert row["cost_nanos"] > 0
    expected = (row["prompt_tokens"] * Decimal("0.15") + row["completion_tokens"] * Decimal("0.60")) / 1_000_000
    assert Decimal(row["cost_nanos"]) / 10**9 == expected
    after = totals(proxy.url, team.name)
    assert after["requests"] == 1 and usd(after["cost_usd"]) == expected

    # the upstream call was cancelled, not left running to completion
    stats = eventually(lambda: (s := httpx.get(mock.url + "/_mock/stats").json()).get("streams_aborted") and s,
                       "the upstream stream aborted")
    assert stats and stats["streams_aborted"] == stats["streams_started"]

    # the reservation was released: no hold left, reserved back to 0, spent equals the settled cost
    r = redis.Redis.from_url(REDIS_URL)
    key = f"tg:budget:team:{team.name}::{today()}"
    try:
        state = _settled(r, key)
        assert state.get(b"reserved") == b"0", f"hold still open: {state}"
        assert not open_holds(state)
        assert int(state[b"spent"]) == row["cost_nanos"]
        teams = httpx.get(proxy.url + "/v1/spend/teams", headers=team.auth).json()["teams"]
        assert [t["team"] for t in teams] == [team.name]
        assert usd(teams[0]["day_usd"]) == expected and teams[0]["daily_budget_usd"] == "5"
    finally:
        r.close()
        drop_redis_state(REDIS_URL, team.name)


# ---- 4. failed upstream --------------------------------------------------------------------------------------------

def test_failed_upstream_is_recorded_at_zero_cost(shared: Shared) -> None:
    proxy, team, bad = shared.proxy, FAIL, shared.bad
    ok = _post(proxy, team, chat("hello", max_tokens=8))
    assert ok.status_code == 200
    before = totals(proxy.url, team.name)
    assert before["requests"] == 1 and usd(before["cost_usd"]) > 0

    rid = "fail-" + uuid.uuid4().hex
    resp = _post(proxy, team, chat("hello", model="broken", max_tokens=8), **{"x-request-id": rid})
    assert resp.status_code == 502, resp.text
    assert resp.json()["error"]["code"] == "upstream_error"
    assert "x-tiergate-cost-usd" not in resp.headers or usd(resp.headers["x-tiergate-cost-usd"]) == 0
    assert httpx.get(bad.url + "/_mock/stats").json()["requests"] >= 1

    after = totals(proxy.url, team.name)
    assert after["requests"] == before["requests"] + 1
    assert after["cost_usd"] == before["cost_usd"]
    assert after["prompt_tokens"] == before["prompt_tokens"]
    row = next(r for r in sqlite_records(shared.db, team.name) if r["request_id"] == rid)
    assert row["status"] == 502 and row["cost_nanos"] == 0 and row["error"]
    assert row["tier"] == "broken"


def test_reused_client_request_id_is_billed_per_request(shared: Shared) -> None:
    """Clients choose ``x-request-id``; three concurrent requests that reuse one id are three billed requests.

    The client's id must not be the identity of a ledger row (two records would collapse into one) nor of a Redis
    hold (holds would be overwritten, leak in ``reserved``, or be taken once for three requests and settled once).
    """
    require_service("Redis", redis_up(REDIS_URL), REDIS_URL)
    import redis

    proxy, _ = shared.redis_proxy()  # its mock answers after 400 ms, so the three requests overlap
    team = DUP
    rid = "dup-" + uuid.uuid4().hex
    results: list[httpx.Response] = []

    def go() -> None:
        results.append(_post(proxy, team, chat("hello there", max_tokens=8), **{"x-request-id": rid}))

    pool = [threading.Thread(target=go) for _ in range(3)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert [r.status_code for r in results] == [200, 200, 200]
    charged = sum((usd(r.headers["x-tiergate-cost-usd"]) for r in results), Decimal(0))
    r = redis.Redis.from_url(REDIS_URL)
    key = f"tg:budget:team:{team.name}::{today()}"
    try:
        state = _settled(r, key)  # budget leases report to Redis when they close, not per request
        tot = totals(proxy.url, team.name)
        assert (tot["requests"], usd(tot["cost_usd"])) == (3, charged), "served requests missing from the bill"
        assert state.get(b"reserved") == b"0" and not open_holds(state), f"reservations leaked: {state}"
        assert int(state[b"spent"]) == int(charged * 10**9), f"served requests missing from the budget: {state}"
    finally:
        r.close()
        drop_redis_state(REDIS_URL, team.name)


# ---- 9. CSV == JSON, bill == report, team scoping ------------------------------------------------------------------

def test_csv_json_bill_agree_and_team_keys_are_scoped(shared: Shared) -> None:
    proxy, config, a, b = shared.proxy, shared.config, FIN_A, FIN_B
    for team, model, n in ((a, "small", 3), (a, "mid", 2), (b, "small", 1)):
        for i in range(n):
            resp = _post(proxy, team, chat(f"question {i} for {model}", model=model, max_tokens=12,
                                           metadata={"experiment": f"exp{i % 2}"}))
            assert resp.status_code == 200, resp.text

    for group_by in ("team,model,tier,day", "tag", "team,tag,day"):
        js = report(proxy.url, ADMIN_AUTH, group_by=group_by)
        cs = report(proxy.url, ADMIN_AUTH, group_by=group_by, format="csv")
        assert js.status_code == cs.status_code == 200
        assert cs.headers["content-type"].startswith("text/csv")
        json_rows = js.json()["rows"]
        csv_rows = list(csv.DictReader(io.StringIO(cs.text)))
        assert len(json_rows) == len(csv_rows) > 0
        assert list(csv_rows[0])[-8:] == ["requests", "prompt_tokens", "completion_tokens", "cached_tokens",
                                          "reasoning_tokens", "cost_usd", "counterfactual_cost_usd", "savings_usd"]
        for j, c in zip(json_rows, csv_rows):
            assert {k: "" if v is None else str(v) for k, v in j.items()} == c  # untagged: an empty cell
        # Accept: text/csv is the same as format=csv
        accept = httpx.get(proxy.url + "/v1/spend/report", headers={**ADMIN_AUTH, "accept": "text/csv"},
                           params={"start": today(), "end": tomorrow(), "group_by": group_by})
        assert accept.text == cs.text

    mine = [r for r in report(proxy.url, ADMIN_AUTH, group_by="team,model,tier,day").json()["rows"]
            if r["team"] in (a.name, b.name)]
    assert {(r["team"], r["tier"], r["requests"]) for r in mine} == {(a.name, "small", 3), (a.name, "mid", 2),
                                                                      (b.name, "small", 1)}
    a_mid = next(r for r in mine if r["team"] == a.name and r["tier"] == "mid")
    a_small = next(r for r in mine if r["team"] == a.name and r["tier"] == "small")
    assert usd(a_mid["savings_usd"]) == 0 and usd(a_small["savings_usd"]) > 0  # mid is team a's ceiling
    assert usd(a_small["savings_usd"]) == usd(a_small["counterfactual_cost_usd"]) - usd(a_small["cost_usd"])

    # team scoping: own team only, 403 for another team, even through group_by
    own = report(proxy.url, a.auth, group_by="team")
    assert own.status_code == 200 and [r["team"] for r in own.json()["rows"]] == [a.name]
    assert own.json()["totals"]["requests"] == 5
    forbidden = report(proxy.url, a.auth, team=b.name)
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "forbidden_team"
    assert b.name not in forbidden.text
    assert report(proxy.url, a.auth, team=b.name, format="csv").status_code == 403
    teams_view = httpx.get(proxy.url + "/v1/spend/teams", headers=a.auth).json()["teams"]
    assert [t["team"] for t in teams_view] == [a.name]
    assert httpx.get(proxy.url + "/v1/spend/teams", headers=a.auth, params={"team": b.name}).status_code == 403

    # the offline bill agrees with the HTTP report for the same month, row by row (CSV and JSON)
    month = today()[:7]
    month_start = f"{month}-01"
    http_month = report(proxy.url, ADMIN_AUTH, team=a.name, start=month_start, end=tomorrow(), group_by="model,tier",
                        format="csv")
    bill = tiergate("bill", "--config", str(config), "--team", a.name, "--period", month, "--format", "csv")
    assert bill.returncode == 0, bill.stderr
    assert bill.stdout == http_month.text
    bill_json = tiergate("bill", "--config", str(config), "--team", a.name, "--period", month, "--format", "json")
    assert bill_json.returncode == 0, bill_json.stderr
    parsed = orjson.loads(bill_json.stdout)
    http_json = report(proxy.url, ADMIN_AUTH, team=a.name, start=month_start, end=tomorrow(),
                       group_by="model,tier").json()
    assert parsed["rows"] == http_json["rows"]
    assert parsed["totals"] == http_json["totals"] and parsed["totals"]["requests"] == 5


# ---- 8. kill -9 durability -----------------------------------------------------------------------------------------

@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    started = Procs(tmp_path)
    yield started
    started.close()


def _load_and_kill(proxy: Process, team: TeamSpec, block_commits: Callable[[], None], threads: int = 8,
                   before_block: int = 20, after_block: int = 16) -> tuple[set[str], int]:
    """Drive concurrent requests, SIGKILL the proxy mid-load; returns the ids of completed responses and the
    number of requests sent. Once ``before_block`` responses completed, ``block_commits`` holds a lock on the ledger
    so that the records of the ``after_block`` or more responses completed next are in the spool only: the restart
    must replay them. (Counts, not fixed sleeps: the same load on a fast or a busy machine.)"""
    completed: set[str] = set()
    sent = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def worker(n: int) -> None:
        with httpx.Client(timeout=10) as client:
            i = 0
            while not stop.is_set():
                rid = f"k9-{n}-{i}-{uuid.uuid4().hex[:8]}"
                i += 1
                with lock:
                    sent[0] += 1
                try:
                    resp = client.post(proxy.url + "/v1/chat/completions", headers={**team.auth, "x-request-id": rid},
                                       json=chat(f"durable {n} {i}", max_tokens=8))
                    body = resp.json()
                except (httpx.HTTPError, ValueError):
                    continue
                if resp.status_code == 200 and body.get("usage") and resp.headers.get("x-request-id") == rid:
                    with lock:
                        completed.add(rid)

    pool = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    for t in pool:
        t.start()
    eventually(lambda: len(completed) >= before_block, f"{before_block} completed responses", proc=proxy.proc)
    block_commits()
    at_block = len(completed)
    eventually(lambda: len(completed) >= at_block + after_block, "responses completed with commits blocked",
               proc=proxy.proc)
    os.kill(proxy.proc.pid, signal.SIGKILL)
    proxy.proc.wait()
    stop.set()
    for t in pool:
        t.join(timeout=15)
    return completed, sent[0]


def test_kill9_durability_sqlite(tmp_path: Path, shared: Shared, procs: Procs) -> None:
    team = new_team("k9s")
    db = tmp_path / "ledger.db"
    config = write_config(tmp_path / "c.yaml", {"small": [shared.mock.url]}, [team], f"sqlite:///{db}")
    proxy = procs.proxy(config, process=True)  # killed with SIGKILL below
    blocker = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        completed, sent = _load_and_kill(proxy, team, lambda: blocker.execute("BEGIN IMMEDIATE"))
    finally:
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")
        blocker.close()
    assert len(completed) >= 20, f"too little load before the kill ({len(completed)} of {sent})"
    committed = {r["request_id"] for r in sqlite_records(db, team.name)}
    assert completed - committed, "every record was committed before the kill: the spool replay went untested"

    # A new server on the same policy (spool beside the SQLite file) replays the dead process's spool before it is
    # ready; the dead process's segment locks died with it, so this one may be served in the test's process.
    restarted = procs.proxy(config)
    ids = {r["request_id"] for r in sqlite_records(db, team.name)}
    missing = completed - ids
    assert not missing, f"{len(missing)} of {len(completed)} completed responses have no record: {sorted(missing)[:5]}"
    assert len(ids) <= sent
    tot = totals(restarted.url, team.name)
    assert tot["requests"] == len(ids)  # rollups replayed with the records, nothing double counted


def test_kill9_durability_postgres(tmp_path: Path, shared: Shared, procs: Procs, pg_schema: str) -> None:
    require_service("PostgreSQL", postgres_up(POSTGRES_DSN), POSTGRES_DSN)
    import psycopg

    # The ledger in a schema of its own (dropped by the fixture), the spool in the test's directory.
    spool = tmp_path / "spool"
    team = new_team("k9p")
    config = write_config(tmp_path / "c.yaml", {"small": [shared.mock.url]}, [team], POSTGRES_DSN,
                          metering={"ledger_schema": pg_schema, "spool_dir": str(spool)})
    proxy = procs.proxy(config, process=True)  # killed with SIGKILL below
    query = f"SELECT request_id FROM {pg_schema}.records WHERE team = %s"
    with psycopg.connect(POSTGRES_DSN) as blocker:  # EXCLUSIVE blocks the proxy's INSERTs, not our SELECTs
        completed, sent = _load_and_kill(
            proxy, team, lambda: blocker.execute(f"LOCK TABLE {pg_schema}.records IN EXCLUSIVE MODE"))
        blocker.rollback()
    assert len(completed) >= 20, f"too little load before the kill ({len(completed)} of {sent})"
    with psycopg.connect(POSTGRES_DSN) as conn:
        committed = {r[0] for r in conn.execute(query, (team.name,))}
    assert completed - committed, "every record was committed before the kill: the spool replay went untested"
    assert list(spool.glob("*.spool")), "no spool left by the killed proxy"

    restarted = procs.proxy(config)  # replays the spool before it is ready (in this process: see the SQLite test)
    with psycopg.connect(POSTGRES_DSN) as conn:
        ids = {r[0] for r in conn.execute(query, (team.name,))}
    missing = completed - ids
    assert not missing, f"{len(missing)} of {len(completed)} completed have no record: {sorted(missing)[:5]}"
    assert len(ids) <= sent
    tot = totals(restarted.url, team.name)
    assert tot["requests"] == len(ids)
