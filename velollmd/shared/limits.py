"""Per-key limits shared by every instance: one atomic Lua script per check, Redis's clock.

The same windows as sched/keylimits.py, kept in Redis under `<prefix>k:<name>:`:
    r    sorted set of admission times (ms) of the last minute: the requests-per-minute limit
    tm   hash second-slot -> tokens (60 one-second buckets): tokens per minute
    td   hash minute-slot -> tokens (1440 one-minute buckets): tokens per day
The check script answers the seconds to wait for each limit, or admits and counts the request.
`None` from admit() means Redis is unavailable: the caller falls back to its local ledger.
"""
from __future__ import annotations

import itertools
from typing import Callable

from ..sched.keylimits import KeyLimits
from .client import RedisClient, RedisUnavailable, Script
from .resp import ReplyError

ADMIT = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm, tpd = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local waits = {0, 0, 0}
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  local count = redis.call('ZCARD', KEYS[1])
  if count >= rpm then
    local freeing = redis.call('ZRANGE', KEYS[1], count - rpm, count - rpm, 'WITHSCORES')
    waits[1] = math.max(1, tonumber(freeing[2]) + 60000 - now)
  end
end
local function window_wait(key, limit, bucket_ms, num_buckets)
  local slot = math.floor(now / bucket_ms)
  local fields = redis.call('HGETALL', key)
  local total, buckets = 0, {}
  for i = 1, #fields, 2 do
    local s, n = tonumber(fields[i]), tonumber(fields[i + 1])
    if s <= slot - num_buckets then redis.call('HDEL', key, fields[i])
    else total = total + n; table.insert(buckets, {s, n}) end
  end
  if total < limit then return 0 end
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  for _, b in ipairs(buckets) do
    total = total - b[2]
    if total < limit then return math.max(1, (b[1] + num_buckets) * bucket_ms - now) end
  end
  return 1
end
if tpm > 0 then waits[2] = window_wait(KEYS[2], tpm, 1000, 60) end
if tpd > 0 then waits[3] = window_wait(KEYS[3], tpd, 60000, 1440) end
if waits[1] == 0 and waits[2] == 0 and waits[3] == 0 and rpm > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], 60000)
end
return waits
""")

RECORD = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HINCRBY', KEYS[1], math.floor(now / 1000), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 61000)
redis.call('HINCRBY', KEYS[2], math.floor(now / 60000), ARGV[1])
redis.call('PEXPIRE', KEYS[2], 86460000)
return 1
""")

LIMIT_NAMES = ("requests", "tokens", "tokens_per_day")     # the order of the script's waits


class SharedLimits:
    def __init__(self, client: RedisClient, prefix: bytes, on_error: Callable[[str, BaseException], None]):
        self.client, self.prefix, self.on_error = client, prefix, on_error
        self._members = itertools.count()
        self.member_prefix = ""                               # set by the tier: the instance id

    def _keys(self, name: str) -> list[bytes]:
        base = self.prefix + b"k:" + name.encode() + b":"
        return [base + b"r", base + b"tm", base + b"td"]

    async def admit(self, name: str, limits: KeyLimits) -> dict[str, float] | None:
        """{} when admitted (and counted), {limit: seconds to wait} when over, None when Redis
        cannot say."""
        member = f"{self.member_prefix}:{next(self._members)}"
        try:
            waits = await self.client.run_script(ADMIT, self._keys(name),
                                                 [limits.rpm, limits.tpm, limits.tokens_per_day, member])
        except (RedisUnavailable, ReplyError) as exc:
            self.on_error("limits", exc)
            return None
        return {limit: ms / 1000 for limit, ms in zip(LIMIT_NAMES, waits) if ms > 0}

    async def record_tokens(self, name: str, tokens: int) -> None:
        try:
            await self.client.run_script(RECORD, self._keys(name)[1:], [tokens])
        except (RedisUnavailable, ReplyError) as exc:
            self.on_error("limits", exc)
