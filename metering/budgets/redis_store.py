"""Budget counters in Redis, shared live by every proxy replica; each operation is one Lua script, so atomic.

Per cap and period, a hash holds ``spent``, ``reserved`` and one ``r:<hold id>`` field per open hold, a sorted set
(``:holds``) the open holds' expiry times, and another (``:settled``) a minute's marks of settled holds. Every
reserve first drops expired holds, so a proxy killed between reserve and settle leaks its reservation for at most
the hold's TTL. Amounts go to Redis as the decimal strings we were given (Lua numbers are doubles and print large
integers as ``1e+15``, which ``HINCRBY`` rejects); comparisons in Lua are exact below 2**53 nano-dollars (~9
million USD per counter).

The ledger is the source of truth, and with a ``seeder`` Redis follows it after any fault:

- Redis here has no persistence. After a restart a counter has no ``init`` field; the first reserve fills it from
  the ledger's committed spend and stamps it ``seeded`` = the wall time (ms) before the seeder flushed the ledger.
- A hold that expires unsettled (its worker was killed, holding a lease's unreported spend) marks its counter
  ``stale``; the next reserve re-seeds it the same way. A stale seed never replaces a newer one.
- Settled spend carries when its records were written (``Spend``): a counter adds only the parts written at or
  after its ``seeded`` stamp, because the seed already holds the earlier ones. So a hold taken before a restart and
  settled after it, or spend accounted locally during an outage and reconciled after the counter was re-seeded,
  is not counted twice; and a settle on an unfilled counter is skipped, because the fill will read its record.
- A fill reads the ledger before it stores its seed, so spend settled in between would be lost (skipped by an
  unfilled counter, overwritten in a stale one) though its record may be too new for the seed: this worker's
  settles and reconciliations of a counter it is filling wait for the fill.

What remains: the seed's flush commits what this server's other workers had spooled, but records another host
wrote just before or during a seed and had not committed when the seed read the ledger (one group-commit linger),
or another worker wrote after the flush read its spool, are missed if their settle reaches Redis before the seed
does; and records written during the seed's own flush may count twice. Both are far below one lease.

Every script is safe to re-send after a lost reply (the client retries once on a connection error, which is what a
stale pooled connection after a Redis restart gives): a reserve whose hold exists returns it, a settled hold leaves
a ``d:<hold id>`` mark for a minute so a second settle changes nothing, and a reconciliation batch carries a marker.

For Redis Cluster put a hash tag in the prefix (``tg:{budgets}``) so a script's keys share a slot.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from metering.budgets.base import (
    BudgetExceeded,
    BudgetStore,
    BudgetStoreUnavailable,
    Cap,
    CapState,
    Hold,
    Seeder,
    Spend,
    as_spend,
    wall_ms,
)
from metering.redis_client import open_redis

log = logging.getLogger(__name__)

# Drops expired holds. With ``mark`` (a seeder is configured) an expired hold, which nobody settled, marks a filled
# counter stale: whatever its worker spent from it is in the ledger but not here.
_PURGE = """
local function purge(h, z, d, now, mark)
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  for _, rid in ipairs(expired) do
    local amt = redis.call('HGET', h, 'r:' .. rid)
    if amt and amt ~= '0' then redis.call('HINCRBY', h, 'reserved', '-' .. amt) end
    redis.call('HDEL', h, 'r:' .. rid)
    redis.call('ZREM', z, rid)
  end
  if mark and #expired > 0 and redis.call('HEXISTS', h, 'init') == 1 then redis.call('HSET', h, 'stale', '1') end
  for _, rid in ipairs(redis.call('ZRANGEBYSCORE', d, '-inf', now)) do
    redis.call('HDEL', h, 'd:' .. rid)
    redis.call('ZREM', d, rid)
  end
end
"""

# Adds the parts of a Spend (ARGV[first], ARGV[first+1] = written_ms, nanos; np of them) written at or after the
# counter's seed.
_ADD_SPEND = """
local function add_spend(h, first, np)
  local seeded = tonumber(redis.call('HGET', h, 'seeded') or '0')
  for j = 0, np - 1 do
    if tonumber(ARGV[first + 2*j]) >= seeded then redis.call('HINCRBY', h, 'spent', ARGV[first + 2*j + 1]) end
  end
