"""Budgets end to end: two proxy processes racing one Redis counter, downgrade on budget, Redis outages.

Team names are unique per run: the Redis budget counters (``tg:budget:team:<team>::<day>``) outlive a test run.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

import httpx
import pytest

from tests.conftest import REDIS_URL, Process, free_port, require_service
from tests.proxy_metering_helpers import (
    ADMIN_AUTH,
    MINI_INPUT,
    MINI_OUTPUT,
    Procs,
    TeamSpec,
    Webhook,
    chat,
    cost_of,
    drop_redis_state,
    new_team,
    open_holds,
    redis_up,
    report,
    sqlite_records,
    today,
    totals,
    usd,
    write_config,
)
from tests.waiting import eventually


@pytest.fixture(scope="module")
def procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Procs]:
    started = Procs(tmp_path_factory.mktemp("budgets-e2e"))
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def mock(procs: Procs) -> Process:
    """One mock-upstream for the module; tests tell their requests apart by unique prompts."""
    return procs.mock()


def _sent(mock: Process, prompt: str) -> list[dict]:
    return [r for r in httpx.get(mock.url + "/_mock/requests").json()["requests"]
            if r["body"]["messages"][0]["content"] == prompt]


def _redis():
    import redis

    return redis.Redis.from_url(REDIS_URL)


# ---- 5. budget race across two proxy processes ---------------------------------------------------------------------

@dataclass
class Race:
    team: TeamSpec
    cap: Decimal
    reservation: Decimal
    body: dict
    proxies: list[Process]
    costs: list[Decimal]
    rejections: list[httpx.Response]
    others: list[tuple[int, str]]
    webhook: Webhook


@pytest.fixture(scope="module")
def race(procs: Procs, mock: Process) -> Iterator[Race]:
    """Two proxy processes (own SQLite ledgers, one Redis, one alert webhook), 50 clients hammering one team's
    daily cap until every client got a 429. Run once; the tests below check different consequences."""
    require_service("Redis", redis_up(REDIS_URL), REDIS_URL)
    cap = Decimal("0.001")
    max_tokens = 16
    team = new_team("race", budgets={"team": {"daily_usd": str(cap)}})
    webhook = Webhook()
    tiers = {"small": [mock.url]}
    d = procs.directory
    configs = [write_config(d / f"race-{n}.yaml", tiers, [team], f"sqlite:///{d}/race-{n}.db", redis=REDIS_URL,
                            alert_webhook=webhook.url) for n in "ab"]
    # Processes, not threads of this one: each has its own interpreter and event loop, as two deployed proxies do
    # (50 client threads in one interpreter can starve an in-process proxy's loop past its 0.5 s Redis timeout).
    # They start in parallel: start-up is the slow part.
    with ThreadPoolExecutor(max_workers=2) as starter:
        proxies = list(starter.map(lambda config: procs.proxy(config, process=True), configs))
    body = chat(f"Summarise the budget rules {uuid.uuid4().hex[:6]}.", max_tokens=max_tokens)

    # the worst case the proxy must reserve for one request, by hand: every prompt token at the input price and
    # max_tokens at the output price (the mock's prompt count is the provider's; the proxy estimates the same)
    probe = httpx.post(mock.url + "/v1/chat/completions", json={**body, "model": "gpt-4o-mini"}).json()["usage"]
    reservation = (probe["prompt_tokens"] * MINI_INPUT + max_tokens * MINI_OUTPUT).quantize(
        Decimal("0.000000001"), rounding=ROUND_CEILING)
    result = Race(team, cap, reservation, body, proxies, [], [], [], webhook)
    lock = threading.Lock()

    def client(n: int) -> None:
        proxy = proxies[n % 2]
        with httpx.Client(timeout=30) as http:
            for _ in range(200):
                resp = http.post(proxy.url + "/v1/chat/completions", json=body, headers=team.auth)
                with lock:
                    if resp.status_code == 200:
                        result.costs.append(usd(resp.headers["x-tiergate-cost-usd"]))
                    elif resp.status_code == 429:
                        result.rejections.append(resp)
                    else:
                        result.others.append((resp.status_code, resp.text[:200]))
                if resp.status_code == 429:
                    return

    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            list(pool.map(client, range(50)))
        yield result
    finally:
        webhook.close()
        drop_redis_state(REDIS_URL, team.name)


def test_budget_race_two_processes_fifty_clients(race: Race) -> None:
    cap, reservation = race.cap, race.reservation
    assert reservation > 0 and cap / reservation > 40  # the cap takes dozens of requests: a real race
    assert not race.others, race.others[:3]
    assert len(race.rejections) == 50  # every client ended on a 429
    for resp in race.rejections:
        error = resp.json()["error"]
        assert error["code"] == "budget_exceeded", error
        assert resp.headers.get("x-should-retry") == "false"
    spent = sum(race.costs, Decimal(0))
    assert len(race.costs) > 40
    assert spent <= cap + reservation, f"spent {spent} over cap {cap} + one reservation {reservation}"
    assert spent > cap - 2 * reservation, f"the cap was not used up: {spent} of {cap}"

    # both ledgers together hold exactly what the clients were told they spent
    ledger_total = Decimal(0)
    requests = 0
    for proxy in race.proxies:
        tot = totals(proxy.url, race.team.name)
        ledger_total += usd(tot["cost_usd"])
        requests += tot["requests"]
    assert ledger_total == spent
    assert requests == len(race.costs) + len(race.rejections)  # a rejected request is a record too, at zero cost
    # and the shared counter agrees to the nano-dollar, with no hold left open
    r = _redis()
    key = f"tg:budget:team:{race.team.name}::{today()}"
    try:  # budget leases report to Redis when they close (within a second)
        try:
            h = eventually(lambda: (state := r.hgetall(key)).get(b"reserved") == b"0" and state, f"{key} settled")
        except AssertionError:
            h = r.hgetall(key)  # for the assertions below to show
    finally:
        r.close()
    assert int(h[b"spent"]) == int(spent * 10**9)
    assert h[b"reserved"] == b"0" and not open_holds(h)

    # still over the cap on both processes
    for proxy in race.proxies:
        again = httpx.post(proxy.url + "/v1/chat/completions", json=race.body, headers=race.team.auth, timeout=30)
        assert again.status_code == 429 and again.json()["error"]["code"] == "budget_exceeded"


def test_budget_alerts_fire_once_per_threshold_across_processes(race: Race) -> None:
    """Each threshold settled spend crossed fires once, although two processes settled the requests, and names the
    request that crossed it (previous spend < threshold <= spend). Refusals are not a 100 % alert: each request
    reserves its worst case, so settled spend may stop just under the cap while every request is refused."""
    spent = sum(race.costs, Decimal(0))
    expected = [t for t in (50, 80, 100) if spent * 100 >= t * race.cap]
    assert expected[:2] == [50, 80], f"the race settled only ${spent} of ${race.cap}"

    def thresholds() -> list[int]:
        return sorted(a["alert"]["threshold_pct"] for a in race.webhook.received
                      if a["alert"]["team"] == race.team.name)

    try:
        eventually(lambda: thresholds() == expected, f"the alerts at {expected} %")
    except AssertionError:
        pass  # the assertion below shows what arrived
    assert thresholds() == expected, race.webhook.received
    for alert in race.webhook.received:
        body = alert["alert"]
        assert alert["text"] and body["period"] == "day" and body["limit_usd"] == f"{race.cap:.9f}"
        assert (usd(body["previous_spent_usd"]) * 100 < body["threshold_pct"] * race.cap
                <= usd(body["spent_usd"]) * 100)
        assert usd(body["spent_usd"]) - usd(body["previous_spent_usd"]) == usd(body["request_cost_usd"])


# ---- 6. downgrade on budget ----------------------------------------------------------------------------------------

def test_budget_downgrade_serves_cheapest_tier(tmp_path: Path, procs: Procs, mock: Process) -> None:
    # a mid request (gpt-4o: $2.50/M in, $10/M out) with max_tokens 16 reserves ~ $0.00018: one fits, two don't
    team = new_team("down", budgets={"team": {"daily_usd": "0.0003"}, "on_exceeded": "downgrade"})
    proxy = procs.proxy(write_config(tmp_path / "c.yaml", {"small": [mock.url], "mid": [mock.url]}, [team],
                                     f"sqlite:///{tmp_path}/ledger.db"))
    prompt = f"Explain budgets {uuid.uuid4().hex[:6]}."
    body = chat(prompt, model="mid", max_tokens=16)

    first = httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=team.auth, timeout=30)
    assert first.status_code == 200, first.text
    assert first.headers["x-tiergate-tier"] == "mid" and "x-tiergate-budget" not in first.headers
    mid_cost = usd(first.headers["x-tiergate-cost-usd"])
    assert mid_cost == cost_of(first.json()["usage"], Decimal("2.5") / 10**6, Decimal("1.25") / 10**6,
                               Decimal("10") / 10**6)

    second = httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=team.auth, timeout=30)
    assert second.status_code == 200, second.text
    assert second.headers.get("x-tiergate-budget") == "downgraded"
    assert second.headers["x-tiergate-tier"] == "small"
    assert second.headers["x-tiergate-model"] == "gpt-4o-mini"
    assert second.json()["model"].startswith("gpt-4o-mini")
    assert usd(second.headers["x-tiergate-cost-usd"]) == cost_of(second.json()["usage"])  # billed at small prices

    assert [req["body"]["model"] for req in _sent(mock, prompt)] == ["gpt-4o", "gpt-4o-mini"]

    rows = report(proxy.url, ADMIN_AUTH, team=team.name, group_by="tier").json()["rows"]
    assert {r["tier"]: r["requests"] for r in rows} == {"mid": 1, "small": 1}


# ---- 7. Redis unreachable: fail closed / fail open -----------------------------------------------------------------

CLOSED = new_team("closed", budgets={"team": {"daily_usd": "10"}, "redis_failure": "closed"})
OPENED = new_team("open", budgets={"team": {"daily_usd": "10"}, "redis_failure": "open"})
OPEN_CAPPED = new_team("openc", budgets={"team": {"daily_usd": "0.00005"}, "redis_failure": "open"})


@pytest.fixture(scope="module")
def dead_redis_proxy(procs: Procs, mock: Process) -> tuple[Process, Path]:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    db = procs.directory / "dead-redis.db"
    config = write_config(procs.directory / "dead-redis.yaml", {"small": [mock.url]}, [CLOSED, OPENED, OPEN_CAPPED],
                          f"sqlite:///{db}", redis=dead_redis)
    return procs.proxy(config), db


def test_redis_unreachable_fail_closed_and_fail_open(dead_redis_proxy: tuple[Process, Path], mock: Process) -> None:
    proxy, db = dead_redis_proxy
    prompt = f"Are budgets enforced {uuid.uuid4().hex[:6]}?"
    body = chat(prompt, max_tokens=8)

    rejected = httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=CLOSED.auth, timeout=30)
    assert rejected.status_code == 503, rejected.text
    error = rejected.json()["error"]
    assert error["code"] == "budget_store_unavailable"
    assert CLOSED.name in error["message"] and "redis_failure" in error["message"]
    assert _sent(mock, prompt) == []  # refused before any upstream call

    served = httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=OPENED.auth, timeout=30)
    assert served.status_code == 200, served.text
    cost = usd(served.headers["x-tiergate-cost-usd"])
    assert cost == cost_of(served.json()["usage"]) > 0
    rid = served.headers["x-request-id"]

    assert totals(proxy.url, OPENED.name)["requests"] == 1  # the report flushes the ledger's pending batch
    records = {r["request_id"]: r for r in sqlite_records(db, OPENED.name)}
    assert rid in records and records[rid]["cost_nanos"] == int(cost * 10**9)
    assert len(_sent(mock, prompt)) == 1


def test_fail_open_local_accounting_still_enforces_cap(dead_redis_proxy: tuple[Process, Path]) -> None:
    """With Redis down a fail-open team is accounted locally, so its cap still binds (approximately)."""
    proxy, _ = dead_redis_proxy
    body = chat(f"Spend a little {uuid.uuid4().hex[:6]}.", max_tokens=16)
    statuses = []
    for _ in range(12):
        resp = httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=OPEN_CAPPED.auth, timeout=30)
        statuses.append(resp.status_code)
        if resp.status_code == 429:
            assert resp.json()["error"]["code"] == "budget_exceeded"
            break
    assert statuses[-1] == 429, statuses
    assert 200 in statuses
    assert usd(totals(proxy.url, OPEN_CAPPED.name)["cost_usd"]) <= Decimal("0.00005")
