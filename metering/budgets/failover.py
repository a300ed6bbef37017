"""Redis outages: fail-closed or fail-open per team, with local accounting reconciled into Redis when it returns.

While Redis is down (and for ``retry_after_s`` after each failure, so fail-open requests don't each pay a connect
timeout) a fail-open team reserves against an in-process store whose counters start from the last totals Redis
reported, so caps still bind approximately. A fail-closed team always asks Redis, whose client reconnects a stale
connection once: it gets 503 only while Redis really does not answer, never for the back-off after it is back.

Spend settled locally is queued as per-counter ``Spend``; settles of holds taken in Redis that failed are queued
whole, so the holds are released rather than left to block budget until their TTL. The first successful Redis call
afterwards applies both: the settles by the idempotent settle script, the local spend in one batch that applies
once even if re-sent. Spend carries when its records were written, so a counter re-seeded from the ledger meanwhile
(Redis restarted empty) skips what its seed already holds.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from metering.budgets.base import BudgetStore, BudgetStoreUnavailable, Cap, CapState, Hold, Spend, SpendLog, as_spend
from metering.budgets.memory_store import MemoryBudgetStore
from metering.budgets.redis_store import RedisBudgetStore

log = logging.getLogger(__name__)


class FailoverBudgetStore(BudgetStore):
    settles_remotely = True

    def __init__(self, remote: RedisBudgetStore, retry_after_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.remote = remote
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._down_until = 0.0
        self.local = MemoryBudgetStore(seeder=self._last_known)
        self._pending: dict[str, tuple[Cap, SpendLog]] = {}
        self._inflight: tuple[str, list[tuple[Cap, Spend]]] | None = None
        self._held: list[tuple[Hold, Spend]] = []  # settles of Redis holds that did not reach Redis
        self._lock = asyncio.Lock()

    async def _last_known(self, cap: Cap) -> int:
        return self.remote.last_spent.get(cap.counter_id, 0)

    @property
    def degraded(self) -> bool:
        return (self._clock() < self._down_until or bool(self._pending) or self._inflight is not None
                or bool(self._held))

    def _mark_down(self, exc: Exception) -> None:
        if self._clock() >= self._down_until:
            log.warning("budgets: Redis unreachable (%s); fail-open teams account locally", exc)
        self._down_until = self._clock() + self._retry_after_s

    async def _remote_ok(self, probe: bool = False) -> bool:
        """Whether to try Redis now (``probe``: even inside the back-off); first pushes what was accounted locally."""
        if not probe and self._clock() < self._down_until:
            return False
        if self._pending or self._inflight is not None or self._held:
            try:
                await self._reconcile()
            except BudgetStoreUnavailable as exc:
                self._mark_down(exc)
                return False
        return True

    async def _reconcile(self) -> None:
        async with self._lock:
            while self._held:
                hold, spend = self._held[0]
                await self.remote.settle(hold, spend)
                self._held.pop(0)
            if self._inflight is None and self._pending:
                deltas = [(cap, spends.freeze()) for cap, spends in self._pending.values()]
                self._inflight = (secrets.token_hex(8), deltas)
                self._pending = {}
            if self._inflight is None:
                return
            batch_id, deltas = self._inflight
            await self.remote.reconcile(batch_id, deltas)
            self._inflight = None
            self.local.reset()  # the next outage starts from fresh Redis totals
            log.info("budgets: Redis back; reconciled %d counters accounted locally", len(deltas))

    def _queue(self, caps: Sequence[Cap], spend: Spend) -> None:
        for cap in caps:
            entry = self._pending.get(cap.counter_id)
            if entry is None:
                entry = self._pending[cap.counter_id] = (cap, SpendLog())
            entry[1].add(spend)

    async def reserve(self, hold_id: str, caps: Sequence[Cap], amount: int, ttl_s: float, enforce: bool = True,
                      fail_open: bool = False) -> Hold:
        if await self._remote_ok(probe=not fail_open):
            try:
                hold = await self.remote.reserve(hold_id, caps, amount, ttl_s, enforce)
                self._down_until = 0.0
                return hold
            except BudgetStoreUnavailable as exc:
                self._mark_down(exc)
        if not fail_open:
            raise BudgetStoreUnavailable("budget store (Redis) is unreachable and this team's budget fails closed")
        hold = await self.local.reserve(hold_id, caps, amount, ttl_s, enforce)
        return replace(hold, local=True)

    async def settle(self, hold: Hold, actual: int | Spend) -> list[CapState]:
        spend = as_spend(actual)
        if hold.local:
            states = await self.local.settle(hold, spend)
            self._queue(hold.caps, spend)
            await self._remote_ok()  # reconciles now if Redis is back
            return states
        # A Redis hold is always settled in Redis if at all possible, even inside the back-off window (which one
        # failed call can open while Redis is fine): left there, it would block budget until its TTL.
        await self._remote_ok(probe=True)
        try:
            return await self.remote.settle(hold, spend)
        except BudgetStoreUnavailable as exc:
            self._mark_down(exc)
        # Queued whole: reconciling releases the hold, and counts the spend once (the settle script is idempotent).
        self._held.append((hold, spend))
        return await self.local.settle(hold, spend)

    async def extend(self, hold: Hold, ttl_s: float) -> bool:
        if hold.local:
            return await self.local.extend(hold, ttl_s)
        try:
            return await self.remote.extend(hold, ttl_s)
        except BudgetStoreUnavailable as exc:
            self._mark_down(exc)
            return True  # unknown: keep the lease; its hold expires in Redis by itself if this lasts

    async def states(self, caps: Sequence[Cap]) -> list[CapState]:
        if await self._remote_ok():
            try:
                return await self.remote.states(caps)
            except BudgetStoreUnavailable as exc:
                self._mark_down(exc)
        return await self.local.states(caps)

    async def close(self) -> None:
        if self._pending or self._inflight is not None or self._held:
            try:
                await self._reconcile()
            except BudgetStoreUnavailable:
                log.error("budgets: closing with spend not reconciled into Redis (the ledger still has it)")
        await self.remote.close()
