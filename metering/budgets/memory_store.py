"""In-process budget store: the default without Redis, and the local accounting of a fail-open team during an
outage. Check-and-reserve runs without an ``await`` in between, so it is atomic under asyncio.

Counters live as long as the process, so a seed never goes stale here: ``Spend``'s write times do not matter."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from metering.budgets.base import BudgetExceeded, BudgetStore, Cap, CapState, Hold, Seeder, Spend, as_spend


@dataclass
class _Counter:
    spent: int = 0
    reserved: int = 0
    holds: dict[str, tuple[int, float]] = field(default_factory=dict)  # id -> (amount, expires at)

    def purge(self, now: float) -> None:
        for hold_id, (amount, expires) in list(self.holds.items()):
            if expires <= now:
                del self.holds[hold_id]
                self.reserved -= amount


class MemoryBudgetStore(BudgetStore):
    def __init__(self, seeder: Seeder | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._seeder = seeder
        self._clock = clock
        self._counters: dict[str, _Counter] = {}

    async def _ensure(self, caps: Sequence[Cap]) -> None:
        for cap in caps:
            if cap.counter_id not in self._counters:
                base = await self._seeder(cap) if self._seeder is not None else 0
                self._counters.setdefault(cap.counter_id, _Counter(spent=base))

    async def reserve(self, hold_id: str, caps: Sequence[Cap], amount: int, ttl_s: float, enforce: bool = True,
                      fail_open: bool = False) -> Hold:
        await self._ensure(caps)
        # From here to the return: no await, so no other task interleaves.
        now = self._clock()
        counters = [self._counters[cap.counter_id] for cap in caps]
        for c in counters:
            c.purge(now)
        if enforce:
            for cap, c in zip(caps, counters):
                if c.spent + c.reserved + amount > cap.limit_nanos:
                    raise BudgetExceeded(cap, c.spent, c.reserved, amount)
        for c in counters:
            c.reserved += amount
            c.holds[hold_id] = (amount, now + ttl_s)
        return Hold(hold_id, tuple(caps), amount)

    async def settle(self, hold: Hold, actual: int | Spend) -> list[CapState]:
        nanos = as_spend(actual).nanos
        states = []
        for cap in hold.caps:
            c = self._counters.setdefault(cap.counter_id, _Counter())
            held = c.holds.pop(hold.id, None)
            if held is not None:
                c.reserved -= held[0]
            c.spent += nanos
            states.append(CapState(cap, c.spent, c.reserved))
        return states

    async def extend(self, hold: Hold, ttl_s: float) -> bool:
        held = False
        for cap in hold.caps:
            c = self._counters.get(cap.counter_id)
            if c is not None and hold.id in c.holds:
                c.holds[hold.id] = (c.holds[hold.id][0], self._clock() + ttl_s)
                held = True
        return held

    async def states(self, caps: Sequence[Cap]) -> list[CapState]:
        now = self._clock()
        out = []
        for cap in caps:
            c = self._counters.get(cap.counter_id, _Counter())
            c.purge(now)
            out.append(CapState(cap, c.spent, c.reserved))
        return out

    def reset(self) -> None:
        self._counters.clear()
