"""Budget alerts: a threshold (default 50 / 80 / 100 % of a cap) fires when SETTLED spend crosses it, once per
scope and period, naming the request that crossed it; and every refusal on a cap is recorded.

Crossing, exactly: the budget store settles atomically and returns each cap's spend after the settle, and the
meter says which requests' costs that settle added, in order (one request, or a budget lease's requests when the
lease closes). So the spend before each request is known, and a threshold T is crossed by the one request with
``before < T <= after``: across workers too, since the shared counter serialises their settles. A counter that
jumps past T without a settle (re-filled from the ledger after a Redis restart) has no crossing request; a worker
that sees T already passed claims it only after ``catch_up_delay_s`` (so the crossing worker's claim wins), and
that alert says "crossed while not observed" instead of naming a request.

Once: a crossing is claimed in process, then in Redis (``SET NX``, when configured), then in the ledger's
``alerts`` table, whose UNIQUE (scope, period, threshold) key decides between processes even without Redis and
after Redis forgets. Only the winner logs it and posts the webhook (Slack-compatible: ``text`` plus the structured
``alert``), with exponential backoff; a webhook that stays down loses the delivery (the alert is stored and
logged), rather than every replica re-sending it.

Refusals (a reservation over a cap: the 429) are not a threshold: ``observe_refusal`` counts them for the
proxy's listeners (a Prometheus counter) at once and stores them in the ledger in batches, off the request path.
``observe()`` and ``observe_refusal()`` only enqueue, so a request never waits on Redis, the database or the
webhook.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp

from metering.budgets.base import PERIOD_WORDS, BudgetExceeded, Cap, CapState
from metering.ledger.alert_log import AlertEvent, once_key
from metering.ledger.base import Ledger
from metering.money import format_usd

if TYPE_CHECKING:  # redis-py (and the OpenTelemetry SDK it pulls in: ~0.25 s) is imported only when Redis is configured
    import redis.asyncio as aioredis

log = logging.getLogger(__name__)

THRESHOLDS = (50, 80, 100)
MAX_PENDING_REFUSALS = 10_000  # a database down for long must not grow memory without bound

ThresholdsFor = Callable[[Cap], Sequence[int]]
Settled = Sequence[tuple[str, int]]  # (request id, nanos added), in the order the settle added them


def _describe(event: AlertEvent) -> str:
    period = PERIOD_WORDS.get(event.period, event.period)  # an experiment's cap is a "lifetime" one
    who = f"team {event.team}" if event.scope == "team" else f"{event.scope} {event.scope_name} of team {event.team}"
    return f"{period} budget of {who}"


def _event(cap: Cap, kind: str, spent: int, **fields: Any) -> AlertEvent:
    return AlertEvent(kind=kind, at=datetime.now(UTC), team=cap.team,  # type: ignore[arg-type]
                      scope=cap.kind, scope_name=cap.name, period=cap.period, period_start=cap.start,
                      limit_nanos=cap.limit_nanos, spent_nanos=spent, **fields)


def crossings(state: CapState, settled: Settled, thresholds: Sequence[int]) -> tuple[list[AlertEvent], list[int]]:
    """The thresholds (percent of the cap) this settle crossed, each with the request that crossed it; and those
    already passed before it (a catch-up candidate: no request of this settle crossed them).

    ``state.spent_nanos`` is the cap's settled spend after the settle; ``settled`` what it added, in order.
    A threshold T is crossed at spend s when ``s * 100 >= T * limit`` (exact integers).
    """
    cap = state.cap
    limit = cap.limit_nanos
    if limit <= 0:
        return [], []
    running = state.spent_nanos - sum(n for _, n in settled)
    passed = [t for t in sorted(thresholds) if running * 100 >= t * limit]
    pending = [t for t in sorted(thresholds) if running * 100 < t * limit]
    out = []
    for request_id, nanos in settled:
        before, running = running, running + nanos
        while pending and running * 100 >= pending[0] * limit:
            out.append(_event(cap, "threshold", running, threshold_pct=pending.pop(0), previous_nanos=before,
                              amount_nanos=nanos, request_id=request_id or None))
    # spend may exceed what the listed requests add (a re-seeded counter): thresholds under it were passed unseen
    passed += [t for t in pending if state.spent_nanos * 100 >= t * limit]
    return out, passed


def payload(event: AlertEvent) -> dict[str, Any]:
    """The webhook body: Slack reads ``text``; ``alert`` carries the fields for machines."""
    text = (f":warning: tiergate: {_describe(event)} ({event.period_start.isoformat()}) reached "
            f"{event.threshold_pct}%: ${format_usd(event.spent_nanos)} of ${format_usd(event.limit_nanos)}")
    if event.request_id is not None:
        text += f" (crossed by request {event.request_id})"
    elif event.previous_nanos is None:
        text += " (crossed while not observed: the budget counter was refilled from the ledger)"
    return {
        "text": text,
        "alert": {
            "kind": "budget_threshold", "id": event.id, "scope": event.scope, "team": event.team,
            "name": event.scope_name, "period": event.period, "period_start": event.period_start.isoformat(),
            "threshold_pct": event.threshold_pct, "limit_usd": format_usd(event.limit_nanos),
            "spent_usd": format_usd(event.spent_nanos),
            "previous_spent_usd": None if event.previous_nanos is None else format_usd(event.previous_nanos),
            "request_id": event.request_id,
            "request_cost_usd": None if event.amount_nanos is None else format_usd(event.amount_nanos),
        },
    }


class Alerter:
    def __init__(self, webhook_url: str | None, redis: aioredis.Redis | None = None, prefix: str = "tg",
                 ledger: Ledger | None = None, thresholds: Sequence[int] = THRESHOLDS, max_attempts: int = 6,
                 base_delay_s: float = 0.5, timeout_s: float = 5.0, catch_up_delay_s: float = 5.0) -> None:
        """``thresholds`` applies to every cap until ``thresholds_for`` is set (the proxy maps each cap to its
        team's configured list); ``ledger`` stores alerts and refusals (None: logged and posted only)."""
        self.webhook_url = webhook_url
        self.ledger = ledger
        default = tuple(sorted(thresholds))
        self.thresholds_for: ThresholdsFor = lambda cap: default
        self.refusal_listeners: list[Callable[[AlertEvent], None]] = []
        self.dropped_refusals = 0
        self._redis = redis
        self._prefix = prefix
        self._max_attempts = max_attempts
        self._base_delay_s = base_delay_s
        self._catch_up_delay_s = catch_up_delay_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._decided: dict[str, int] = {}  # once_key -> unix time its period's counter expires: claimed, or lost
        self._catching_up: set[str] = set()
        self._closing = False  # no new catch-ups: another replica, or the next start, makes them
        self._queue: asyncio.Queue[tuple[Sequence[CapState], Settled]] = asyncio.Queue()
        self._refusals: list[AlertEvent] = []
        self._refusals_queued = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()  # claims (Redis, then the ledger)
        self._catch_ups: set[asyncio.Task[None]] = set()
        self._sends: set[asyncio.Task[Any]] = set()  # webhook posts, retrying
        self._runners: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self.webhook_url:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        self._runners = [asyncio.create_task(self._run(), name="budget-alerts"),
                         asyncio.create_task(self._store_refusals(), name="budget-refusals")]

    def observe(self, states: Sequence[CapState], settled: Settled) -> None:
        """Non-blocking: the caps' states after a settle, and the (request id, nanos) it added, in order."""
        if self._runners:
            self._queue.put_nowait((states, settled))

    def observe_refusal(self, exc: BudgetExceeded, key_id: str, tags: Mapping[str, str],
                        request_id: str | None) -> AlertEvent:
        """Non-blocking: a reservation was refused on ``exc.cap``; listeners hear of it now, the ledger soon."""
        event = _event(exc.cap, "refusal", exc.spent_nanos, amount_nanos=exc.requested_nanos,
                       request_id=request_id or None, key_id=key_id, tags=dict(tags))
        for listener in self.refusal_listeners:
            listener(event)
        if self._runners and self.ledger is not None:
            if len(self._refusals) >= MAX_PENDING_REFUSALS:
                self._refusals.pop(0)
                self.dropped_refusals += 1
                log.warning("budget refusals: %d not stored (the ledger is not taking them)", self.dropped_refusals)
            self._refusals.append(event)
            self._refusals_queued.set()
        return event

    async def flush(self) -> None:
        """Wait until what this process observed so far is stored: settles evaluated, crossings claimed, refusals
        written (not catch-up claims, which wait on purpose, nor webhook deliveries)."""
        await self._queue.join()
        while self._tasks or self._refusals:
            if self._refusals:
                await self._flush_refusals()
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def drain(self) -> None:
        """``flush``, and wait for catch-up claims and webhook deliveries (or their giving up); for tests and
        shutdown."""
        while True:
            await self.flush()
            pending = self._catch_ups | self._sends
            if not pending:
                return
            await asyncio.gather(*pending, return_exceptions=True)

    async def close(self) -> None:
        """Drain, except catch-up claims still waiting: another replica, or the next start, makes those."""
        if self._runners:
            self._closing = True
            for task in list(self._catch_ups):
                task.cancel()
            try:
                await asyncio.wait_for(self.drain(), timeout=30)
            finally:
                for task in self._runners:
                    task.cancel()
                self._runners = []
        if self._session is not None:
            await self._session.close()

    # -- background ------------------------------------------------------------------------------------------------
    @staticmethod
    def _spawn(coro: Any, tasks: set[asyncio.Task[Any]]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _run(self) -> None:
        while True:
            states, settled = await self._queue.get()
            try:
                for state in states:
                    found, passed = crossings(state, settled, self.thresholds_for(state.cap))
                    for event in found:
                        if self._decide(event, state.cap):
                            self._spawn(self._fire(state.cap, event), self._tasks)
                    for pct in passed:
                        self._maybe_catch_up(state, pct)
            except Exception:
                log.exception("budget alerts: evaluating a settle failed")
            finally:
                self._queue.task_done()

    def _decide(self, event: AlertEvent, cap: Cap) -> bool:
        """True the first time this process sees the event's threshold (it then tries to claim it)."""
        key = event.once_key
        assert key is not None
        if key in self._decided:
            return False
        if len(self._decided) > 10_000:  # forget periods whose counters are gone
            now = time.time()
            self._decided = {k: exp for k, exp in self._decided.items() if exp > now}
        self._decided[key] = cap.expires_at
        return True

    def _maybe_catch_up(self, state: CapState, pct: int) -> None:
        cap = state.cap
        key = once_key(cap.kind, cap.team, cap.name, cap.period, cap.start, pct)  # every later settle asks: cheaply
        if key in self._decided or key in self._catching_up or self._closing:
            return
        self._catching_up.add(key)
        self._spawn(self._catch_up(cap, _event(cap, "threshold", state.spent_nanos, threshold_pct=pct)),
                    self._catch_ups)

    async def _catch_up(self, cap: Cap, event: AlertEvent) -> None:
        try:
            await asyncio.sleep(self._catch_up_delay_s)  # the crossing settle's own claim, if any, lands first
            if self._decide(event, cap):
                await self._fire(cap, event)
        finally:
            self._catching_up.discard(event.once_key or "")

    async def _fire(self, cap: Cap, event: AlertEvent) -> None:
        assert event.once_key is not None
        if not await self._claim_in_redis(event.once_key, cap):
            return
        if self.ledger is not None:
            try:
                if not (await self.ledger.add_alerts([event]))[0]:
                    return  # another process stored it first (Redis forgot, or is not configured)
            except Exception as exc:  # noqa: BLE001 - a stored history must not cost the alert itself
                log.warning("budget alerts: could not store the alert (%s: %s); sending it anyway",
                            type(exc).__name__, exc)
        body = payload(event)
        log.warning("budget alert: %s", body["text"])
        if self._session is not None and self.webhook_url:
            self._spawn(post_json(self._session, self.webhook_url, body, body["text"], self._max_attempts,
                                  self._base_delay_s), self._sends)

    async def _claim_in_redis(self, key: str, cap: Cap) -> bool:
        if self._redis is None:
            return True
        try:
            return bool(await self._redis.set(f"{self._prefix}:alert:{key}", "1", nx=True, exat=cap.expires_at))
        except Exception as exc:  # noqa: BLE001 - Redis down: the ledger's unique key still decides
            log.warning("budget alerts: Redis unavailable for dedupe (%s); the ledger decides", exc)
            return True

    async def _store_refusals(self) -> None:
        while True:
            await self._refusals_queued.wait()
            await self._flush_refusals()

    async def _flush_refusals(self) -> None:
        self._refusals_queued.clear()
        batch, self._refusals = self._refusals, []
        if not batch or self.ledger is None:
            return
        try:
            await self.ledger.add_alerts(batch)
        except Exception as exc:  # noqa: BLE001 - keep them for the next try, within the bound
            log.warning("budget refusals: storing %d failed (%s: %s); retrying", len(batch), type(exc).__name__, exc)
            self._refusals = (batch + self._refusals)[-MAX_PENDING_REFUSALS:]
            await asyncio.sleep(1.0)
            self._refusals_queued.set()


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
        except (TimeoutError, aiohttp.ClientError) as exc:
            problem = repr(exc)
        if attempt < max_attempts:
            delay = base_delay_s * 2 ** (attempt - 1)
            log.info("alert webhook attempt %d failed (%s); retrying in %.1fs", attempt, problem, delay)
            await asyncio.sleep(delay)
        else:
            log.error("alert webhook gave up after %d attempts (%s): %s", attempt, problem, what)
    return False
