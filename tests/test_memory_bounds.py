"""Idle users stay bounded: the idle-user prune (stores/retention.py) on the real Redis, clock pinned.

A user's state is built through the real merge path (observations → partial summaries → the
feature store's Lua merges) plus deploy's writers (seen set, batch embedding), with the clock
pinned to when the events happened, as live mode would; then the clock moves on and the prune runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from schemas import keys
from schemas.clock import AS_OF_ENV, Clock, parse_instant
from schemas.events import parse_event
from schemas.features import FeatureConfig
from stores import deployment, retention
from stores.feature_store import DEFAULT_GUARD_TTL_S, FeatureStore, Write
from transforms.observe import ItemInfo, context_observations, embedding_observations, emotion_observations
from transforms.summaries.partial import merge_all

DAY = 86_400_000
HOUR = 3_600_000
T0 = parse_instant("1998-01-05T00:00:00Z")  # an old log: by wall time every user here is long idle
TTL = retention.idle_ttl_ms(30)
CONFIG = FeatureConfig()
INFO = ItemInfo(("drama",), np.array([1.0, 0.0, 0.5, 0.25]))
ROOT = Path(__file__).resolve().parents[1]


def events(user: str, last_ts: int, n: int = 3) -> list:
    """n ratings (liked: they feed every per-user family) ending at `last_ts`, a minute apart."""
    return [parse_event(json.dumps({"event_id": f"{user}-{last_ts}-{k}", "ts": last_ts - k * 60_000,
                                    "user_id": user, "type": "rating", "item_id": f"i{k}", "value": 5}))
            for k in range(n)]


def writes(evs: list) -> list[Write]:
    """What the Beam transforms would hand the sink for these events: one summary per key."""
    by_key = defaultdict(list)
    for e in evs:
        for key, p in (*context_observations(e, INFO), *emotion_observations(e, None, CONFIG),
                       *embedding_observations(e, INFO, CONFIG.content_model, CONFIG)):
            by_key[key].append(p)
    out = []
    for key, parts in sorted(by_key.items()):
        p = merge_all(parts)
        payload = (p.tau_ms, p.payload) if p.kind == "decayed" else p.payload
        out.append(Write(p.kind, key, p.digest.summary_id(p.kind, key), payload))
    return out


def active_at(client, user: str, last_ts: int) -> list[Write]:
    """Every per-user key of `user`, merged with the clock just after their last event."""
    ws = writes(events(user, last_ts))
    FeatureStore(client, Clock(last_ts + 1)).apply(ws)
    deployment.write_seen(client, {user: {"i0": last_ts}})
    deployment.write_user_embeddings(client, "v1", [user], np.ones((1, 4), np.float32), last_ts)
    return ws


def feature_keys(client, user: str) -> dict[str, bytes]:
    """The user's keys other than idempotency guards, with their DUMP (encoding and content)."""
    found = (k.decode() for k in client.scan_iter(match=keys.user(user, "*"), count=1000))
    return {k: client.dump(k) for k in sorted(found) if ":g:" not in k}


def every_part(user: str) -> set[str]:
    return set(retention.user_feature_keys(user))


def test_an_idle_user_loses_every_feature_key_and_an_active_user_keeps_every_one(redis):
    active_at(redis, "idle", T0)
    active_at(redis, "busy", T0 + 40 * DAY)
    assert set(feature_keys(redis, "idle")) == every_part("idle")
    before = feature_keys(redis, "busy")
    assert set(before) == every_part("busy")

    result = retention.prune_idle_users(redis, Clock(T0 + 40 * DAY + HOUR), TTL)

    assert (result.users_seen, result.users_pruned, result.keys_deleted) == (2, 1, 7)
    assert feature_keys(redis, "idle") == {}
    assert feature_keys(redis, "busy") == before  # every key, byte for byte
    # What is left of the idle user are idempotency guards, which expire by their own (wall) TTL.
    left = [k.decode() for k in redis.scan_iter(match=keys.user("idle", "*"))]
    assert left and all(":g:" in k and 0 < redis.ttl(k) <= DEFAULT_GUARD_TTL_S for k in left)


def test_the_idle_ttl_counts_on_the_shared_clock_not_wall_time(redis):
    active_at(redis, "u", T0)
    kept = retention.prune_idle_users(redis, Clock(T0 + TTL), TTL)  # idle exactly the TTL: kept
    assert kept.users_pruned == 0 and set(feature_keys(redis, "u")) == every_part("u")
    # By wall time this 1998 user is decades idle; only the pinned clock moving past the TTL drops them.
    assert retention.prune_idle_users(redis, Clock(T0 + TTL + 1), TTL).users_pruned == 1
    assert feature_keys(redis, "u") == {}

    active_at(redis, "v", T0)
    assert retention.prune_idle_users(redis, Clock(), TTL).users_pruned == 1  # the wall clock: 1998 is idle
    assert feature_keys(redis, "v") == {}


