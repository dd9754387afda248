"""Idle users: every feature key of a user idle longer than the idle TTL goes, by the shared clock.

Without this, a user who never comes back keeps their keys forever: merges prune old window
buckets and ended sessions only when that user's next event arrives, and nothing else expires.

Why a pass and not Redis `EXPIRE`: Redis counts TTLs in wall time, while the shared clock may be
pinned (a 1998 log replayed and served as of its end), and a user's keys must go together — an
active user who last rated a month ago keeps their emotion features. So `prune_idle_users` scans
the user keys and, per user, one script (`lua/prune_user.lua`, every key in the user's slot)
re-checks the last activity — the newest event time in `user_recent` or `user_seen`'s head — against
`clock.now_ms() - idle TTL` and deletes all of the user's feature keys or none. The same code is
right in live mode (wall clock: `pulserank live` runs it every `--prune_every_s`) and after a
replay (pinned clock: `pulserank --as-of T prune`); it is idempotent, and a user idle exactly the
TTL is kept (`Clock.expired` is strict).

The default idle TTL, 90 days, is longer than deploy's `--inactive-days` (30): users idle between
the two are served from their batch embedding (the design's fallback), and only beyond it does a
returning user start cold. Idempotency guards are not feature keys: they expire by their own TTL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis

from schemas import keys
from schemas.clock import Clock, default_clock

DEFAULT_IDLE_DAYS = 90.0
DAY_MS = 86_400_000
_SCRIPT = (Path(__file__).with_name("lua") / "prune_user.lua").read_text()


def user_feature_keys(user_id: str) -> list[str]:
    """Every feature key of one user, the two that record activity (recent, seen) first. A new
    per-user key in schemas/keys.py belongs here too, or idle users keep it."""
    return [keys.user_recent(user_id), keys.user_seen(user_id), keys.user_windows(user_id),
            keys.user_sessions(user_id), keys.user_emotion(user_id), keys.user_vectors(user_id),
            keys.user_batch_embedding(user_id)]


def idle_ttl_ms(days: float) -> int:
    if not days > 0:
        raise ValueError(f"idle TTL must be a number of days > 0, got {days!r}")
    return int(days * DAY_MS)


@dataclass
class PruneResult:
    cutoff_ms: int  # users with no event at or after this are idle
    users_seen: int = 0
    users_pruned: int = 0
    keys_deleted: int = 0

    def summary(self) -> str:
        return (f"{self.users_pruned:,} of {self.users_seen:,} users idle (no event since the cutoff) dropped, "
                f"{self.keys_deleted:,} keys deleted")


def prune_idle_users(client: redis.Redis, clock: Clock | None = None, idle_ms: int | None = None,
                     batch: int = 500) -> PruneResult:
    """Drops the feature keys of every user with no event in the last `idle_ms` by `clock`.

    One SCAN over the user keys (guards skipped), then one pipelined script call per user,
    `batch` users a round trip. Users found twice by the scan are checked once.
    """
    clock = clock or default_clock()
    idle_ms = idle_ttl_ms(DEFAULT_IDLE_DAYS) if idle_ms is None else idle_ms
    result = PruneResult(clock.now_ms() - idle_ms)
    cluster = isinstance(client, redis.RedisCluster)
    sha = client.script_load(_SCRIPT)  # on a cluster: loaded on every master
    done: set[str] = set()
    pending: list[str] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for user_id in pending:
            ks = user_feature_keys(user_id)
            # EVALSHA by hand: a cluster pipeline refuses Script objects; sent to the slot's master.
            where = {"target_nodes": client.get_node_from_key(ks[0])} if cluster else {}
            pipe.execute_command("EVALSHA", sha, len(ks), *ks, result.cutoff_ms, **where)
        for deleted in pipe.execute():
            result.users_pruned += 1 if deleted else 0
            result.keys_deleted += int(deleted)
        pending.clear()

    for raw in client.scan_iter(match=keys.user("*", "*"), count=1000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        tag = keys.hash_tag(key)
        if key[key.index("}") + 2:].startswith("g:") or tag in done:
            continue
        done.add(tag)
        pending.append(tag[2:])
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    result.users_seen = len(done)
    return result
