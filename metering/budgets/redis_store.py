"""Budget counters in Redis, shared live by every proxy replica; each operation is one Lua script, so atomic.

Per cap and period, a hash holds ``spent``, ``reserved`` and one ``r:<hold id>`` field per open hold, a sorted set
(``:holds``) the open holds' expiry times, and another (``:settled``) a minute's marks of settled holds. Every reserve first drops expired holds, so a proxy killed between reserve and
settle leaks its reservation for at most the hold's TTL. Amounts go to Redis as the decimal strings we were given
(Lua numbers are doubles and print large integers as ``1e+15``, which ``HINCRBY`` rejects); comparisons in Lua are
exact below 2**53 nano-dollars (~9 million USD per counter).

Redis here has no persistence. After a restart every counter is gone; with a ``seeder`` the first reserve refills a
counter from the ledger's committed spend (``init`` marks a counter as filled), and settles skip unfilled counters
because the ledger, which the fill reads, holds their records. Records still in flight at that moment (spooled, not
yet committed) can be missed once, an undercount bounded by one group-commit batch.

Every script is safe to re-send after a lost reply (redis-py retries on connection errors): a reserve whose hold
exists returns it, a settled hold leaves a ``d:<hold id>`` mark for a minute so a second settle changes nothing, and a
reconciliation batch carries a marker. A reply lost for good leaves a reserve's hold to expire by its TTL and a
settle to be re-counted by the fail-open reconciliation (an over-count, the safe direction).

For Redis Cluster put a hash tag in the prefix (``tg:{budgets}``) so a script's keys share a slot.
"""

from __future__ import annotations

from typing import Any, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from metering.budgets.base import BudgetExceeded, BudgetStore, BudgetStoreUnavailable, Cap, CapState, Hold, Seeder

_PURGE = """
local function purge(h, z, d, now)
  for _, rid in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', now)) do
    local amt = redis.call('HGET', h, 'r:' .. rid)
    if amt and amt ~= '0' then redis.call('HINCRBY', h, 'reserved', '-' .. amt) end
    redis.call('HDEL', h, 'r:' .. rid)
    redis.call('ZREM', z, rid)
  end
  for _, rid in ipairs(redis.call('ZRANGEBYSCORE', d, '-inf', now)) do
    redis.call('HDEL', h, 'd:' .. rid)
    redis.call('ZREM', d, rid)
  end
end
"""

# KEYS per cap: counter hash, open holds (zset of expiry), settled marks (zset of expiry).
# ARGV: id, amount, ttl_ms, enforce, need_seed, (limit_i, expireat_i)...
RESERVE = _PURGE + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, amount = ARGV[1], ARGV[2]
local n = #KEYS / 3
local missing = {}
for i = 1, n do
  if redis.call('HEXISTS', KEYS[3*i-2], 'init') == 0 then
    if ARGV[5] == '1' then table.insert(missing, i) else redis.call('HSET', KEYS[3*i-2], 'init', '1') end
  end
end
if #missing > 0 then return {-1, missing} end
local spent = {}
if n > 0 and redis.call('HEXISTS', KEYS[1], 'r:' .. id) == 1 then  -- a re-sent reserve: already held
  for i = 1, n do table.insert(spent, redis.call('HGET', KEYS[3*i-2], 'spent') or '0') end
  return {1, spent}
end
for i = 1, n do
  local h = KEYS[3*i-2]
  purge(h, KEYS[3*i-1], KEYS[3*i], now)
  if ARGV[4] == '1' then
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

# KEYS as RESERVE.   ARGV: id, actual, need_seed, expireat_i...   -> {spent_i, reserved_i}...
# A settled hold leaves a 'd:<id>' mark for a minute (purged like an expired hold): a re-sent settle is a no-op.
SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, actual = ARGV[1], ARGV[2]
local out = {}
for i = 1, #KEYS / 3 do
  local h, z, d, exp = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i], ARGV[3 + i]
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
  if fresh and (ARGV[3] ~= '1' or redis.call('HEXISTS', h, 'init') == 1) then
    redis.call('HINCRBY', h, 'spent', actual)
    redis.call('EXPIREAT', h, exp)
  end
  table.insert(out, {redis.call('HGET', h, 'spent') or '0', redis.call('HGET', h, 'reserved') or '0'})
