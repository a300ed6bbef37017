"""Child processes for the budget tests.

``race``: 25 concurrent reserve/settle loops against one team's cap until settled spend leaves no room for another
reservation (``run_s`` is only a safety limit); prints the total it settled.

``lease``: a worker that serves ``n`` requests of one team from a budget lease (ledger records written, lease not
yet settled to Redis), prints ``served``, and waits to be killed (``kill -9`` tests). The requests start at the
parent's ``started_at``, so both count in the same day's counter even when the test runs across midnight.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from datetime import date

from metering.budgets.base import BudgetExceeded, Cap
from metering.budgets.redis_store import RedisBudgetStore


async def race(url: str, prefix: str, cap_nanos: str, amount: str, run_s: str, tag: str, day: str) -> None:
    store = RedisBudgetStore.from_url(url, prefix=prefix, timeout_s=5)
    cap = Cap("team", "race", "", "day", date.fromisoformat(day), int(cap_nanos))
    settled = 0
    # Both processes start together: each says it is ready, then waits for the parent's go key.
    await store.client.ping()
    print("ready", flush=True)
    while not await store.client.exists(f"{prefix}:go"):
        await asyncio.sleep(0.002)
    deadline = time.monotonic() + float(run_s)

    async def client(c: int) -> None:
        nonlocal settled
        i = 0
        while time.monotonic() < deadline:
            i += 1
            try:
                hold = await store.reserve(f"{tag}-{c}-{i}", [cap], int(amount), ttl_s=60)
            except BudgetExceeded as exc:
                if exc.spent_nanos + int(amount) > cap.limit_nanos:
                    return  # full by settled spend, not merely by the other clients' holds
                await asyncio.sleep(0.002)
                continue
            await asyncio.sleep(random.random() * 0.01)  # the upstream call
            await store.settle(hold, int(amount))
            settled += int(amount)

    await asyncio.gather(*(client(c) for c in range(25)))
    await store.close()
    print(settled)


async def lease(redis_url: str, ledger_url: str, spool_dir: str, team: str, daily_usd: str, n: str,
                cost_nanos: str, started_at: str) -> None:
    from datetime import datetime
    from decimal import Decimal

    from metering.budgets.failover import FailoverBudgetStore
    from metering.budgets.leases import LeasedBudgetStore
    from metering.budgets.policy import BudgetLimits, BudgetPolicy
    from metering.ledger import open_ledger
    from metering.service import Meter, ledger_seeder
    from tests.metering_fixtures import make_record

    ledger = open_ledger(ledger_url, spool_dir=spool_dir)
    await ledger.start()
    remote = RedisBudgetStore.from_url(redis_url, seeder=ledger_seeder(ledger))
    # The lease lives for a minute (only the kill ends it) but its hold in Redis expires a second after the kill.
    meter = Meter(ledger, LeasedBudgetStore(FailoverBudgetStore(remote), max_age_s=60, lease_ttl_s=1.0))
    policy = BudgetPolicy(team=BudgetLimits(daily_usd=Decimal(daily_usd)), redis_failure="closed")
    now = datetime.fromisoformat(started_at)
    for i in range(int(n)):
        rid = f"child-{i}"
        res = await meter.reserve(team, "k", {}, 2 * int(cost_nanos), policy, request_id=rid, started_at=now)
        await meter.settle(res, make_record(i, request_id=rid, team=team, key_id="k", started_at=now, ended_at=now,
                                            cost_nanos=int(cost_nanos)))
    print("served", flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run({"race": race, "lease": lease}[sys.argv[1]](*sys.argv[2:]))