end
"""

# KEYS per cap: counter hash, open holds (zset of expiry), settled marks (zset of expiry).
# ARGV: id, amount, ttl_ms, enforce, mode, (limit_i, expireat_i)...
# mode: '0' no seeder (a new counter starts at 0); '1' a counter without init, or stale, is returned as missing for
# the caller to seed; '2' the seeder failed: serve a stale counter as it is, only an unfilled one is missing.
RESERVE = _PURGE + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, amount, mode = ARGV[1], ARGV[2], ARGV[5]
local n = #KEYS / 3
for i = 1, n do purge(KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i], now, mode ~= '0') end
local missing = {}
for i = 1, n do
  local h = KEYS[3*i-2]
  if redis.call('HEXISTS', h, 'init') == 0 then
    if mode == '0' then
      redis.call('HSET', h, 'init', '1')
      redis.call('EXPIREAT', h, ARGV[5 + 2*i])
    else
      table.insert(missing, i)
    end
  elseif mode == '1' and redis.call('HEXISTS', h, 'stale') == 1 then
    table.insert(missing, i)
  end
end
if #missing > 0 then return {-1, missing} end
local spent = {}
if n > 0 and redis.call('HEXISTS', KEYS[1], 'r:' .. id) == 1 then  -- a re-sent reserve: already held
  for i = 1, n do table.insert(spent, redis.call('HGET', KEYS[3*i-2], 'spent') or '0') end
  return {1, spent}
end
if ARGV[4] == '1' then
  for i = 1, n do
    local h = KEYS[3*i-2]
    local spent = redis.call('HGET', h, 'spent') or '0'
    local reserved = redis.call('HGET', h, 'reserved') or '0'
    if tonumber(spent) + tonumber(reserved) + tonumber(amount) > tonumber(ARGV[4 + 2*i]) then
      return {0, i, spent, reserved}
    end
  end
end
for i = 1, n do
  local h, z, exp = KEYS[3*i-2], KEYS[3*i-1], ARGV[5 + 2*i]
  redis.call('HINCRBY', h, 'reserved', amount)
  redis.call('HSET', h, 'r:' .. id, amount)
  redis.call('ZADD', z, now + tonumber(ARGV[3]), id)
  redis.call('EXPIREAT', h, exp)
  redis.call('EXPIREAT', z, exp)
  table.insert(spent, redis.call('HGET', h, 'spent') or '0')
end
return {1, spent}
"""

# KEYS as RESERVE.   ARGV: id, mode, np, (written_ms, nanos) * np, expireat_i...   -> {spent_i, reserved_i}...
# A settled hold leaves a 'd:<id>' mark for a minute (purged like an expired hold): a re-sent settle is a no-op.
SETTLE = _ADD_SPEND + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, mode, np = ARGV[1], ARGV[2], tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS / 3 do
  local h, z, d, exp = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i], ARGV[3 + 2*np + i]
  local fresh = redis.call('HEXISTS', h, 'd:' .. id) == 0
  if fresh then
    local amt = redis.call('HGET', h, 'r:' .. id)
    if amt and amt ~= '0' then redis.call('HINCRBY', h, 'reserved', '-' .. amt) end
    redis.call('HDEL', h, 'r:' .. id)
    redis.call('ZREM', z, id)
    redis.call('HSET', h, 'd:' .. id, '1')
    redis.call('ZADD', d, now + 60000, id)
    redis.call('EXPIREAT', d, exp)
  end
  if fresh and (mode ~= '1' or redis.call('HEXISTS', h, 'init') == 1) then
    add_spend(h, 4, np)
    redis.call('EXPIREAT', h, exp)
  end
  table.insert(out, {redis.call('HGET', h, 'spent') or '0', redis.call('HGET', h, 'reserved') or '0'})
end
return out
"""

# KEYS: hash.   ARGV: base, expireat, seeded_ms.   Fill an unfilled counter, or refill a stale one from a snapshot
# newer than its last; the first replica to get here wins, the others' fills change nothing.
SEED = """
local h = KEYS[1]
if redis.call('HEXISTS', h, 'init') == 1 then
  if redis.call('HEXISTS', h, 'stale') == 0 then return 0 end
  if tonumber(redis.call('HGET', h, 'seeded') or '0') >= tonumber(ARGV[3]) then return 0 end
