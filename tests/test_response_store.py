"""The Responses API conversation store (kvcache.responses) on its three real backends (a private redis-server,
a SQLite file, PostgreSQL in a private schema), and GET/DELETE /v1/responses/{id} and .../input_items through a
real proxy (one per backend, served in the test process) with the openai SDK.

Expiry is driven by an injected clock (30 days pass in no time); one Redis test also waits out a real TTL, since
Redis expires keys by its own clock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import ValidationError

from kvcache.responses import (
    MAX_HISTORY_BYTES,
    MAX_STORED_BYTES,
    HistoryTooLarge,
    ResponseStore,
    ResponseStoreUnavailable,
    StoredResponse,
    check_history,
    open_response_store,
)
from kvcache.responses_redis import RedisResponseStore
from kvcache.responses_sql import SWEEP_BATCH, PostgresResponseStore, SqliteResponseStore
from router.config import Team
from tests.conftest import DEMO_KEYS, demo_config, start_server
from tests.metering_fixtures import (  # noqa: F401  (pg_schema, redis_server: fixtures)
    PG_URL,
    RedisServer,
    free_port,
    pg_schema,
    private_redis,
    redis_server,
    unique,
)
from tests.waiting import eventually

DAY_S = 86_400


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def response_item(response_id: str = "resp_1", team: str = "alpha", turns: int = 1,
                  text: str = "hello") -> StoredResponse:
    """A stored response whose history is ``turns`` user/assistant exchanges; the last assistant message is the
    response's output."""
    items: list[dict[str, Any]] = []
    output: list[dict[str, Any]] = []
    for n in range(turns):
        items.append({"type": "message", "role": "user", "id": f"msg_in{n}",
                      "content": [{"type": "input_text", "text": f"{text} {n}"}]})
        output = [{"type": "message", "role": "assistant", "id": f"msg_out{n}", "status": "completed",
                   "content": [{"type": "output_text", "text": f"answer {n}", "annotations": []}]}]
        items += output
    response = {"id": response_id, "object": "response", "created_at": 1_800_000_000, "status": "completed",
                "model": "gpt-4o-mini", "output": output, "parallel_tool_calls": True, "tool_choice": "auto",
                "tools": [], "usage": {"input_tokens": 12, "output_tokens": 3, "total_tokens": 15,
                                       "input_tokens_details": {"cached_tokens": 0},
                                       "output_tokens_details": {"reasoning_tokens": 0}}}
    return StoredResponse(id=response_id, team=team, created_at=1_800_000_000, items=items, response=response,
                          tier="small", deployment="small-0")


@dataclass
class Backend:
    name: str
    open: Callable[[Clock], Awaitable[ResponseStore]]
    rows: Callable[[], int] | None  # rows in the responses table (SQL backends)