def test_remerging_after_a_prune_is_still_idempotent(redis):
    idle_writes = active_at(redis, "idle", T0)
    busy_writes = active_at(redis, "busy", T0 + 40 * DAY)
    now = T0 + 40 * DAY + HOUR
    store = FeatureStore(redis, Clock(now))
    assert retention.prune_idle_users(redis, Clock(now), TTL).users_pruned == 1
    busy = feature_keys(redis, "busy")

    again = store.apply(busy_writes + idle_writes)  # a retried bundle, a re-run replay
    assert (again.merged, again.skipped) == (0, len(busy_writes) + len(idle_writes))
    assert feature_keys(redis, "busy") == busy
    assert feature_keys(redis, "idle") == {}  # the guards still skip what was merged before the prune
    assert retention.prune_idle_users(redis, Clock(now), TTL).users_pruned == 0  # a second pass: nothing

    # The idle user comes back: their new event starts fresh state, which the prune keeps.
    store.apply(writes(events("idle", now - 1, n=1)))
    back = store.user_features("idle")
    assert [(r["ts"], r["type"], r["item_id"]) for r in back["recent"]] == [(now - 1, "rating", "i0")]
    assert retention.prune_idle_users(redis, Clock(now), TTL).users_pruned == 0


def test_activity_in_either_the_recent_or_the_seen_set_keeps_a_user(redis):
    now = T0 + 60 * DAY
    active_at(redis, "deployed", T0)
    deployment.write_seen(redis, {"deployed": {"i9": now - DAY}})  # a positive the log holds, 1 day ago
    redis.hset(keys.user_vectors("orphan"), "collab:x", "0;1,2")  # no activity on record at all
    result = retention.prune_idle_users(redis, Clock(now), TTL)
    assert (result.users_seen, result.users_pruned) == (2, 1)
    assert set(feature_keys(redis, "deployed")) == every_part("deployed")
    assert feature_keys(redis, "orphan") == {}


def test_pulserank_prune_counts_on_the_pinned_clock_and_rejects_a_bad_ttl(redis, redis_url):
    active_at(redis, "idle", T0)
    active_at(redis, "busy", T0 + 40 * DAY)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop(AS_OF_ENV, None)
    cmd = [sys.executable, "-m", "pulserank.cli", "--as-of", str(T0 + 40 * DAY + HOUR), "prune",
           "--redis-url", redis_url]
    bad = subprocess.run([*cmd, "--idle-days", "0"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert bad.returncode == 2 and "--idle-days" in bad.stderr
    assert feature_keys(redis, "idle")
    done = subprocess.run([*cmd, "--idle-days", "30"], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "1 of 2 users" in done.stdout and "pinned at 1998-02-14" in done.stdout
    assert feature_keys(redis, "idle") == {} and set(feature_keys(redis, "busy")) == every_part("busy")


def test_the_live_driver_prunes_by_its_clock_every_period(redis, redis_url, monkeypatch, tmp_path):
    from pipelines.live import LiveDriver

    active_at(redis, "idle", T0)
    active_at(redis, "busy", T0 + 40 * DAY)
    now = T0 + 40 * DAY + HOUR
    monkeypatch.setenv(AS_OF_ENV, str(now))  # restored after the test (the driver sets it too)
    args = ["--redis_url", redis_url, "--as_of", str(now), "--lake", str(tmp_path / "lake"), "--quiet",
            "--idle_days", "30"]
    hourly = LiveDriver([*args, "--prune_every_s", "3600"])
    try:
        assert hourly.maybe_prune() is None  # not before its first period is over
    finally:
        hourly.close()
    assert feature_keys(redis, "idle")
    driver = LiveDriver([*args, "--prune_every_s", "0"])
    try:
        result = driver.maybe_prune()
    finally:
        driver.close()
    assert result is not None and (result.users_seen, result.users_pruned) == (2, 1)
    assert feature_keys(redis, "idle") == {} and set(feature_keys(redis, "busy")) == every_part("busy")


def test_deploy_leaves_out_users_idle_longer_than_the_ttl(tmp_path):
    from pipelines.deploy import kept_users, read_log, users_to_embed

    log_path = tmp_path / "log.jsonl"
    log_path.write_text("".join(json.dumps(e.to_dict()) + "\n"
                                for e in [*events("old", T0), *events("new", T0 + 40 * DAY)]))
    log = read_log([str(log_path)], T0 + 40 * DAY + HOUR)
    assert kept_users(log, None) == ["new", "old"]
    assert kept_users(log, 30) == ["new"]
    assert users_to_embed(log, True, 30, idle_days=30) == (["new"], [])
    with pytest.raises(ValueError, match="days > 0"):
        kept_users(log, 0)


def test_the_prune_works_on_a_redis_cluster_one_slot_per_user():
    """Each user's check-and-delete is one script on one hash tag: it runs on a 3-master cluster."""
    from stores.redis_client import get_redis
    from stores.redis_cluster import EmbeddedCluster

    with EmbeddedCluster() as cluster:
        client = get_redis(cluster.url)
        try:
            users = [f"u{n}" for n in range(12)]  # spread over the three masters' slots
            for n, user in enumerate(users):
                active_at(client, user, T0 + 40 * DAY if n % 2 else T0)
            result = retention.prune_idle_users(client, Clock(T0 + 40 * DAY + HOUR), TTL)
            assert (result.users_seen, result.users_pruned, result.keys_deleted) == (12, 6, 42)
            for n, user in enumerate(users):
                assert set(feature_keys(client, user)) == (every_part(user) if n % 2 else set())
        finally:
            client.close()
