"""Per-key token buckets in Redis, for the serving gateway's rate limit.

One Lua script (`lua/token_bucket.lua`) refills and takes in a single atomic step, so every
server sharing the Redis enforces one budget per key without races. Time comes from the caller
(`now_ms`): the bucket is pure arithmetic over it, which keeps tests deterministic. Serving must
pass the wall clock here, never the pinned replay clock — a clock that stands still would
never refill. A caller whose clock runs behind the stored one refills nothing (tokens never go
negative), so modest skew between servers only delays refills.

Keys are `{k:<name>}:rate`: the hash tag keeps each bucket on one Redis Cluster slot. A bucket
expires once it would have refilled to full, so idle keys cost no memory (a missing bucket and a
full one behave the same).
"""

from __future__ import annotations

import math
from pathlib import Path

import redis.asyncio

_SCRIPT = (Path(__file__).with_name("lua") / "token_bucket.lua").read_text()


def bucket_key(name: str) -> str:
    """The Redis key of key `name`'s bucket (hash-tagged for Redis Cluster)."""
    return f"{{k:{name}}}:rate"


class TokenBucket:
    """Atomic token buckets over an async Redis client (which the caller owns and closes)."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._take = client.register_script(_SCRIPT)

    async def take(self, name: str, per_second: float, burst: float, now_ms: int,
                   cost: float = 1.0) -> tuple[bool, int]:
        """(allowed, retry_after_ms): take `cost` tokens from `name`'s bucket at `now_ms`.

        The bucket holds at most `burst` tokens and refills `per_second`; a refused take leaves
        it unchanged and says how long until `cost` tokens are there. Raises redis errors as is
        (the caller decides whether to fail open) and ValueError on impossible settings.
        """
        _check(per_second, "per_second")
        _check(burst, "burst")
        _check(cost, "cost")
        if cost > burst:
            raise ValueError(f"cost: {cost:g} exceeds burst {burst:g}; such a take could never succeed")
        if isinstance(now_ms, bool) or not isinstance(now_ms, int):
            raise ValueError(f"now_ms: expected whole epoch milliseconds, got {now_ms!r}")
        allowed, retry = await self._take(keys=[bucket_key(name)],
                                          args=[repr(float(per_second)), repr(float(burst)), now_ms,
                                                repr(float(cost))])
        return bool(int(allowed)), int(retry)


def _check(value: float, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{field}: expected a finite number > 0, got {value!r}")
