"""Budget race with the shapes that used to outrun their reservations (issue 11, item 2): two proxy processes
sharing one Redis and one PostgreSQL ledger, 50 clients sending ``n > 1`` chat requests and multi-prompt
completions (a list of strings, a list of token arrays) to a small tier that fails half the time and falls back to a
dearer one.

The ledger's final spend must stay within the cap plus one reservation. Budget leases are on (the default
``budget_lease_share``): a lease is itself a hold on the cap in Redis, so the bound is one reservation in total,
not one per worker.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import POSTGRES_DSN, REDIS_URL, require_service
from tests.proxy_metering_helpers import (
    NANO,
    Procs,
    chat,
    drop_redis_state,
    new_team,
    postgres_up,
    redis_up,
    usd,
    write_config,
)

# gpt-4o in litellm's table, $ per token: the dearer tier every request may fall back to.
MILLION = Decimal(1_000_000)
MID_INPUT = Decimal("2.50") / MILLION
MID_OUTPUT = Decimal("10.00") / MILLION
CAP = Decimal("0.25")
CLIENTS = 50


@dataclass
class Tally:
    costs: list[Decimal] = field(default_factory=list)
    rejections: list[httpx.Response] = field(default_factory=list)
    others: list[tuple[int, str]] = field(default_factory=list)
    fallbacks: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def shapes() -> list[tuple[str, dict[str, Any]]]:
    tag = uuid.uuid4().hex[:6]
    texts = [f"Write a limerick about caps {tag}.", f"List three ledger facts {tag}.", f"Define a lease {tag}."]
    token_arrays = [list(range(100, 180)), list(range(2000, 2120))]
    return [
        ("/v1/chat/completions", chat(f"Describe the budget rules in detail {tag}.", n=8, max_tokens=48)),
        ("/v1/completions", {"model": "small", "prompt": texts, "n": 3, "max_tokens": 32}),
        ("/v1/completions", {"model": "small", "prompt": token_arrays, "n": 4, "max_tokens": 40}),
    ]


def worst_case(mid_url: str, path: str, body: dict[str, Any]) -> Decimal:
    """By hand: the provider's prompt count (asked of the healthy mock) at gpt-4o's input price, and every
    completion (``n`` per prompt) at ``max_tokens`` at its output price, rounded up to the nano-dollar."""
    usage = httpx.post(mid_url + path, json={**body, "model": "gpt-4o"}, timeout=30).json()["usage"]
    prompts = len(body["prompt"]) if "prompt" in body else 1
    completions = prompts * body["n"] * body["max_tokens"]
    return (usage["prompt_tokens"] * MID_INPUT + completions * MID_OUTPUT).quantize(NANO, rounding=ROUND_CEILING)


def ledger_rows(schema: str, team: str) -> list[tuple[str, int, int]]:
    import psycopg

    with psycopg.connect(POSTGRES_DSN) as conn:
        return list(conn.execute(f"SELECT deployment, status, cost_nanos FROM {schema}.records WHERE team = %s",
                                 (team,)))


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    started = Procs(tmp_path)
    try:
        yield started
    finally:
        started.close()


def test_spend_stays_within_one_reservation_of_the_cap(procs: Procs, tmp_path: Path) -> None:
    require_service("Redis", redis_up(REDIS_URL), REDIS_URL)
    require_service("PostgreSQL", postgres_up(POSTGRES_DSN), POSTGRES_DSN)
    team = new_team("racewc", budgets={"team": {"daily_usd": str(CAP)}})
    schema = "race_" + uuid.uuid4().hex[:12]
    with ThreadPoolExecutor(max_workers=2) as starter:  # started in parallel: start-up is the slow part
        flaky, mid = starter.map(lambda flags: procs.mock(*flags),
                                 [("--fail-rate", "0.5", "--fail-kind", "500", "--fail-seed", "11"), ()])
        configs = []
        for name in "ab":
            path = write_config(tmp_path / f"race-{name}.yaml", {"small": [flaky.url], "mid": [mid.url]}, [team],
                                POSTGRES_DSN, redis=REDIS_URL, server={"cooldown_after_failures": 1000})
            config = yaml.safe_load(path.read_text())
            config["metering"].update(ledger_schema=schema, spool_dir=str(tmp_path / f"spool-{name}"))
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            configs.append(path)
        # Proxy processes, not threads of this one: each has its own interpreter and event loop, as two deployed
        # proxies do (50 client threads in one interpreter can starve an in-process proxy's loop past its 0.5 s Redis
        # timeout, and a fail-closed budget then answers 503).
        proxies = list(starter.map(lambda config: procs.proxy(config, process=True), configs))
    work = shapes()
    reservation = max(worst_case(mid.url, path, body) for path, body in work)
    assert CAP / reservation > 50  # the cap takes many requests of each shape: a real race
    tally = Tally()

    def client(n: int) -> None:
        proxy = proxies[n % 2]
        with httpx.Client(timeout=30) as http:
            for i in range(400):
                path, body = work[(n + i) % len(work)]
                resp = http.post(proxy.url + path, json=body, headers=team.auth)
                with tally.lock:
                    if resp.status_code == 200:
                        tally.costs.append(usd(resp.headers["x-tiergate-cost-usd"]))
                        tally.fallbacks += int(resp.headers.get("x-tiergate-attempts", "1")) > 1
                    elif resp.status_code == 429:
                        tally.rejections.append(resp)
                    else:
                        tally.others.append((resp.status_code, resp.text[:200]))
                if resp.status_code != 200:
                    return

    try:
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            list(pool.map(client, range(CLIENTS)))
        for proxy in proxies:
            proxy.stop()  # graceful: every settled record is committed before the process exits
        rows = ledger_rows(schema, team.name)
    finally:
        drop_schema(schema)
        drop_redis_state(REDIS_URL, team.name)

    assert not tally.others, tally.others[:3]
    assert len(tally.rejections) == CLIENTS  # every client ran into the cap
    assert all(r.json()["error"]["code"] == "budget_exceeded" for r in tally.rejections)
    assert tally.fallbacks > 10  # the flaky small tier really sent requests to the dearer one
    spent = sum((Decimal(cost) for _, status, cost in rows if status == 200), Decimal(0)) * NANO
    assert spent == sum(tally.costs, Decimal(0))  # the ledger holds exactly what the clients were told
    assert len(rows) == len(tally.costs) + len(tally.rejections)
    assert {d for d, status, _ in rows if status == 200} == {"small-0", "mid-0"}
    overshoot = spent - CAP
    print(f"\nbudget race: {len(tally.costs)} served ({tally.fallbacks} after a fallback), spent ${spent} of "
          f"${CAP}, overshoot ${max(overshoot, Decimal(0))} = {overshoot / reservation:.2f} reservations "
          f"(one = ${reservation})")
    assert spent <= CAP + reservation, f"spent {spent} over cap {CAP} + one reservation {reservation}"
    assert spent > CAP / 2, f"the cap was not approached: {spent} of {CAP}"