# One private redis-server for the module's tests that do not stop it; each test keeps to its own keys.
module_redis = pytest.fixture(private_redis, scope="module", name="module_redis")


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "ledger.db"

        async def open_sqlite(clock: Clock) -> ResponseStore:
            store = SqliteResponseStore(path, clock)
            await store.open()
            return store

        def sqlite_rows() -> int:
            with sqlite3.connect(path) as conn:
                return int(conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

        return Backend("sqlite", open_sqlite, sqlite_rows)
    if request.param == "postgres":
        schema = request.getfixturevalue("pg_schema")

        async def open_pg(clock: Clock) -> ResponseStore:
            store = PostgresResponseStore(PG_URL, schema, clock)
            await store.open()
            return store

        def pg_rows() -> int:
            import psycopg

            with psycopg.connect(PG_URL, options=f"-c search_path={schema}") as conn:
                return int(conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

        return Backend("postgres", open_pg, pg_rows)
    server: RedisServer = request.getfixturevalue("module_redis")
    prefix = unique("tgresp") + ":"

    async def open_redis_store(clock: Clock) -> ResponseStore:
        return RedisResponseStore(server.url, prefix=prefix, clock=clock)

    return Backend("redis", open_redis_store, None)


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(fn())


def test_put_then_get_from_another_instance(backend: Backend) -> None:
    """What one replica stores, another reads at once: the same record, field for field."""
    async def scenario() -> None:
        clock = Clock()
        writer, reader = await backend.open(clock), await backend.open(clock)
        try:
            item = response_item(turns=3)
            await writer.put(item, 30 * DAY_S)
            got = await reader.get("resp_1", "alpha")
            assert got == item
            assert got is not None and got.input_items == item.items[:-1]  # the history without its output
            assert await reader.get("resp_unknown", "alpha") is None
        finally:
            await writer.close()
            await reader.close()

    run(scenario)


def test_a_team_reads_and_deletes_only_its_own(backend: Backend) -> None:
    async def scenario() -> None:
        store = await backend.open(Clock())
        try:
            item = response_item(team="alpha")
            await store.put(item, DAY_S)
            assert await store.get("resp_1", "beta") is None
            assert await store.delete("resp_1", "beta") is False
            try:  # another team storing under the same id must not replace the owner's record
                await store.put(response_item(team="beta", text="intruder"), DAY_S)
            except ValueError:
                pass
            assert await store.get("resp_1", "alpha") == item
        finally:
            await store.close()

    run(scenario)


def test_delete_removes_it_once(backend: Backend) -> None:
    async def scenario() -> None:
        store = await backend.open(Clock())
        try:
            await store.put(response_item(), DAY_S)
            await store.put(response_item("resp_2"), DAY_S)
            assert await store.delete("resp_1", "alpha") is True
            assert await store.get("resp_1", "alpha") is None
            assert await store.delete("resp_1", "alpha") is False
            assert await store.get("resp_2", "alpha") is not None  # only the one asked for
        finally:
            await store.close()
        if backend.rows is not None:
            assert backend.rows() == 1

    run(scenario)


def test_put_replaces_the_same_teams_record(backend: Backend) -> None:
    async def scenario() -> None:
        store = await backend.open(Clock())
        try:
            await store.put(response_item(turns=1), DAY_S)
            await store.put(response_item(turns=2), DAY_S)
            got = await store.get("resp_1", "alpha")
            assert got is not None and len(got.items) == 4
        finally:
            await store.close()

    run(scenario)


def test_entries_expire_after_their_ttl(backend: Backend) -> None:
    """A 30-day entry is there a second before its expiry and gone after it, for get and delete alike; SQL rows
    are deleted by the read that finds them expired."""
    async def scenario() -> None:
        clock = Clock()
        store = await backend.open(clock)
        try:
            await store.put(response_item("resp_a"), 30 * DAY_S)
            await store.put(response_item("resp_b"), 30 * DAY_S)
            await store.put(response_item("resp_long"), 60 * DAY_S)
            clock.now += 30 * DAY_S - 1
            assert await store.get("resp_a", "alpha") is not None
            clock.now += 2
            assert await store.get("resp_a", "alpha") is None
            assert await store.delete("resp_b", "alpha") is False
            assert await store.get("resp_long", "alpha") is not None
        finally:
            await store.close()
        if backend.rows is not None:
            assert backend.rows() == 2  # resp_a dropped by its read; resp_b waits for the sweep

    run(scenario)


def test_redis_expires_the_key_itself(module_redis: RedisServer) -> None:
    """The TTL reaches Redis (PX), so nothing lingers in its memory once a conversation expires (by Redis's own
    clock: waited for, ~0.3 s)."""
    import redis

    prefix = unique("tgresp") + ":"

    async def scenario() -> None:
        store = RedisResponseStore(module_redis.url, prefix=prefix)
        try:
            await store.put(response_item(), 0.3)
            assert await store.get("resp_1", "alpha") is not None
        finally:
            await store.close()

    run(scenario)
    client = redis.Redis.from_url(module_redis.url)
    try:
        eventually(lambda: list(client.scan_iter(match=prefix + "*")) == [], "Redis expiring the stored keys")
    finally:
        client.close()


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_sweep_deletes_expired_rows_in_batches(dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    clock = Clock()

    async def scenario() -> None:
        store: SqliteResponseStore | PostgresResponseStore
        if dialect == "sqlite":
            store = SqliteResponseStore(tmp_path / "ledger.db", clock)
        else:
            store = PostgresResponseStore(PG_URL, request.getfixturevalue("pg_schema"), clock)
        await store.open()
        try:
            small = response_item()
            # more than one batch, stored concurrently (PostgreSQL: over the store's pool)
            await asyncio.gather(*(store.put(StoredResponse(f"resp_old{n}", "alpha", 1, [], {"output": []}), DAY_S)
                                   for n in range(SWEEP_BATCH + 5)))
            await store.put(small, 3 * DAY_S)
            assert await store.sweep() == 0
            clock.now += 2 * DAY_S
            assert await store.sweep() == SWEEP_BATCH + 5
            assert await store.get("resp_1", "alpha") == small
            assert await store.sweep() == 0
        finally:
            await store.close()

    run(scenario)


def test_history_past_the_cap_is_refused_not_truncated(backend: Backend) -> None:
    big_text = "x" * (MAX_STORED_BYTES + 1)

    async def scenario() -> None:
        store = await backend.open(Clock())
        try:
            too_big = StoredResponse("resp_big", "alpha", 1, [{"role": "user", "content": big_text}], {"output": []})
            with pytest.raises(HistoryTooLarge) as refused:
                await store.put(too_big, DAY_S)
            assert refused.value.cap == MAX_STORED_BYTES and refused.value.size > MAX_STORED_BYTES
            assert await store.get("resp_big", "alpha") is None
        finally:
            await store.close()

    run(scenario)
    assert check_history([{"role": "user", "content": "x" * 1000}]) > 1000
    with pytest.raises(HistoryTooLarge, match="exceeds the store's limit"):
        check_history([{"role": "user", "content": "x" * MAX_HISTORY_BYTES}])


def test_an_unreachable_backend_raises_unavailable(tmp_path: Path) -> None:
    """Not a silent miss: a conversation that cannot be read must not continue as if it had no history."""
    async def scenario() -> None:
        store = RedisResponseStore(f"redis://127.0.0.1:{free_port()}/0")
        try:
            with pytest.raises(ResponseStoreUnavailable):
                await store.get("resp_1", "alpha")
            with pytest.raises(ResponseStoreUnavailable):
                await store.put(response_item(), DAY_S)
        finally:
            await store.close()

    run(scenario)


def test_team_ttl_setting() -> None:
    key = {"id": "k", "sha256": "0" * 64}
    assert Team.model_validate({"keys": [key]}).responses.store_ttl_s == 30 * DAY_S
    assert Team.model_validate({"keys": [key], "responses": {"store_ttl_days": 7}}).responses.store_ttl_s == 7 * DAY_S
    for bad in (0, -1):
        with pytest.raises(ValidationError, match="store_ttl_days"):
            Team.model_validate({"keys": [key], "responses": {"store_ttl_days": bad}})


# --- HTTP: a real proxy; the store is seeded through the interface (as POST /v1/responses stores). ---

@pytest.fixture(scope="module", params=["sqlite", "redis"])
def proxy_and_store(request: pytest.FixtureRequest,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Callable]]:
    """(the proxy, ``seed(item)`` storing an item in the very store the proxy reads): one per backend for the
    module, since every test seeds and creates responses of its own ids."""
    tmp_path = tmp_path_factory.mktemp(f"responses-{request.param}")
    config = demo_config(tmp_path)
    redis_url = None
    if request.param == "redis":
        redis_url = request.getfixturevalue("module_redis").url
        config.write_text(config.read_text().replace("  redis: null", f"  redis: {redis_url}"))
    port = free_port()
    proxy = start_server(["serve", "--config", str(config), "--port", str(port)], port, tmp_path / "proxy.log",
                         "/readyz")
    ledger_url = f"sqlite:///{tmp_path}/ledger.db"

    def seed(*items: StoredResponse) -> None:
        async def put() -> None:
            store = await open_response_store(ledger_url, redis_url)
            try:
                for item in items:
                    await store.put(item, DAY_S)
            finally:
                await store.close()

        run(put)

    yield proxy, seed
    proxy.stop()


def client(proxy: Any, team: str = "research") -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=DEMO_KEYS[team], max_retries=0)


def test_sdk_retrieve_delete_and_input_items(proxy_and_store: tuple[Any, Callable]) -> None:
    proxy, seed = proxy_and_store
    item = response_item("resp_http1", team="research", turns=3)
    seed(item)
    research = client(proxy)

    got = research.responses.retrieve("resp_http1")
    assert got.id == "resp_http1" and got.output_text == "answer 2"
    assert got.usage is not None and got.usage.input_tokens == 12

    listed = research.responses.input_items.list("resp_http1", order="asc")
    assert [i.id for i in listed.data] == ["msg_in0", "msg_out0", "msg_in1", "msg_out1", "msg_in2"]
    assert (listed.first_id, listed.last_id, listed.has_more) == ("msg_in0", "msg_in2", False)
    assert listed.data[0].content[0].text == "hello 0"  # type: ignore[union-attr]

    newest = research.responses.input_items.list("resp_http1", limit=2)  # default order: desc
    assert [i.id for i in newest.data] == ["msg_in2", "msg_out1"] and newest.has_more is True
    # The SDK's auto-pagination follows last_id as ``after`` to the end.
    assert [i.id for i in research.responses.input_items.list("resp_http1", limit=2)] == \
        ["msg_in2", "msg_out1", "msg_in1", "msg_out0", "msg_in0"]

    assert research.responses.delete("resp_http1") is None  # the SDK returns nothing for a delete
    with pytest.raises(openai.NotFoundError):
        research.responses.retrieve("resp_http1")
    with pytest.raises(openai.NotFoundError):
        research.responses.delete("resp_http1")
    assert "hello 0" not in proxy.output() and "answer 0" not in proxy.output()  # no conversation text in logs


def test_another_teams_response_is_not_found(proxy_and_store: tuple[Any, Callable]) -> None:
    proxy, seed = proxy_and_store
    seed(response_item("resp_owned", team="research"))
    support = client(proxy, "support")
    for call in (lambda: support.responses.retrieve("resp_owned"), lambda: support.responses.delete("resp_owned"),
                 lambda: support.responses.input_items.list("resp_owned")):
        with pytest.raises(openai.NotFoundError) as missing:
            call()
        assert missing.value.body["code"] == "not_found"  # type: ignore[index]
        assert "resp_owned" in missing.value.body["message"]  # type: ignore[index]
    # Same answer as an id nobody has, and the owner still has it.
    with pytest.raises(openai.NotFoundError):
        support.responses.retrieve("resp_nobody")
    assert client(proxy).responses.retrieve("resp_owned").id == "resp_owned"


def test_http_shapes_and_bad_queries(proxy_and_store: tuple[Any, Callable]) -> None:
    """The raw wire: the delete body OpenAI answers, items stored in short form listed in full form, and bad
    paging parameters as 400s in OpenAI's error shape; an admin key holds no responses."""
    proxy, seed = proxy_and_store
    short = StoredResponse("resp_short", "research", 1,
                           [{"role": "user", "content": "hi"}, {"type": "message", "role": "assistant", "id": "msg_a",
                                                                 "content": [{"type": "output_text", "text": "yo"}]}],
                           {"id": "resp_short", "object": "response", "output": [{"type": "message", "id": "msg_a"}]})
    seed(short)
    auth = {"authorization": f"Bearer {DEMO_KEYS['research']}"}
    with httpx.Client(base_url=proxy.url, headers=auth, timeout=10) as http:
        listed = http.get("/v1/responses/resp_short/input_items").json()
        assert listed["object"] == "list" and len(listed["data"]) == 1
        first = listed["data"][0]
        assert first["type"] == "message" and first["role"] == "user" and first["id"].startswith("msg_")
        assert first["content"] == [{"type": "input_text", "text": "hi"}]
        again = http.get("/v1/responses/resp_short/input_items").json()
        assert again["data"][0]["id"] == first["id"]  # a derived id is stable, so it works as a cursor

        for query, param in (("limit=0", "limit"), ("limit=101", "limit"), ("limit=x", "limit"),
                             ("order=up", "order"), ("after=msg_nope", "after")):
            bad = http.get(f"/v1/responses/resp_short/input_items?{query}")
            assert bad.status_code == 400, query
            assert bad.json()["error"]["param"] == param and bad.json()["error"]["type"] == "invalid_request_error"
        assert http.get("/v1/responses/resp_short?stream=true").status_code == 400

        admin = http.get("/v1/responses/resp_short", headers={"authorization": f"Bearer {DEMO_KEYS['admin']}"})
        assert admin.status_code == 403 and admin.json()["error"]["code"] == "team_key_required"
        assert http.get("/v1/responses/resp_short", headers={"authorization": "Bearer sk-wrong"}).status_code == 401

        deleted = http.delete("/v1/responses/resp_short")
        assert deleted.status_code == 200
        assert deleted.json() == {"id": "resp_short", "object": "response", "deleted": True}
        gone = http.get("/v1/responses/resp_short")
        assert gone.status_code == 404 and gone.json()["error"]["type"] == "invalid_request_error"


def test_store_outage_is_a_503_not_a_500(tmp_path: Path, start_proxy: Any, redis_server: RedisServer) -> None:
    config = demo_config(tmp_path)
    config.write_text(config.read_text().replace("  redis: null", f"  redis: {redis_server.url}"))
    proxy = start_proxy(config)
    redis_server.stop()
    started = time.monotonic()
    answer = httpx.get(proxy.url + "/v1/responses/resp_x", timeout=10,
                       headers={"authorization": f"Bearer {DEMO_KEYS['research']}"})
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "response_store_unavailable"
    assert time.monotonic() - started < 5


def test_created_responses_are_retrievable_listable_and_deletable(proxy_and_store: tuple[Any, Callable]) -> None:
    """With POST /v1/responses: what create answered is what retrieve returns; input_items of a second turn is the
    whole conversation before its output; a deleted response can no longer be continued, while a later turn that
    already holds its history can."""
    proxy, _ = proxy_and_store
    research = client(proxy)
    first = research.responses.create(model="auto", input="Name a prime number.")
    second = research.responses.create(model="auto", input="And another one?", previous_response_id=first.id)

    got = research.responses.retrieve(second.id)
    assert got.id == second.id and got.output_text == second.output_text and got.output_text
    assert got.usage is not None and second.usage is not None
    assert got.usage.input_tokens == second.usage.input_tokens

    items = research.responses.input_items.list(second.id, order="asc").data
    assert [(i.type, getattr(i, "role", None)) for i in items] == [("message", "user"), ("message", "assistant"),
                                                                   ("message", "user")]
    assert items[0].content[0].text == "Name a prime number."  # type: ignore[union-attr]
    assert items[1].id == first.output[0].id  # the first answer's own output item, by its id
    assert len({i.id for i in items}) == 3

    research.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        research.responses.create(model="auto", input="More?", previous_response_id=first.id)
    third = research.responses.create(model="auto", input="One more?", previous_response_id=second.id)
    assert len(research.responses.input_items.list(third.id).data) == 5
    assert "prime number" not in proxy.output()