end
return out
"""

# KEYS: hash.   ARGV: base, expireat.   Fill a counter once (the first replica to get here wins).
SEED = """
if redis.call('HEXISTS', KEYS[1], 'init') == 1 then return 0 end
redis.call('HINCRBY', KEYS[1], 'spent', ARGV[1])
redis.call('HSET', KEYS[1], 'init', '1')
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return 1
"""

# KEYS: marker, hash_1, hash_2, ...   ARGV: marker_ttl_s, need_seed, (delta_i, expireat_i)...
# Adds spend accounted locally during an outage; the marker makes a retried call (lost reply) apply once.
RECONCILE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for i = 2, #KEYS do
  local h = KEYS[i]
  if ARGV[2] ~= '1' or redis.call('HEXISTS', h, 'init') == 1 then
    redis.call('HINCRBY', h, 'spent', ARGV[1 + 2*(i-1)])
    if ARGV[2] ~= '1' then redis.call('HSET', h, 'init', '1') end
    redis.call('EXPIREAT', h, ARGV[2 + 2*(i-1)])
  end
end
return 1
"""

# Any Redis failure (unreachable, timeout, or a script error on keys it does not understand) goes through the
# team's fail-open/fail-closed policy: a budget store problem must never surface as a 500.
_UNAVAILABLE = (RedisError, OSError)


class RedisBudgetStore(BudgetStore):
    settles_remotely = True

    def __init__(self, client: aioredis.Redis, prefix: str = "tg", seeder: Seeder | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self._seeder = seeder
        # counter id -> spent as last reported; the fail-open fallback starts its local counters from these.
        self.last_spent: dict[str, int] = {}
        self._reserve = client.register_script(RESERVE)
        self._settle = client.register_script(SETTLE)
        self._seed = client.register_script(SEED)
        self._reconcile = client.register_script(RECONCILE)

    @classmethod
    def from_url(cls, url: str, prefix: str = "tg", seeder: Seeder | None = None,
                 timeout_s: float = 0.5) -> "RedisBudgetStore":
        # Short timeouts: a request must not hang on a dead Redis, it must fail over (open) or fail fast (closed).
        # redis-py's retries stay on (they reconnect stale pooled connections after a Redis restart): every script
        # here is safe to re-send.
        client = aioredis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        return cls(client, prefix, seeder)

    def _keys(self, caps: Sequence[Cap]) -> list[str]:
        keys = []
        for cap in caps:
            base = f"{self.prefix}:budget:{cap.counter_id}"
            keys += [base, base + ":holds", base + ":settled"]
        return keys

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except _UNAVAILABLE as exc:
            raise BudgetStoreUnavailable(f"Redis failed: {type(exc).__name__}: {exc}") from exc

    async def reserve(self, hold_id: str, caps: Sequence[Cap], amount: int, ttl_s: float, enforce: bool = True,
                      fail_open: bool = False) -> Hold:
        keys = self._keys(caps)
        args: list[Any] = [hold_id, str(amount), str(int(ttl_s * 1000)), "1" if enforce else "0",
                           "1" if self._seeder else "0"]
        for cap in caps:
            args += [str(cap.limit_nanos), str(cap.expires_at)]
        for _ in range(3):
            res = await self._call(self._reserve, keys, args)
            if res[0] == 1:
                for cap, spent in zip(caps, res[1]):
                    self.last_spent[cap.counter_id] = int(spent)
                return Hold(hold_id, tuple(caps), amount)
            if res[0] == 0:
                i = int(res[1]) - 1
                raise BudgetExceeded(caps[i], int(res[2]), int(res[3]), amount)
            for i in res[1]:
                await self._fill(caps[int(i) - 1])
        raise BudgetStoreUnavailable("budget counters could not be initialised")

    async def _fill(self, cap: Cap) -> None:
        assert self._seeder is not None
        base = await self._seeder(cap)
        await self._call(self._seed, self._keys([cap])[:1], [str(base), str(cap.expires_at)])

    async def settle(self, hold: Hold, actual: int) -> list[CapState]:
        """Raises ``BudgetStoreUnavailable`` on an outage; ``FailoverBudgetStore`` turns that into local accounting."""
        args: list[Any] = [hold.id, str(actual), "1" if self._seeder else "0"]
        args += [str(cap.expires_at) for cap in hold.caps]
        res = await self._call(self._settle, self._keys(hold.caps), args)
        states = [CapState(cap, int(s), int(r)) for cap, (s, r) in zip(hold.caps, res)]
        for st in states:
            self.last_spent[st.cap.counter_id] = st.spent_nanos
        return states

    async def reconcile(self, batch_id: str, deltas: Sequence[tuple[Cap, int]]) -> bool:
        """Add locally accounted spend once per ``batch_id``; False if that batch was already applied."""
        keys = [f"{self.prefix}:reconciled:{batch_id}"] + [self._keys([cap])[0] for cap, _ in deltas]
        args: list[Any] = [str(7 * 86400), "1" if self._seeder else "0"]
        for cap, delta in deltas:
            args += [str(delta), str(cap.expires_at)]
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
