"""Budget leases against a real Redis: one shared-store hold serves many requests, the cap still binds across
workers, idle leases give their slice back, and alerting sees every close."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from typing import Any

import redis as redis_sync

from metering.budgets.base import BudgetExceeded, Cap, CapState
from metering.budgets.leases import LeasedBudgetStore
from metering.budgets.redis_store import RedisBudgetStore
from tests.metering_fixtures import REDIS_URL, redis_prefix  # noqa: F401  (fixture)

DAY = datetime.now(UTC).date()


def _cap(limit: int) -> Cap:
    return Cap("team", "lease-team", "", "day", DAY, limit)


def _counter(prefix: str, cap: Cap) -> dict[bytes, bytes]:
    return redis_sync.Redis.from_url(REDIS_URL).hgetall(f"{prefix}:budget:{cap.counter_id}")


def test_many_requests_one_redis_hold_then_settled_on_close(redis_prefix: str) -> None:
    cap = _cap(1_000_000)  # a 2% lease is 20,000

    async def go() -> tuple[dict, dict]:
        store = LeasedBudgetStore(RedisBudgetStore.from_url(REDIS_URL, prefix=redis_prefix), max_age_s=60)
        for i in range(50):
            hold = await store.reserve(f"r{i}", [cap], 300, ttl_s=60)
            assert await store.settle(hold, 100) == []
        during = _counter(redis_prefix, cap)
        await store.close()
        return during, _counter(redis_prefix, cap)

    during, after = asyncio.run(go())
    # while the lease is open Redis holds its slice, not 50 separate reservations, and no spend yet
    assert int(during[b"reserved"]) == 20_000 and int(during.get(b"spent", 0)) == 0
    assert int(after[b"reserved"]) == 0 and int(after[b"spent"]) == 50 * 100


def test_a_lease_shrinks_to_the_request_near_the_cap(redis_prefix: str) -> None:
    cap = _cap(1_000)  # 2% = 20 < one request's 300: every lease is exactly one reservation

    async def go() -> None:
        store = LeasedBudgetStore(RedisBudgetStore.from_url(REDIS_URL, prefix=redis_prefix), max_age_s=60)
        holds = [await store.reserve(f"r{i}", [cap], 300, ttl_s=60) for i in range(3)]
        try:
            await store.reserve("r3", [cap], 300, ttl_s=60)
        except BudgetExceeded as exc:
            assert exc.cap == cap and exc.reserved_nanos == 900
        else:
            raise AssertionError("a fourth 300 on a 1,000 cap was accepted")
        for hold in holds:
            await store.settle(hold, 250)
        await store.close()

    asyncio.run(go())
    counter = _counter(redis_prefix, cap)
    assert int(counter[b"spent"]) == 750 and int(counter[b"reserved"]) == 0


def test_two_workers_never_pass_the_cap_by_more_than_one_reservation(redis_prefix: str) -> None:
    limit, amount = 200_000, 3_000  # leases of 4,000: a few requests each

    async def worker(name: str, store: LeasedBudgetStore, rng: random.Random, spent: list[int]) -> None:
        n = 0
        while True:
            try:
                hold = await store.reserve(f"{name}-{n}", [_cap(limit)], amount, ttl_s=60)
            except BudgetExceeded:
                return
            n += 1
            await asyncio.sleep(rng.random() / 1000)
            actual = rng.randint(amount // 2, amount)
            spent.append(actual)
            await store.settle(hold, actual)

    async def go() -> list[int]:
        stores = [LeasedBudgetStore(RedisBudgetStore.from_url(REDIS_URL, prefix=redis_prefix), max_age_s=0.05)
                  for _ in range(2)]
        spent: list[int] = []
        await asyncio.gather(*(worker(f"w{i}", stores[i % 2], random.Random(i), spent) for i in range(20)))
        for store in stores:
            await store.close()
        return spent

    spent = asyncio.run(go())
    counter = _counter(redis_prefix, _cap(limit))
    assert int(counter[b"spent"]) == sum(spent)  # every settled request reached the shared counter
    assert int(counter[b"reserved"]) == 0
    assert sum(spent) <= limit + amount
    assert sum(spent) >= limit - 4 * amount  # and the cap was used, not starved by idle leases


def test_idle_lease_is_returned_and_alerting_sees_the_close(redis_prefix: str) -> None:
    cap = _cap(1_000_000)
    seen: list[list[CapState]] = []
    settled: list[list[tuple[str, int]]] = []

    async def go() -> dict[Any, Any]:
        store = LeasedBudgetStore(RedisBudgetStore.from_url(REDIS_URL, prefix=redis_prefix), max_age_s=0.2)
        store.observe = lambda states, holds: (seen.append(states), settled.append(holds))
        hold = await store.reserve("r", [cap], 500, ttl_s=60)
        await store.settle(hold, 400)
        await asyncio.sleep(0.6)  # no further calls: the timer retires the idle lease
        counter = _counter(redis_prefix, cap)
        await store.close()
        return counter

    counter = asyncio.run(go())
    assert int(counter[b"reserved"]) == 0 and int(counter[b"spent"]) == 400
    assert [[(s.cap, s.spent_nanos) for s in states] for states in seen] == [[(cap, 400)]]
    assert settled == [[("r", 400)]]  # what the close added, by hold, for the alerter to find the crossing request


def test_heartbeat_renews_a_lease_in_use_and_retires_one_whose_hold_is_gone(redis_prefix: str) -> None:
    """A lease's hold has a short TTL (what a killed worker holds back), so a heartbeat renews it while a long
    request keeps the (retired) lease open; a heartbeat that finds the hold gone (Redis restarted) retires the
    lease, so the next request takes a new one that guards the cap again."""
    cap = _cap(1_000_000)
    key = f"{redis_prefix}:budget:{cap.counter_id}"

    def holds() -> list[bytes]:
        return sorted(k for k in _counter(redis_prefix, cap) if k.startswith(b"r:"))

    async def go() -> None:
        store = LeasedBudgetStore(RedisBudgetStore.from_url(REDIS_URL, prefix=redis_prefix), max_age_s=0.05,
                                  lease_ttl_s=1.0)
        stream = await store.reserve("stream", [cap], 500, ttl_s=60)
        await asyncio.sleep(2.5)  # 2.5 TTLs: retired by age, kept open by its stream
        probe = RedisBudgetStore.from_url(REDIS_URL, prefix=redis_prefix)
        await probe.reserve("probe", [cap], 1, ttl_s=60)  # drops every expired hold
        assert len(holds()) == 2  # the lease's hold is still there
        await store.settle(stream, 400)
        await probe.close()
        await store.close()
        assert holds() == [b"r:probe"] and int(_counter(redis_prefix, cap)[b"spent"]) == 400

        store = LeasedBudgetStore(RedisBudgetStore.from_url(REDIS_URL, prefix=redis_prefix), max_age_s=60,
                                  lease_ttl_s=1.0)
        await store.settle(await store.reserve("a", [cap], 500, ttl_s=60), 100)
        redis_sync.Redis.from_url(REDIS_URL).delete(key, key + ":holds", key + ":settled")  # as a restart does
        await asyncio.sleep(1.0)  # a heartbeat finds the hold gone
        await store.reserve("b", [cap], 500, ttl_s=60)
        assert len(holds()) == 1  # a new lease: without the retirement "b" came from the vanished one
        await store.close()

    asyncio.run(go())
