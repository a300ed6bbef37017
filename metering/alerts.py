"""Budget alerts at 50 / 80 / 100 % of each cap, once per threshold per period, to a webhook and the log.

100 % also fires when the cap first refuses a request, even if settled spend is a little short of the limit: that
is the moment ops need to know the team is being stopped.

``observe()`` only enqueues, so a request never waits on Redis or the webhook. A background task decides whether
a threshold is new (``SET NX`` in Redis when configured, so several replicas fire once between them; in process
otherwise) and posts a Slack-compatible body (``text`` plus the structured ``alert``), retrying with exponential
backoff. A threshold is claimed before the webhook is sent: a webhook that stays down loses the alert's delivery
(it is still logged), rather than every replica re-sending it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import aiohttp
import redis.asyncio as aioredis

from metering.budgets.base import BudgetExceeded, Cap, CapState
from metering.money import format_usd

log = logging.getLogger(__name__)

THRESHOLDS = (50, 80, 100)


@dataclass(frozen=True, slots=True)
class Alert:
    cap: Cap
    threshold_pct: int
    spent_nanos: int
    refused_nanos: int | None = None  # set when a refused request, not settled spend, hit the cap

    def payload(self) -> dict[str, Any]:
        cap = self.cap
        text = (f":warning: tiergate: {cap.describe()} ({cap.counter_id.rsplit(':', 1)[-1]}) reached "
                f"{self.threshold_pct}%: ${format_usd(self.spent_nanos)} of ${format_usd(cap.limit_nanos)}")
        if self.refused_nanos is not None:
            text += f"; requests are refused (one needing up to ${format_usd(self.refused_nanos)} did not fit)"
        return {
            "text": text,
            "alert": {
                "kind": "budget_threshold", "scope": cap.kind, "team": cap.team, "name": cap.name,
                "period": cap.period, "period_start": cap.start.isoformat(), "threshold_pct": self.threshold_pct,
                "limit_usd": format_usd(cap.limit_nanos), "spent_usd": format_usd(self.spent_nanos),
                "refusing": self.refused_nanos is not None,
            },
        }


class Alerter:
    def __init__(self, webhook_url: str | None, redis: aioredis.Redis | None = None, prefix: str = "tg",
                 thresholds: Sequence[int] = THRESHOLDS, max_attempts: int = 6, base_delay_s: float = 0.5,
                 timeout_s: float = 5.0) -> None:
        self.webhook_url = webhook_url
        self._redis = redis
        self._prefix = prefix
        self._thresholds = tuple(sorted(thresholds))
        self._max_attempts = max_attempts
        self._base_delay_s = base_delay_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._fired: set[str] = set()
        self._queue: asyncio.Queue[Sequence[CapState] | Alert] = asyncio.Queue()
        self._sends: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self.webhook_url:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        self._task = asyncio.create_task(self._run(), name="budget-alerts")

    def observe(self, states: Sequence[CapState]) -> None:
        """Non-blocking: called with the caps' totals after each settle."""
        if self._task is not None:
            self._queue.put_nowait(states)

    def observe_refusal(self, exc: BudgetExceeded) -> None:
        """A request was refused on a cap: the cap binds, which is its 100 % alert even if settled spend is a
        little short of the limit (the rest is smaller than one request's worst case)."""
        if self._task is not None and 100 in self._thresholds:
            self._queue.put_nowait(Alert(exc.cap, 100, exc.spent_nanos, exc.requested_nanos))

    async def drain(self) -> None:
        """Wait until everything observed so far is decided and sent (or given up); for tests and shutdown."""
        await self._queue.join()
        while self._sends:
            await asyncio.gather(*list(self._sends), return_exceptions=True)

    async def close(self) -> None:
        if self._task is not None:
            await asyncio.wait_for(self.drain(), timeout=30)
            self._task.cancel()
            self._task = None
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                alerts = [item] if isinstance(item, Alert) else [a for s in item for a in self._crossed(s)]
                for alert in alerts:
                    if await self._claim(alert):
                        log.warning("budget alert: %s", alert.payload()["text"])
                        if self._session is not None:
                            task = asyncio.create_task(self._send(alert))
                            self._sends.add(task)
                            task.add_done_callback(self._sends.discard)
            except Exception:
                log.exception("budget alerts: evaluating %s failed", item)
            finally:
                self._queue.task_done()

    def _crossed(self, s: CapState) -> list[Alert]:
        if s.cap.limit_nanos <= 0:
            return []
        return [Alert(s.cap, t, s.spent_nanos) for t in self._thresholds if s.spent_nanos * 100 >= t * s.cap.limit_nanos]

    async def _claim(self, alert: Alert) -> bool:
        ident = f"{alert.cap.counter_id}:{alert.threshold_pct}"
        if ident in self._fired:
            return False
        if self._redis is not None:
            try:
                key = f"{self._prefix}:alert:{ident}"
                won = await self._redis.set(key, "1", nx=True, exat=alert.cap.expires_at)
                self._fired.add(ident)
                return bool(won)
            except Exception as exc:  # noqa: BLE001 - Redis down: better a possible duplicate than a silent cap
                log.warning("budget alerts: Redis unavailable for dedupe (%s); deduping in process", exc)
        self._fired.add(ident)
        return True

    async def _send(self, alert: Alert) -> None:
        assert self._session is not None and self.webhook_url
        body = alert.payload()
        await post_json(self._session, self.webhook_url, body, body["text"], self._max_attempts, self._base_delay_s)


async def post_json(session: aiohttp.ClientSession, url: str, body: dict[str, Any], what: str,
                    max_attempts: int, base_delay_s: float) -> bool:
    """POST ``body`` with exponential backoff; True once the webhook answers 2xx. Shared by every alert kind
    (budgets here, spend anomalies in ``metering.finops.notify``); ``what`` names the alert in the logs."""
    for attempt in range(1, max_attempts + 1):
        try:
            async with session.post(url, json=body) as resp:
                if resp.status < 300:
                    return True
                problem = f"HTTP {resp.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            problem = repr(exc)
        if attempt < max_attempts:
            delay = base_delay_s * 2 ** (attempt - 1)
            log.info("alert webhook attempt %d failed (%s); retrying in %.1fs", attempt, problem, delay)
            await asyncio.sleep(delay)
        else:
            log.error("alert webhook gave up after %d attempts (%s): %s", attempt, problem, what)
    return False
