"""``metering.budget_lease_ttl_s``: how long a killed worker's budget lease holds its share of a cap back. Checked at
load (> 0) and in force in the worker's meter: the lease hold a reservation takes on a real Redis expires after it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import redis

from pipeline.budget import budget_policy
from proxy.runtime import open_meter
from router.config_loader import ConfigError, parse_policy
from tests.conftest import require_service
from tests.metering_fixtures import REDIS_URL
from tests.test_pipeline import policy_text


def policy(team: str, ttl: str | None, tmp_ledger: str) -> str:
    lease = f", budget_lease_ttl_s: {ttl}" if ttl is not None else ""
    metering = f"metering: {{ledger: 'sqlite:///{tmp_ledger}', redis: '{REDIS_URL}'{lease}}}\n"
    text = policy_text("    budgets: {team: {daily_usd: '10'}}\n").replace("\n  t:\n", f"\n  {team}:\n")
    return metering + text


@pytest.mark.parametrize("ttl", ["0", "-1"])
def test_a_lease_ttl_that_is_not_positive_is_refused_at_load(tmp_path: Path, ttl: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_policy(policy("t", ttl, str(tmp_path / "l.db")))
    assert "budget_lease_ttl_s" in str(refused.value)


def test_the_lease_hold_expires_after_the_configured_ttl(tmp_path: Path) -> None:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        require_service("Redis", False, str(exc))
    team = f"leasettl{uuid.uuid4().hex[:10]}"
    parsed = parse_policy(policy(team, "3", str(tmp_path / "ledger.db")))
    assert parse_policy(policy(team, None, str(tmp_path / "l.db"))).config.metering.budget_lease_ttl_s == 30

    async def reserve_once() -> None:
        meter = await open_meter(parsed)
        try:
            reservation = await meter.reserve(team, "k", {}, 1000, budget_policy(parsed.teams[team]),
                                              request_id="r1")
            assert reservation.hold is not None
        finally:
            await meter.close()

    try:
        asyncio.run(reserve_once())
        [holds] = [k for k in client.scan_iter(match=f"*:{team}:*:holds")]
        seconds, micros = client.time()
        now_ms = seconds * 1000 + micros // 1000  # Redis's clock, the one hold expiries are stamped with
        leases = [(m.decode(), score) for m, score in client.zrange(holds, 0, -1, withscores=True)
                  if m.decode().startswith("lease-")]
        assert leases, "the reservation was not served from a lease"
        assert all(score - now_ms <= 3_000 for _, score in leases), leases  # not the 30 s default
    finally:
        keys = list(client.scan_iter(match=f"*{team}*"))
        if keys:
            client.delete(*keys)
        client.close()
