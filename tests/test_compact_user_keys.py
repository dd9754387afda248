"""The compact per-user layouts serving reads (issue 7's memory aim), against a real Redis.

- the seen set: one deflated string a user (`transforms/summaries/seen.py`), merged by
  read-merge-compare-and-set (`stores.deployment.write_seen`): exact times, ZRANGE's order, the
  same semilattice a sorted set with ZADD GT gave, writers that converge, the earlier layout replaced;
- the last interactions: members `<type code><item>` at their latest time (ZADD GT in
  `lua/merge_recent.lua`), the Python merge and the Lua one keeping the same K in any order;
- the batch embedding: one field a version, as-of ms and a float16 vector.
"""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import keys
from schemas.clock import Clock
from stores import deployment, retention
from stores.feature_store import FeatureStore, Write
from transforms.summaries import recent
from transforms.summaries import seen as seen_set

T0 = 893_234_567_000  # 1998, MovieLens' time
DAY = 86_400_000

item_ids = st.one_of(st.integers(1, 1700).map(str), st.text(min_size=1, max_size=12))
times = st.integers(T0 - 400 * DAY, T0 + 400 * DAY)
seen_sets = st.dictionaries(item_ids, times, max_size=40)


def zset_semantics(*parts: dict[str, int], cap: int) -> dict[str, int]:
    """What ZADD GT + ZREMRANGEBYRANK 0 -cap-1 leave, in ZRANGE order: the earlier layout's rule."""
    latest: dict[str, int] = {}
    for part in parts:
        for item, ts in part.items():
            latest[item] = max(ts, latest.get(item, ts))
    ranked = sorted(latest.items(), key=lambda kv: (kv[1], kv[0].encode()))
    return dict(ranked[-cap:] if cap else [])


# -- the seen set ------------------------------------------------------------------------------


@given(seen_sets)
def test_a_seen_set_round_trips_exactly_in_zrange_order(seen: dict[str, int]) -> None:
    back = seen_set.decode(seen_set.encode(seen))
    assert list(back.items()) == list(zset_semantics(seen, cap=len(seen)).items())  # same times, same order
    assert seen_set.newest(seen_set.encode(seen)) == (max(seen.values()) if seen else None)


@given(st.lists(seen_sets, min_size=1, max_size=4), st.integers(1, 30), st.randoms(use_true_random=False))
def test_seen_merges_are_the_sorted_set_semilattice_in_any_order(parts, cap, rnd) -> None:
    expected = zset_semantics(*parts, cap=cap)
    order = list(parts)
    rnd.shuffle(order)
    merged: dict[str, int] = {}
    for part in order:
        merged = seen_set.merge(merged, part, cap)
        merged = seen_set.merge(merged, part, cap)  # idempotent
    assert list(merged.items()) == list(expected.items())


def test_whole_second_times_store_seconds_and_a_fraction_of_a_sorted_sets_memory(redis) -> None:
    rng = np.random.default_rng(0)
    items = rng.choice(np.arange(1, 1683), size=106, replace=False)  # a MovieLens user's mean rating count
    seen = {str(i): T0 + int(t) * 1000 for i, t in zip(items, np.sort(rng.integers(0, 3 * 3600, 106)), strict=True)}
    deployment.write_seen(redis, {"u": seen})
    raw = redis.get(keys.user_seen("u"))
    assert seen_set.decode(raw) == seen
    assert json.loads(zlib.decompress(raw.partition(b";")[2], -15))[0] % 1000 == 0  # gaps in whole seconds
    redis.zadd("zset-layout", seen)
    zset_bytes = redis.memory_usage("zset-layout", samples=0)
    # random gaps (here) deflate worse than real sessions: MovieLens users take 439 B against 1,540
    assert redis.memory_usage(keys.user_seen("u"), samples=0) < zset_bytes / 2.5, zset_bytes


def test_write_seen_adds_only_caps_and_a_rerun_changes_nothing(redis) -> None:
    deployment.write_seen(redis, {"u": {"a": T0, "b": T0 + 1}})
    deployment.write_seen(redis, {"u": {"a": T0 - 5, "c": T0 + 2}})  # an older time never moves an item back
    assert seen_set.decode(redis.get(keys.user_seen("u"))) == {"a": T0, "b": T0 + 1, "c": T0 + 2}
    before = redis.get(keys.user_seen("u"))
    deployment.write_seen(redis, {"u": {"c": T0 + 2}, "empty": {}})
    assert redis.get(keys.user_seen("u")) == before and not redis.exists(keys.user_seen("empty"))

    many = {f"i{k}": T0 + k for k in range(keys.SEEN_MAX + 50)}
    deployment.write_seen(redis, {"big": many})
    kept = seen_set.decode(redis.get(keys.user_seen("big")))
    assert len(kept) == keys.SEEN_MAX and min(kept.values()) == T0 + 50  # the newest SEEN_MAX


def test_a_writer_whose_read_went_stale_merges_again_so_both_writes_land(redis, monkeypatch) -> None:
    """A concurrent deploy writes between this writer's read and its compare-and-set."""
    deployment.write_seen(redis, {"u": {"a": T0}, "v": {"x": T0}})
    read = deployment._read_seen
    calls = []

    def read_then_someone_writes(client, user_ids):
        got = read(client, user_ids)
        calls.append(list(user_ids))
        if len(calls) == 1:
            deployment.write_seen(client, {"u": {"b": T0 + 1}})  # the other writer wins the race for u
        return got

    monkeypatch.setattr(deployment, "_read_seen", read_then_someone_writes)
    deployment.write_seen(redis, {"u": {"c": T0 + 2}, "v": {"y": T0 + 3}})
    assert calls[:2] == [["u", "v"], ["u"]]  # only the user whose key changed is read again
    monkeypatch.undo()
    assert seen_set.decode(redis.get(keys.user_seen("u"))) == {"a": T0, "b": T0 + 1, "c": T0 + 2}
    assert seen_set.decode(redis.get(keys.user_seen("v"))) == {"x": T0, "y": T0 + 3}


