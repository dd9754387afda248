"""Activity counts in Redis: per-user and per-item hashes of event type → count."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import redis

from schemas import keys


def write_activity(client: redis.Redis, rows: Iterable[tuple[tuple[str, str], Mapping[str, int]]]) -> int:
    """Sets each entity's counts in one pipelined round trip; returns the number of keys written.

    Values are the totals of one replay run, so re-running the same log writes the same state.
    """
    pipe = client.pipeline(transaction=False)
    written = 0
    for (kind, entity_id), counts in rows:
        key = keys.user_activity(entity_id) if kind == "user" else keys.item_activity(entity_id)
        pipe.delete(key)
        pipe.hset(key, mapping=dict(counts))
        written += 1
    pipe.execute()
    return written


def read_activity(client: redis.Redis, kind: str, entity_id: str) -> dict[str, int]:
    key = keys.user_activity(entity_id) if kind == "user" else keys.item_activity(entity_id)
    return {k.decode(): int(v) for k, v in client.hgetall(key).items()}
