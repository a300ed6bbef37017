"""``Meter``: the one object the proxy talks to about money.

Before the upstream call: ``reserve()`` the worst case against every cap that applies (raises ``BudgetExceeded``
or ``BudgetStoreUnavailable``). After the last byte, or on failure or disconnect: ``settle()`` with the usage record,
which first makes the record durable in the ledger (the bill), then replaces the hold by the actual cost (the
budget), then hands the new totals to the alerter. Settling is shielded from the caller's cancellation, so a client
disconnect cannot leave a record half written or a hold open.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from metering.alerts import Alerter
from metering.budgets.base import (
    BudgetExceeded,
    BudgetStore,
    BudgetStoreUnavailable,
    Cap,
    CapState,
    Hold,
    Seeder,
    Spend,
)
from metering.budgets.memory_store import MemoryBudgetStore
from metering.budgets.policy import BudgetPolicy, caps_for
from metering.ledger import Ledger, open_ledger
from metering.money import format_usd
from metering.record import UsageRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Reservation:
    team: str
    started_at: datetime
    hold: Hold | None  # None when no cap applies

    @property
    def amount_nanos(self) -> int:
        return self.hold.amount if self.hold is not None else 0


def ledger_seeder(ledger: Ledger) -> Seeder:
    """Committed spend of a cap's scope and period, from the rollups: (re)fills Redis counters after a Redis restart
    or a crashed worker's expired lease.

    It flushes the ledger first, so every record this worker (or this server's other workers, through the shared
    spool) wrote before the fill is in the sum; the store stamps the fill with the time before the flush, and
    settles add only spend written after that stamp (no double count).
    """

    async def seed(cap: Cap) -> int:
        await ledger.flush()
        if cap.kind == "team":
            report = await ledger.report(cap.start, cap.end, team=cap.team, group_by=())
            return report.totals.cost_nanos
        if cap.kind == "key":
            report = await ledger.report(cap.start, cap.end, team=cap.team, group_by=("key",))
            return sum(r.totals.cost_nanos for r in report.rows if r.keys["key_id"] == cap.name)
        report = await ledger.report(cap.start, cap.end, team=cap.team, group_by=("tag",))
        if cap.kind == "experiment":  # attribution writes the experiment's name as the tag ``experiment``
            return sum(r.totals.cost_nanos for r in report.rows
                       if r.keys["tag_key"] == "experiment" and r.keys["tag_value"] == cap.name)
        return sum(r.totals.cost_nanos for r in report.rows
                   if r.keys["tag_value"] is not None and f"{r.keys['tag_key']}={r.keys['tag_value']}" == cap.name)

    return seed


def _request_of(hold_id: str) -> str:
    """The request a hold was taken for (``reserve`` names holds ``<request id>~<unique>``)."""
    return hold_id.partition("~")[0]


class Meter:
    def __init__(self, ledger: Ledger, budgets: BudgetStore, alerter: Alerter | None = None,
                 hold_ttl_s: float = 900.0) -> None:
        """``hold_ttl_s`` must exceed the longest request (streams included): an expired hold stops guarding."""
        self.ledger = ledger
        self.budgets = budgets
        self.alerter = alerter
        self.hold_ttl_s = hold_ttl_s
        self._pending: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, ledger_url: str, redis_url: str | None = None, spool_dir: str | Path | None = "",
                   webhook_url: str | None = None, prefix: str = "tg", ledger_schema: str = "public",
                   hold_ttl_s: float = 900.0, lease_share: float = 0.0, lease_ttl_s: float = 30.0) -> Meter:
        """Build and start everything from configuration values. ``lease_share`` > 0 serves reservations from
        per-worker leases of that share of each cap (``metering.budgets.leases``): Redis only, where a
        reservation otherwise costs a network round trip. ``lease_ttl_s`` bounds how long a killed worker's lease
        holds budget back (its spend is re-seeded from the ledger when it expires)."""
        ledger = open_ledger(ledger_url, spool_dir=spool_dir, schema=ledger_schema)
        await ledger.start()
        redis_client = None
        budgets: BudgetStore
        if redis_url:
            from metering.budgets.failover import FailoverBudgetStore
            from metering.budgets.redis_store import RedisBudgetStore

            remote = RedisBudgetStore.from_url(redis_url, prefix=prefix, seeder=ledger_seeder(ledger))
            redis_client = remote.client
            budgets = FailoverBudgetStore(remote)
        else:
            budgets = MemoryBudgetStore(seeder=ledger_seeder(ledger))
        alerter = Alerter(webhook_url, redis=redis_client, prefix=prefix, ledger=ledger)
        await alerter.start()
        if redis_url and lease_share > 0:
            from metering.budgets.leases import LeasedBudgetStore

            budgets = LeasedBudgetStore(budgets, share=lease_share, lease_ttl_s=lease_ttl_s)
            budgets.observe = lambda states, holds: alerter.observe(states, [(_request_of(h), n) for h, n in holds])
        return cls(ledger, budgets, alerter, hold_ttl_s)

    async def reserve(self, team: str, key_id: str, tags: Mapping[str, str], worst_case_nanos: int,
                      policy: BudgetPolicy, request_id: str | None = None, started_at: datetime | None = None,
                      enforce: bool = True) -> Reservation:
        """Hold ``worst_case_nanos`` against the team's, key's and tags' caps for the UTC day/month of
        ``started_at`` (pass the record's ``started_at``, so the budget and the ledger agree on the day).

        Raises ``BudgetExceeded`` (429 or, with ``policy.on_exceeded == "downgrade"``, reserve the cheapest tier's
        worst case again with ``enforce=False``) or ``BudgetStoreUnavailable`` (503; fail-closed teams only).
        """
        started_at = started_at or datetime.now(UTC)
        caps = caps_for(policy, team, key_id, tags, started_at.date())
        if not caps:
            return Reservation(team, started_at, None)
        try:
            # Unique per call even if clients reuse request ids: a hold id is what makes a re-sent script a no-op.
            hold_id = f"{request_id or ''}~{uuid.uuid4().hex}"
            hold = await self.budgets.reserve(hold_id, caps, worst_case_nanos,
                                              self.hold_ttl_s, enforce=enforce,
                                              fail_open=policy.redis_failure == "open")
        except BudgetExceeded as exc:
            if self.alerter is not None:
                self.alerter.observe_refusal(exc, key_id, tags, request_id)
            raise
        return Reservation(team, started_at, hold)

    async def settle(self, reservation: Reservation | None, record: UsageRecord,
                     budget_in_background: bool = False) -> None:
        """Write the record (durable when this returns) and settle its hold to ``record.cost_nanos``.

        Call it exactly once per request, also for failures (``cost_nanos=0`` unless the provider charged) and
        disconnects (the tokens generated so far). ``reservation`` is None when the request never reserved.
        ``budget_in_background`` returns once the record is durable and settles the hold after, when settling
        means a Redis round trip: the proxy uses it so a response never waits on one (the hold keeps guarding the
        cap until then). In-memory stores (leases, in process) settle inline: a task would cost more.
        """
        await asyncio.shield(self._settle(reservation, record, budget_in_background))

    async def _settle(self, reservation: Reservation | None, record: UsageRecord, budget_in_background: bool) -> None:
        await self.ledger.write(record)
        if reservation is None or reservation.hold is None:
            return
        # Stamped now, when the record is in the ledger: a counter seeded after this moment already holds it.
        spend = Spend.now(record.cost_nanos)
        if not (budget_in_background and self.budgets.settles_remotely):
            await self._settle_budget(reservation, record, spend)
            return
        task = asyncio.get_running_loop().create_task(self._settle_budget(reservation, record, spend))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle_budget(self, reservation: Reservation, record: UsageRecord, spend: Spend) -> None:
        assert reservation.hold is not None
        try:
            states = await self.budgets.settle(reservation.hold, spend)
        except BudgetStoreUnavailable as exc:
            # Only a bare Redis store raises here; the hold expires by TTL and the ledger has the record.
            log.warning("budgets: settle of %s not applied (%s)", record.request_id, exc)
            return
        if self.alerter is not None and states:
            self.alerter.observe(states, ((record.request_id, spend.nanos),))

    async def budget_states(self, team: str, policy: BudgetPolicy, day: date | None = None) -> list[CapState]:
        """Live totals of the team-level caps (for ``/v1/spend/teams``), including other replicas' spend."""
        day = day or datetime.now(UTC).date()
        return await self.budgets.states(caps_for(policy, team, "", {}, day))

    async def teams_status(self, policies: Mapping[str, BudgetPolicy], day: date | None = None
                           ) -> list[dict[str, str | None]]:
        """Each team's spend this day and month (from the ledger) against its caps: ``/v1/spend/teams``."""
        day = day or datetime.now(UTC).date()
        spent = {t.team: t for t in await self.ledger.spend_by_team(day)}
        out = []
        for team in sorted(set(spent) | set(policies)):
            limits = policies[team].team if team in policies else None
            s = spent.get(team)
            out.append({
                "team": team,
                "day_usd": format_usd(s.day_nanos if s else 0),
                "month_usd": format_usd(s.month_nanos if s else 0),
                "daily_budget_usd": None if limits is None or limits.daily_usd is None else str(limits.daily_usd),
                "monthly_budget_usd": (None if limits is None or limits.monthly_usd is None
                                       else str(limits.monthly_usd)),
            })
        return out

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.budgets.close()  # first: closing budget leases reports their spend, which the alerter evaluates
        if self.alerter is not None:
            await self.alerter.close()
        await self.ledger.close()