def test_a_sorted_set_of_the_earlier_layout_is_merged_and_replaced_and_prune_reads_both(redis) -> None:
    redis.zadd(keys.user_seen("old"), {"a": T0, "b": T0 + 7})
    redis.zadd(keys.user_seen("legacy-idle"), {"a": T0})
    assert retention.prune_idle_users(redis, Clock(T0 + 8), DAY).users_pruned == 0  # last activity from a zset
    deployment.write_seen(redis, {"old": {"c": T0 + 1}})
    assert redis.type(keys.user_seen("old")) == b"string"
    assert seen_set.decode(redis.get(keys.user_seen("old"))) == {"a": T0, "c": T0 + 1, "b": T0 + 7}
    # Last activity is the string's head: T0 + 7 keeps "old" at a cutoff of T0 + 7, not after it.
    assert retention.prune_idle_users(redis, Clock(T0 + 7 + DAY), DAY).users_pruned == 1  # legacy-idle
    assert redis.exists(keys.user_seen("old"))
    assert retention.prune_idle_users(redis, Clock(T0 + 8 + DAY), DAY).users_pruned == 1
    assert not redis.exists(keys.user_seen("old"))


# -- the last interactions ---------------------------------------------------------------------

types = st.sampled_from(sorted(recent.CODES))
entries = st.lists(st.tuples(st.integers(T0, T0 + 50), types, st.sampled_from(["1", "2", "item-02825", "é"])),
                   max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(entries, min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_python_and_lua_keep_the_same_last_interactions_in_any_order(redis, batches, rnd) -> None:
    redis.flushdb()
    summaries = [tuple((ts, recent.member(t, item)) for ts, t, item in batch) for batch in batches]
    expected: tuple = ()
    for s in summaries:
        expected = recent.merge(expected, s)
    order = list(enumerate(summaries))
    rnd.shuffle(order)
    key = keys.user_recent("u")
    store = FeatureStore(redis)
    for i, s in order:
        store.apply([Write("recent", key, f"s{i}", s)])
        store.apply([Write("recent", key, f"s{i}", s)])  # a retry: the guard skips it
    stored = tuple((int(ts), m.decode()) for m, ts in redis.zrevrange(key, 0, -1, withscores=True))
    assert stored == expected
    latest: dict[tuple[str, str], int] = {}
    for batch in batches:
        for ts, t, item in batch:
            latest[t, item] = max(ts, latest.get((t, item), ts))
    assert len(expected) == min(recent.K, len(latest))  # one entry a (type, item), at its latest time
    assert all(latest[r["type"], r["item_id"]] == r["ts"] for r in recent.decode(expected))


def test_members_are_short_and_the_earlier_json_members_still_decode() -> None:
    assert recent.member("rating", "255") == "r255"
    assert recent.decode([(T0, "r255"), (T0 - 1, '["ml100k-r-259-255","view","9"]')]) == [
        {"ts": T0, "type": "rating", "item_id": "255"}, {"ts": T0 - 1, "type": "view", "item_id": "9"}]
    with pytest.raises(KeyError):
        recent.member("teleport", "1")


# -- the batch embedding -----------------------------------------------------------------------


def test_the_batch_embedding_is_one_float16_field_a_version_and_the_earlier_pair_still_reads(redis) -> None:
    vecs = np.random.default_rng(1).normal(size=(2, 33)).astype(np.float32)
    redis.hset(keys.user_batch_embedding("a"), mapping={"vec:v1": deployment.encode_vector(vecs[0]),
                                                        "as_of:v1": str(T0)})
    assert deployment.read_user_embeddings(redis, "v1", ["a"])["a"][1] == T0  # the earlier layout
    np.testing.assert_array_equal(deployment.read_user_embeddings(redis, "v1", ["a"])["a"][0], vecs[0])

    deployment.write_user_embeddings(redis, "v1", ["a", "b"], vecs, T0 + 1)
    assert redis.hkeys(keys.user_batch_embedding("a")) == [b"v1"]  # the pair is gone
    assert len(redis.hget(keys.user_batch_embedding("a"), "v1")) == 1 + 8 + 2 * 33
    got = deployment.read_user_embeddings(redis, "v1", ["a", "b", "none"])
    assert sorted(got) == ["a", "b"] and got["a"][1] == T0 + 1
    for user, row in (("a", 0), ("b", 1)):
        np.testing.assert_array_equal(got[user][0], vecs[row].astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(got[user][0], vecs[row], rtol=2**-11, atol=1e-7)


def test_a_vector_float16_cannot_hold_stays_float32() -> None:
    vec = np.array([70_000.0, -1.5, 1.0], np.float32)
    back, as_of = deployment.decode_user_embedding([deployment.encode_user_embedding(vec, -T0), None, None])
    np.testing.assert_array_equal(back, vec)
    assert as_of == -T0 and deployment.decode_user_embedding([None, None, None]) is None
