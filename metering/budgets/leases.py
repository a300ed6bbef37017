"""Budget leases: a worker reserves a slice of a team's caps in the shared store once, then serves many requests'
reservations from that slice locally, so the request path rarely waits on Redis.

Why the cap still holds: a lease is itself a hold on every cap (taken atomically in the shared store), and a
request reserves only what its lease has left, so the shared totals (spent + reserved, leases included) pass a
cap by at most one request's reservation, as without leases. Near a cap the slice shrinks to the request's own
worst case, which is exactly the unleased behaviour. A lease closes (its hold settled to what its requests
spent, with when their records were written) when it runs out, when it is ``max_age_s`` old, or at shutdown.

A crash: the lease's hold has a short TTL (``lease_ttl_s``) that a heartbeat renews while the lease is open (a
retired lease stays open until its last stream ends), so a killed worker's lease stops holding budget back within
that TTL. Its requests' spend never reaches Redis, but their records are in the ledger (the spool survives
``kill -9``): the hold's expiry marks the counter stale and the next reservation re-seeds it from the ledger (see
``redis_store``). A heartbeat that finds the hold gone (Redis restarted) retires the lease: it guards nothing.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from metering.budgets.base import (
    BudgetExceeded,
    BudgetStore,
    BudgetStoreUnavailable,
    Cap,
    CapState,
    Hold,
    Spend,
    SpendLog,
    as_spend,
)

LeaseKey = tuple[tuple[str, int], ...]


@dataclass(eq=False)
class _Lease:
    key: LeaseKey
    hold: Hold
    opened: float
    extended: float  # when the hold's TTL was last renewed
    reserved: int = 0  # live reservations of requests served from this lease
    spend: SpendLog = field(default_factory=SpendLog)  # what settled requests actually cost, and when written
    settled: list[tuple[str, int]] = field(default_factory=list)  # (hold id, nanos) in settle order, for alerts
    inflight: int = 0
    retired: bool = False  # takes no new reservations; closes when the last one settles

    @property
    def available(self) -> int:
        return self.hold.amount - self.reserved - self.spend.nanos


class LeasedBudgetStore(BudgetStore):
    def __init__(self, inner: BudgetStore, share: float = 0.02, max_age_s: float = 1.0, lease_ttl_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``share``: a lease asks for this fraction of the smallest cap it covers (never less than the request).
        ``lease_ttl_s``: how long a crashed worker's lease keeps holding budget back; renewed every third of it.

        The shared totals change when a lease closes, not when a request settles, so alerting subscribes to
        ``observe`` (called with the caps' states after every close, and the (hold id, nanos) the close added, in
        the order its requests settled) instead of reading ``settle``'s result.
        """
        self.inner = inner
        self.observe: Callable[[list[CapState], list[tuple[str, int]]], None] | None = None
        self._share = share
        self._max_age_s = max_age_s
        self._clock = clock
        self._leases: dict[LeaseKey, _Lease] = {}
        self._by_hold: dict[str, _Lease] = {}
        self._locks: dict[LeaseKey, asyncio.Lock] = {}
        self._closing: set[asyncio.Task[list[CapState]]] = set()
        self._lease_ttl_s = lease_ttl_s
        self._unclosed: dict[str, _Lease] = {}  # hold id -> every lease not closed yet (retired ones included)
        self._heartbeat: asyncio.Task[None] | None = None

    def _usable(self, lease: _Lease | None, amount: int) -> bool:
        return (lease is not None and not lease.retired and lease.available >= amount
                and self._clock() - lease.opened < self._max_age_s)

    async def reserve(self, hold_id: str, caps: Sequence[Cap], amount: int, ttl_s: float, enforce: bool = True,
                      fail_open: bool = False) -> Hold:
        if not enforce or not caps:  # an unchecked (downgraded) hold gains nothing from a lease
            return await self.inner.reserve(hold_id, caps, amount, ttl_s, enforce, fail_open)
        key: LeaseKey = tuple((cap.counter_id, cap.limit_nanos) for cap in caps)
        lease = self._leases.get(key)
        if not self._usable(lease, amount):
            async with self._locks.setdefault(key, asyncio.Lock()):
                lease = self._leases.get(key)
                if not self._usable(lease, amount):
                    if lease is not None:
                        self._retire(key, lease)
                    lease = await self._open(key, caps, amount, fail_open)
        assert lease is not None
        lease.reserved += amount
        lease.inflight += 1
        self._by_hold[hold_id] = lease
        return Hold(hold_id, tuple(caps), amount, local=lease.hold.local)

    async def _open(self, key: LeaseKey, caps: Sequence[Cap], amount: int, fail_open: bool) -> _Lease:
        size = max(amount, min(int(cap.limit_nanos * self._share) for cap in caps))
        lease_id = "lease-" + secrets.token_hex(8)
        try:
            hold = await self.inner.reserve(lease_id, caps, size, self._lease_ttl_s, True, fail_open)
        except BudgetExceeded:
            if size == amount:
                raise
            hold = await self.inner.reserve(lease_id, caps, amount, self._lease_ttl_s, True, fail_open)  # near cap
        now = self._clock()
        lease = _Lease(key, hold, now, now)
        self._leases[key] = lease
        self._unclosed[hold.id] = lease
        # An idle lease must not hold budget back from other replicas: retire it when it comes of age.
        asyncio.get_running_loop().call_later(self._max_age_s, self._retire, key, lease)
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat(), name="budget-lease-heartbeat")
        return lease

    async def _beat(self) -> None:
        """Renews the TTL of leases open for a third of it (a retired lease waiting on a long stream, mostly)."""
        period = self._lease_ttl_s / 3
        while self._unclosed:
            await asyncio.sleep(period)
            for lease in list(self._unclosed.values()):
                if self._clock() - lease.extended < period or lease.hold.id not in self._unclosed:
                    continue
                lease.extended = self._clock()
                try:
                    held = await self.inner.extend(lease.hold, self._lease_ttl_s)
                except BudgetStoreUnavailable:
                    continue  # a bare Redis store; the next beat tries again
                if not held:
                    self._retire(lease.key, lease)

    def _retire(self, key: LeaseKey, lease: _Lease) -> None:
        if lease.retired:
            return
        lease.retired = True
        if self._leases.get(key) is lease:
            del self._leases[key]
        if lease.inflight == 0:
            task = asyncio.get_running_loop().create_task(self._close(lease))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close(self, lease: _Lease) -> list[CapState]:
        self._unclosed.pop(lease.hold.id, None)
        states = await self.inner.settle(lease.hold, lease.spend.freeze())
        if self.observe is not None:
            self.observe(states, lease.settled)
        return states

    async def settle(self, hold: Hold, actual: int | Spend) -> list[CapState]:
        """Settles locally; the shared store hears of it when the lease closes (see ``observe``)."""
        lease = self._by_hold.pop(hold.id, None)
        if lease is None:
            return await self.inner.settle(hold, actual)
        lease.reserved -= hold.amount
        spend = as_spend(actual)
        lease.spend.add(spend)
        lease.settled.append((hold.id, spend.nanos))
        lease.inflight -= 1
        if lease.retired and lease.inflight == 0:
            await self._close(lease)
        return []

    async def extend(self, hold: Hold, ttl_s: float) -> bool:
        lease = self._by_hold.get(hold.id)
        return True if lease is not None else await self.inner.extend(hold, ttl_s)  # a lease renews itself

    async def states(self, caps: Sequence[Cap]) -> list[CapState]:
        return await self.inner.states(caps)

    async def close(self) -> None:
        """Close every lease (in-flight requests have settled by now: the meter drains them first)."""
        for key, lease in list(self._leases.items()):
            self._retire(key, lease)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        await self.inner.close()
