"""Redis outages: fail-closed or fail-open per team, with local accounting reconciled into Redis when it returns.

While Redis is down (and for ``retry_after_s`` after each failure, so requests don't each pay a connect timeout)
a fail-open team reserves against an in-process store whose counters start from the last totals Redis reported,
so caps still bind approximately. Spend settled locally, and spend of holds taken in Redis but settled during the
outage, is queued as per-counter deltas; the first successful Redis call afterwards applies them in one idempotent
script (a retried batch whose reply was lost applies once). Holds left in Redis expire by their TTL.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import replace
from typing import Callable, Sequence

from metering.budgets.base import BudgetStore, BudgetStoreUnavailable, Cap, CapState, Hold
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
        self._pending: dict[str, tuple[Cap, int]] = {}
        self._inflight: tuple[str, list[tuple[Cap, int]]] | None = None
        self._lock = asyncio.Lock()

    async def _last_known(self, cap: Cap) -> int:
        return self.remote.last_spent.get(cap.counter_id, 0)

    @property
    def degraded(self) -> bool:
        return self._clock() < self._down_until or bool(self._pending) or self._inflight is not None

    def _mark_down(self, exc: Exception) -> None:
        if self._clock() >= self._down_until:
            log.warning("budgets: Redis unreachable (%s); fail-open teams account locally", exc)
        self._down_until = self._clock() + self._retry_after_s

    async def _remote_ok(self) -> bool:
        """Whether to try Redis now; first pushes any spend accounted locally while it was away."""
        if self._clock() < self._down_until:
            return False
        if self._pending or self._inflight is not None:
            try:
                await self._reconcile()
            except BudgetStoreUnavailable as exc:
                self._mark_down(exc)
                return False
        return True

    async def _reconcile(self) -> None:
        async with self._lock:
            if self._inflight is None and self._pending:
                self._inflight = (secrets.token_hex(8), list(self._pending.values()))
                self._pending = {}
            if self._inflight is None:
                return
            batch_id, deltas = self._inflight
            await self.remote.reconcile(batch_id, deltas)
            self._inflight = None
            self.local.reset()  # the next outage starts from fresh Redis totals
            log.info("budgets: Redis back; reconciled %d counters accounted locally", len(deltas))

    def _queue(self, caps: Sequence[Cap], actual: int) -> None:
        for cap in caps:
            _, delta = self._pending.get(cap.counter_id, (cap, 0))
            self._pending[cap.counter_id] = (cap, delta + actual)

    async def reserve(self, hold_id: str, caps: Sequence[Cap], amount: int, ttl_s: float, enforce: bool = True,
                      fail_open: bool = False) -> Hold:
        if await self._remote_ok():
            try:
                return await self.remote.reserve(hold_id, caps, amount, ttl_s, enforce)
            except BudgetStoreUnavailable as exc:
                self._mark_down(exc)
        if not fail_open:
            raise BudgetStoreUnavailable("budget store (Redis) is unreachable and this team's budget fails closed")
        hold = await self.local.reserve(hold_id, caps, amount, ttl_s, enforce)
        return replace(hold, local=True)

    async def settle(self, hold: Hold, actual: int) -> list[CapState]:
        if hold.local:
            states = await self.local.settle(hold, actual)
            self._queue(hold.caps, actual)
            await self._remote_ok()  # reconciles now if Redis is back
            return states
        # A Redis hold is always settled in Redis if at all possible, even inside the back-off window (which one
        # stale connection can open while Redis is fine): left there, it would block budget until its TTL.
        await self._remote_ok()
        try:
            return await self.remote.settle(hold, actual)
        except BudgetStoreUnavailable as exc:
            self._mark_down(exc)
        # A Redis hold settled during the outage: the hold expires there; the spend is counted locally and queued.
        self._queue(hold.caps, actual)
        return await self.local.settle(hold, actual)

    async def states(self, caps: Sequence[Cap]) -> list[CapState]:
        if await self._remote_ok():
            try:
                return await self.remote.states(caps)
            except BudgetStoreUnavailable as exc:
                self._mark_down(exc)
        return await self.local.states(caps)

    async def close(self) -> None:
        if self._pending or self._inflight is not None:
            try:
                await self._reconcile()
            except BudgetStoreUnavailable:
                log.error("budgets: closing with spend not reconciled into Redis (the ledger still has it)")
        await self.remote.close()
