"""Child process for the kill -9 test: writes records as fast as it can under concurrency and prints each request id
only after ``write()`` returned. The parent SIGKILLs it mid-way and checks every printed id is in the database."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime

from metering.ledger import open_ledger
from metering.record import UsageRecord


async def main(url: str, spool_dir: str, schema: str, tag: str) -> None:
    ledger = open_ledger(url, spool_dir=spool_dir, schema=schema)
    await ledger.start()
    out = sys.stdout

    async def worker(w: int) -> None:
        i = 0
        while True:
            now = datetime.now(UTC)
            rid = f"{tag}-{w}-{i}"
            await ledger.write(UsageRecord(
                request_id=rid, started_at=now, ended_at=now, team="kill", key_id="k", requested_model="m",
                model="m", status=200, prompt_tokens=10, completion_tokens=5, cost_nanos=1234, tags={"run": tag},
            ))
            out.write(rid + "\n")
            out.flush()
            i += 1
            if i % 20 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(*(worker(w) for w in range(16)))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
