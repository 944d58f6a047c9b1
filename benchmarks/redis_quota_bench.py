"""The Redis tier of the rate limiter: GCRA checks/s through the Lua script, pipelined and one by one,
against plain pipelined GETs on the same server in the same run (the baseline a script can't beat).

    python -m benchmarks.redis_quota_bench [--checks 200000] [--pipeline 100]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import redis.asyncio as redis

from gateway import embedded
from gateway.quota import GCRA_LUA, RedisQuota


async def run(url: str, checks: int, depth: int) -> None:
    r = redis.Redis.from_url(url)
    sha = await r.script_load(GCRA_LUA)
    keys = [f"bench:q:p:{i % 50}" for i in range(depth)]

    async def pipelined(make: object) -> float:
        start = time.perf_counter()
        for _ in range(checks // depth):
            pipe = r.pipeline(transaction=False)
            for key in keys:
                make(pipe, key)  # type: ignore[operator]
            await pipe.execute()
        return checks / (time.perf_counter() - start)

    script = await pipelined(lambda p, k: p.evalsha(sha, 2, k, k + ":b", 1, 10**9, 1, 10**9, 1))
    gets = await pipelined(lambda p, k: p.get(k))
    quota = RedisQuota(r, "bench:", 1_000_000_000, 1_000_000_000)
    n = min(checks, 20_000)
    start = time.perf_counter()
    for i in range(n):
        await quota.check(f"p{i % 50}", "b")
    single = n / (time.perf_counter() - start)
    await r.aclose()
    print(f"\nredis quota tier (GCRA in Lua, EVALSHA, 2 scopes per check), {checks} checks, pipeline {depth}")
    print(f"  pipelined GCRA checks            {script:>10,.0f} checks/s")
    print(f"  pipelined GET (baseline)         {gets:>10,.0f} ops/s   script/GET {script / gets:.2f}")
    print(f"  one check at a time (RedisQuota) {single:>10,.0f} checks/s  ({1e6 / single:.0f} µs each)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checks", type=int, default=200_000)
    parser.add_argument("--pipeline", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="redis-bench-") as tmp:
        server = embedded.start_redis(Path(tmp))
        try:
            asyncio.run(run(server.url, args.checks, args.pipeline))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
