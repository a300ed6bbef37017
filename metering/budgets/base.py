"""Budget caps, holds (reservations) and the store interface shared by Redis and in-process implementations.

A request reserves its worst-case cost against every cap that applies to it, all or nothing, then settles to the
actual cost. A hold carries a time-to-live so a proxy that dies between the two cannot leak its reservation.

The ledger is the source of truth; a shared counter is re-seeded from it when it may have lost spend (Redis
restarted, or a hold expired unsettled because its worker died). A seed at wall time T already holds every record
written to the ledger before T, so settled spend carries when its records were written (``Spend``) and a counter
adds only the part written at or after its seed: nothing is counted twice, whichever order seeds and settles come in.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from metering.money import format_usd

Kind = Literal["team", "key", "tag", "experiment"]
# "life": an experiment's one cap from its start day to the day after its expiry (``Cap.until``), whatever the month.
PeriodKind = Literal["day", "month", "life"]
PERIOD_WORDS: dict[str, str] = {"day": "daily", "month": "monthly", "life": "lifetime"}
# Counters outlive their period by this much, so late settles and /v1/spend/teams still find them.
_GRACE = timedelta(days=3)


@dataclass(frozen=True, slots=True)
class Cap:
    """One limit on one period: ``team`` daily, ``key`` monthly, ``tag`` (``name`` = ``"k=v"``) daily, ...,
    ``experiment`` (``name`` = the experiment) over its life (``period="life"``, ``until`` its end day)."""

    kind: Kind
    team: str
    name: str  # key id for kind=key, "k=v" for kind=tag, the experiment's name for kind=experiment, "" for team
    period: PeriodKind
    start: date  # first day of the period (UTC)
    limit_nanos: int
    # period="life" only: the UTC day after the experiment's expiry (exclusive). Not part of the counter's identity,
    # like the limit: extending an experiment keeps its spend.
    until: date | None = field(default=None, compare=False)
    # Derived once at construction: the request path reads them several times per reservation.
    counter_id: str = field(init=False, compare=False, repr=False)
    end: date = field(init=False, compare=False, repr=False)
    expires_at: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # counter_id is the identity of the shared counter; the limit is *not* part of it (a reload may change it).
        stamp = self.start.strftime("%Y-%m") if self.period == "month" else self.start.isoformat()
        object.__setattr__(self, "counter_id", f"{self.kind}:{self.team}:{self.name}:{stamp}")
        if self.period == "life":
            assert self.until is not None, "a lifetime cap needs its end day"
            end = self.until
        elif self.period == "day":
            end = self.start + timedelta(days=1)
        else:
            end = date(self.start.year + (self.start.month == 12), self.start.month % 12 + 1, 1)
        object.__setattr__(self, "end", end)
        # Unix seconds after which the counter may be dropped.
        expires = datetime(end.year, end.month, end.day, tzinfo=UTC) + _GRACE
        object.__setattr__(self, "expires_at", int(expires.timestamp()))

    def describe(self) -> str:
        who = f"team {self.team}" if self.kind == "team" else f"{self.kind} {self.name} of team {self.team}"
        return f"{PERIOD_WORDS[self.period]} budget of {who}"


def wall_ms() -> int:
    """Wall-clock milliseconds: comparable across the workers (and hosts) that share one counter."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Spend:
    """Actual cost as ``(written_ms, nanos)`` parts, oldest first: when the records reached the ledger, and what
    they cost. One part per request; a lease's settle carries its requests' parts in 10 ms buckets."""

    parts: tuple[tuple[int, int], ...]

    @classmethod
    def now(cls, nanos: int) -> Spend:
        return cls(((wall_ms(), nanos),))

    @property
    def nanos(self) -> int:
        return sum(n for _, n in self.parts)


def as_spend(actual: int | Spend) -> Spend:
    """Settle takes a plain amount too: spend whose records were written just now."""
    return actual if isinstance(actual, Spend) else Spend.now(actual)


