"""Budget leases: a worker reserves a slice of a team's caps in the shared store once, then serves many requests'
reservations from that slice locally, so the request path rarely waits on Redis.

Why the cap still holds: a lease is itself a hold on every cap (taken atomically in the shared store), and a
request reserves only what its lease has left, so the shared totals (spent + reserved, leases included) pass a
cap by at most one request's reservation, as without leases. Near a cap the slice shrinks to the request's own
worst case, which is exactly the unleased behaviour. A lease closes (its hold settled to what its requests
spent) when it runs out, when it is ``max_age_s`` old, or at shutdown; its TTL in the shared store bounds what
a crashed worker can hold back.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from metering.budgets.base import BudgetExceeded, BudgetStore, Cap, CapState, Hold

LeaseKey = tuple[tuple[str, int], ...]


@dataclass
class _Lease:
    hold: Hold
    opened: float
    reserved: int = 0  # live reservations of requests served from this lease
    spent: int = 0  # what settled requests actually cost
    inflight: int = 0
    retired: bool = False  # takes no new reservations; closes when the last one settles

    @property
    def available(self) -> int:
        return self.hold.amount - self.reserved - self.spent


class LeasedBudgetStore(BudgetStore):
    def __init__(self, inner: BudgetStore, share: float = 0.02, max_age_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``share``: a lease asks for this fraction of the smallest cap it covers (never less than the request).

        The shared totals change when a lease closes, not when a request settles, so alerting subscribes to
        ``observe`` (called with the caps' states after every close) instead of reading ``settle``'s result.
        """
        self.inner = inner
        self.observe: Callable[[list[CapState]], None] | None = None
        self._share = share
        self._max_age_s = max_age_s
        self._clock = clock
        self._leases: dict[LeaseKey, _Lease] = {}
        self._by_hold: dict[str, _Lease] = {}
        self._locks: dict[LeaseKey, asyncio.Lock] = {}
        self._closing: set[asyncio.Task[list[CapState]]] = set()

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
                    lease = await self._open(key, caps, amount, ttl_s, fail_open)
        assert lease is not None
        lease.reserved += amount
        lease.inflight += 1
        self._by_hold[hold_id] = lease
        return Hold(hold_id, tuple(caps), amount, local=lease.hold.local)

    async def _open(self, key: LeaseKey, caps: Sequence[Cap], amount: int, ttl_s: float, fail_open: bool) -> _Lease:
        size = max(amount, min(int(cap.limit_nanos * self._share) for cap in caps))
        lease_id = "lease-" + secrets.token_hex(8)
        try:
            hold = await self.inner.reserve(lease_id, caps, size, ttl_s, True, fail_open)
        except BudgetExceeded:
            if size == amount:
                raise
            hold = await self.inner.reserve(lease_id, caps, amount, ttl_s, True, fail_open)  # near the cap
        lease = _Lease(hold, self._clock())
        self._leases[key] = lease
        # An idle lease must not hold budget back from other replicas: retire it when it comes of age.
        asyncio.get_running_loop().call_later(self._max_age_s, self._retire, key, lease)
        return lease

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
        states = await self.inner.settle(lease.hold, lease.spent)
        if self.observe is not None:
            self.observe(states)
        return states

    async def settle(self, hold: Hold, actual: int) -> list[CapState]:
        """Settles locally; the shared store hears of it when the lease closes (see ``observe``)."""
        lease = self._by_hold.pop(hold.id, None)
        if lease is None:
            return await self.inner.settle(hold, actual)
        lease.reserved -= hold.amount
        lease.spent += actual
        lease.inflight -= 1
        if lease.retired and lease.inflight == 0:
            await self._close(lease)
        return []

    async def states(self, caps: Sequence[Cap]) -> list[CapState]:
        return await self.inner.states(caps)

    async def close(self) -> None:
        """Close every lease (in-flight requests have settled by now: the meter drains them first)."""
        for key, lease in list(self._leases.items()):
            self._retire(key, lease)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self.inner.close()
