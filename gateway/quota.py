"""Cluster-wide quotas in Redis: the second tier behind the in-process limiter.

One GCRA per (scope, key) in a Lua script run with EVALSHA, so several gateway replicas share a
provider's or brand's budget. All scopes of a call are checked in one script run, all-or-nothing,
with the server's clock (``TIME``) so replicas' clocks don't matter. Redis failing must not stop play:
the check fails OPEN, counts it in a metric and logs it (at most once per interval).
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as redis
from redis.exceptions import NoScriptError, RedisError

from core.errors import RateLimited

log = logging.getLogger(__name__)

# KEYS: one key per scope; ARGV: interval_us, burst, (repeated per key), cost
# Returns 0 when allowed (all keys consumed) or the retry-after in microseconds (nothing consumed).
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[#ARGV])
local news = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new = tat + cost * interval
  local allow_at = new - burst * interval
  if allow_at > now then
    if allow_at - now > wait then wait = allow_at - now end
  end
  news[i] = new
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  local ttl = math.ceil((news[i] - now) / 1000) + 1000
  redis.call('SET', key, news[i], 'PX', ttl)
end
return 0
"""


class RedisQuota:
    def __init__(self, client: redis.Redis, prefix: str, rate_per_s: int, burst: int) -> None:
        self.r = client
        self.prefix = prefix
        self.interval_us = max(1, 1_000_000 // rate_per_s)
        self.burst = burst
        self._sha: str | None = None
        self.fail_open = 0
        self.limited = 0
        self._last_log = 0.0

    async def _run(self, keys: list[str], args: list[int]) -> int:
        if self._sha is None:
            self._sha = await self.r.script_load(GCRA_LUA)
        try:
            return int(await self.r.evalsha(self._sha, len(keys), *keys, *args))
        except NoScriptError:
            self._sha = None
            return await self._run(keys, args)

    async def check(self, provider_id: str, brand_id: str, cost: int = 1) -> None:
        keys = [f"{self.prefix}q:p:{provider_id}", f"{self.prefix}q:b:{brand_id}"]
        args = [self.interval_us, self.burst, self.interval_us, self.burst, cost]
        try:
            wait_us = await self._run(keys, args)
        except (RedisError, OSError) as exc:
            self.fail_open += 1
            now = time.monotonic()
            if now - self._last_log > 10:
                self._last_log = now
                log.warning("redis quota unavailable, failing open (%d so far): %s", self.fail_open, exc)
            return
        if wait_us:
            self.limited += 1
            raise RateLimited("cluster-wide quota exceeded", retry_after_s=wait_us / 1e6)