end
redis.call('HSET', h, 'spent', ARGV[1], 'init', '1', 'seeded', ARGV[3])
redis.call('HDEL', h, 'stale')
redis.call('EXPIREAT', h, ARGV[2])
return 1
"""

# KEYS: marker, hash_1, hash_2, ...   ARGV: marker_ttl_s, mode, then per hash: expireat, np, (written_ms, nanos)*np
# Adds spend accounted locally during an outage; the marker makes a retried call (lost reply) apply once.
RECONCILE = _ADD_SPEND + """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local a = 3
for i = 2, #KEYS do
  local h, exp, np = KEYS[i], ARGV[a], tonumber(ARGV[a + 1])
  if ARGV[2] ~= '1' or redis.call('HEXISTS', h, 'init') == 1 then
    add_spend(h, a + 2, np)
    if ARGV[2] ~= '1' then redis.call('HSET', h, 'init', '1') end
    redis.call('EXPIREAT', h, exp)
  end
  a = a + 2 + 2 * np
end
return 1
"""

# KEYS as RESERVE.   ARGV: id, ttl_ms.   -> 1 if the hold is still there (its expiry moved), else 0.
EXTEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = 0
for i = 1, #KEYS / 3 do
  if redis.call('HEXISTS', KEYS[3*i-2], 'r:' .. ARGV[1]) == 1 then
    redis.call('ZADD', KEYS[3*i-1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
    held = 1
  end
end
return held
"""

# Any Redis failure (unreachable, timeout, or a script error on keys it does not understand) goes through the
# team's fail-open/fail-closed policy: a budget store problem must never surface as a 500.
_UNAVAILABLE = (RedisError, OSError)