class SpendLog:
    """Accumulates ``Spend`` in 10 ms buckets, at most ``max_parts`` of them (the oldest merge), so a lease's or an
    outage's settle stays one small script call. A bucket is stamped with its end: a record near a seed counts as
    written after it, which over-counts (the safe direction for a cap) rather than drops."""

    BUCKET_MS = 10

    def __init__(self, max_parts: int = 64) -> None:
        self._max_parts = max_parts
        self._buckets: dict[int, int] = {}
        self.nanos = 0

    def add(self, spend: Spend) -> None:
        for ms, nanos in spend.parts:
            key = ms - ms % self.BUCKET_MS + self.BUCKET_MS - 1
            self._buckets[key] = self._buckets.get(key, 0) + nanos
            self.nanos += nanos
        while len(self._buckets) > self._max_parts:
            oldest = min(self._buckets)
            moved = self._buckets.pop(oldest)
            nxt = min(self._buckets)
            self._buckets[nxt] += moved  # stamped with the later time: over-count, never drop

    def freeze(self) -> Spend:
        return Spend(tuple(sorted(self._buckets.items())))


@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation. ``local`` marks one taken in the in-process fallback while Redis was unreachable."""

    id: str
    caps: tuple[Cap, ...]
    amount: int
    local: bool = False


@dataclass(frozen=True, slots=True)
class CapState:
    cap: Cap
    spent_nanos: int
    reserved_nanos: int


class BudgetExceeded(Exception):
    """Over a cap: the proxy answers 429 ``budget_exceeded`` (or downgrades, if the team's policy says so)."""

    def __init__(self, cap: Cap, spent_nanos: int, reserved_nanos: int, requested_nanos: int) -> None:
        self.cap = cap
        self.limit_nanos = cap.limit_nanos
        self.spent_nanos = spent_nanos
        self.reserved_nanos = reserved_nanos
        self.requested_nanos = requested_nanos
        super().__init__(
            f"{cap.describe()} exceeded: limit ${format_usd(cap.limit_nanos)}, spent ${format_usd(spent_nanos)}, "
            f"in flight ${format_usd(reserved_nanos)}, this request needs up to ${format_usd(requested_nanos)}"
        )


class BudgetStoreUnavailable(Exception):
    """The shared store cannot be reached and the team is fail-closed: the proxy answers 503."""


# Committed spend of a cap's scope and period, read from the ledger to refill counters Redis lost on a restart.
# It must first commit everything this worker wrote: its caller stamps the seed with the time before the call.
Seeder = Callable[[Cap], Awaitable[int]]


class BudgetStore(abc.ABC):
    # True when settle() usually waits on the network: callers may then settle off the response path.
    settles_remotely: bool = False

    @abc.abstractmethod
    async def reserve(self, hold_id: str, caps: Sequence[Cap], amount: int, ttl_s: float, enforce: bool = True,
                      fail_open: bool = False) -> Hold:
        """Add ``amount`` to every cap's reserved total, or raise ``BudgetExceeded`` and change nothing.

        ``enforce=False`` records the hold without checking (a downgraded request still spends). ``fail_open``
        only matters to remote stores: on an outage, account locally instead of raising
        ``BudgetStoreUnavailable``.
        """

    @abc.abstractmethod
    async def settle(self, hold: Hold, actual: int | Spend) -> list[CapState]:
        """Replace the hold by ``actual`` spend (also after the hold expired); never raises for an outage.

        An ``int`` is spend whose records were written just now. Returns the caps' states after settling, for
        alerting.
        """

    @abc.abstractmethod
    async def extend(self, hold: Hold, ttl_s: float) -> bool:
        """Push the hold's expiry to ``ttl_s`` from now (a lease's heartbeat). False if the hold is gone (expired,
        or Redis restarted): it no longer guards anything."""

    @abc.abstractmethod
    async def states(self, caps: Sequence[Cap]) -> list[CapState]:
        """Current spent and reserved totals (live, including other replicas)."""

    async def close(self) -> None:  # noqa: B027 - an optional hook: stores without connections keep the no-op
        """Release connections."""
