"""Child process for the budget race test: 25 concurrent reserve/settle loops against one team's cap for a while;
prints the total it settled."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from datetime import date

from metering.budgets.base import BudgetExceeded, Cap
from metering.budgets.redis_store import RedisBudgetStore


async def main(url: str, prefix: str, cap_nanos: str, amount: str, run_s: str, tag: str, day: str) -> None:
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
            except BudgetExceeded:
                await asyncio.sleep(0.002)
                continue
            await asyncio.sleep(random.random() * 0.01)  # the upstream call
            await store.settle(hold, int(amount))
            settled += int(amount)

    await asyncio.gather(*(client(c) for c in range(25)))
    await store.close()
    print(settled)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:8]))