class RedisBudgetStore(BudgetStore):
    settles_remotely = True

    def __init__(self, client: aioredis.Redis, prefix: str = "tg", seeder: Seeder | None = None,
                 seed_timeout_s: float = 5.0, clock_ms: Callable[[], int] = wall_ms) -> None:
        """``seed_timeout_s`` bounds a (re)fill: with the ledger's database down, a stale counter is served as it
        is and an unfilled one is unavailable (fail-open teams then account locally)."""
        self.client = client
        self.prefix = prefix
        self._seeder = seeder
        self._mode = "1" if seeder is not None else "0"
        self._seed_timeout_s = seed_timeout_s
        self._clock_ms = clock_ms
        # counter id -> spent as last reported; the fail-open fallback starts its local counters from these.
        self.last_spent: dict[str, int] = {}
        self._filling: dict[str, asyncio.Future[bool]] = {}  # one fill per counter at a time in this worker
        self._reserve = client.register_script(RESERVE)
        self._settle = client.register_script(SETTLE)
        self._seed = client.register_script(SEED)
        self._reconcile = client.register_script(RECONCILE)
        self._extend = client.register_script(EXTEND)

    @classmethod
    def from_url(cls, url: str, prefix: str = "tg", seeder: Seeder | None = None, timeout_s: float = 0.5,
                 health_check_interval_s: int = 30) -> RedisBudgetStore:
        """Any URL ``metering.redis_client`` opens (one server or a Sentinel-managed master), with its short timeouts
        and one retry on a dropped connection (every script here is safe to re-send)."""
        return cls(open_redis(url, timeout_s=timeout_s, health_check_interval_s=health_check_interval_s), prefix,
                   seeder)

    def _keys(self, caps: Sequence[Cap]) -> list[str]:
        keys = []
        for cap in caps:
            base = f"{self.prefix}:budget:{cap.counter_id}"
            keys += [base, base + ":holds", base + ":settled"]
        return keys

    @staticmethod
    def _parts(spend: Spend) -> list[str]:
        args = [str(len(spend.parts))]
        for ms, nanos in spend.parts:
            args += [str(ms), str(nanos)]
        return args

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except _UNAVAILABLE as exc:
            raise BudgetStoreUnavailable(f"Redis failed: {type(exc).__name__}: {exc}") from exc

    async def reserve(self, hold_id: str, caps: Sequence[Cap], amount: int, ttl_s: float, enforce: bool = True,
                      fail_open: bool = False) -> Hold:
        keys = self._keys(caps)
        mode = self._mode
        for _ in range(3):
            args: list[Any] = [hold_id, str(amount), str(int(ttl_s * 1000)), "1" if enforce else "0", mode]
            for cap in caps:
                args += [str(cap.limit_nanos), str(cap.expires_at)]
            res = await self._call(self._reserve, keys, args)
            if res[0] == 1:
                for cap, spent in zip(caps, res[1]):
                    self.last_spent[cap.counter_id] = int(spent)
                return Hold(hold_id, tuple(caps), amount)
            if res[0] == 0:
                i = int(res[1]) - 1
                raise BudgetExceeded(caps[i], int(res[2]), int(res[3]), amount)
            if not await self._fill([caps[int(i) - 1] for i in res[1]]) and mode == "2":
                break
            # Once tried, a counter still stale (the seeder failed, or our snapshot is older than the counter's
            # seed, on a skewed clock) serves as it is: a stale counter beats no budget. An unfilled one cannot.
            mode = "2"
        raise BudgetStoreUnavailable("budget counters could not be seeded from the ledger")

    async def _fill(self, caps: Sequence[Cap]) -> bool:
        ok = True
        for cap in caps:
            fill = self._filling.get(cap.counter_id)
            if fill is None:
                fill = self._filling[cap.counter_id] = asyncio.ensure_future(self._fill_one(cap))
                fill.add_done_callback(functools.partial(self._forget_fill, cap.counter_id))
            ok = await asyncio.shield(fill) and ok
        return ok

    def _forget_fill(self, counter_id: str, _done: asyncio.Future[bool]) -> None:
        self._filling.pop(counter_id, None)

    async def _fill_one(self, cap: Cap) -> bool:
        assert self._seeder is not None
        seeded_ms = self._clock_ms()  # before the seeder flushes: every record written earlier is in its sum
        try:
            base = await asyncio.wait_for(self._seeder(cap), self._seed_timeout_s)
        except Exception as exc:  # noqa: BLE001 - whatever the ledger's trouble, the request path must go on
            log.warning("budgets: could not seed %s from the ledger (%s: %s)", cap.describe(), type(exc).__name__,
                        exc)
            return False
        if await self._call(self._seed, self._keys([cap])[:1], [str(base), str(cap.expires_at), str(seeded_ms)]):
            log.info("budgets: %s seeded from the ledger", cap.describe())
        return True

    async def _after_fills(self, caps: Sequence[Cap]) -> None:
        """Wait for this worker's fills of these counters that are under way. A fill has read the ledger before it
        stores its seed: spend settled in between would be lost, skipped by the unfilled counter or overwritten by
        the seed, though its record may have been written after the read (so the seed lacks it too). Settled after
        the fill, it counts if written at or after the seed's stamp."""
        fills = {fill for cap in caps if (fill := self._filling.get(cap.counter_id)) is not None}
        if fills:
            await asyncio.wait(fills)  # never cancels the fill, which other requests share

    async def settle(self, hold: Hold, actual: int | Spend) -> list[CapState]:
        """Raises ``BudgetStoreUnavailable`` on an outage; ``FailoverBudgetStore`` turns that into local accounting."""
        await self._after_fills(hold.caps)
        args: list[Any] = [hold.id, self._mode, *self._parts(as_spend(actual))]
        args += [str(cap.expires_at) for cap in hold.caps]
        res = await self._call(self._settle, self._keys(hold.caps), args)
        states = [CapState(cap, int(s), int(r)) for cap, (s, r) in zip(hold.caps, res)]
        for st in states:
            self.last_spent[st.cap.counter_id] = st.spent_nanos
        return states

    async def extend(self, hold: Hold, ttl_s: float) -> bool:
        return bool(await self._call(self._extend, self._keys(hold.caps), [hold.id, str(int(ttl_s * 1000))]))

    async def reconcile(self, batch_id: str, deltas: Sequence[tuple[Cap, Spend]]) -> bool:
        """Add locally accounted spend once per ``batch_id``; False if that batch was already applied."""
        await self._after_fills([cap for cap, _ in deltas])
        keys = [f"{self.prefix}:reconciled:{batch_id}"] + [self._keys([cap])[0] for cap, _ in deltas]
        args: list[Any] = [str(7 * 86400), self._mode]
        for cap, spend in deltas:
            args += [str(cap.expires_at), *self._parts(spend)]
        return bool(await self._call(self._reconcile, keys, args))

    async def states(self, caps: Sequence[Cap]) -> list[CapState]:
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in self._keys(caps)[::3]:
                pipe.hmget(key, "spent", "reserved")
            rows = await pipe.execute()
        except _UNAVAILABLE as exc:
            raise BudgetStoreUnavailable(f"Redis unreachable: {exc}") from exc
        return [CapState(cap, int(s or 0), int(r or 0)) for cap, (s, r) in zip(caps, rows)]

    async def close(self) -> None:
        await self.client.aclose()
