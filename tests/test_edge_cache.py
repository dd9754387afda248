"""The edge's personalized cache: keys, TTL, LRU by bytes, invalidation, the stale fallback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.edge_cache import CachedList, PersonalizedCache, TtlPolicy, cache_key, entry_nbytes

MIN = 60_000


def cl(n: int = 3, stored: int = 0, ttl_ms: int = 10 * MIN, session: str = "", prefix: str = "i") -> CachedList:
    return CachedList(tuple(f"{prefix}{j}" for j in range(n)), tuple(1.0 / (j + 2) for j in range(n)),
                      "v1", "control", stored, stored + ttl_ms, session)


# -- keys ---------------------------------------------------------------------------------------------


def test_key_is_stable_across_processes_and_distinguishes_its_parts():
    k = cache_key("u1", "home", "s1")
    code = "from serving.edge_cache import cache_key; print(cache_key('u1', 'home', 's1'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == k  # a fresh interpreter has a different hash() salt; the key must not care
    keys = {cache_key(*t) for t in [("u1", "home", "s1"), ("u2", "home", "s1"), ("u1", "pdp", "s1"),
                                    ("u1", "home", "s2"), ("u1", "homes", "1"), ("u1", "home", "")]}
    assert len(keys) == 6
    with pytest.raises(ValueError, match="user_id"):
        cache_key("", "home", "s1")


# -- hits and TTL -------------------------------------------------------------------------------------


def test_hit_returns_the_stored_list_until_it_expires_then_get_stale_still_has_it():
    c = PersonalizedCache(1 << 20)
    k = cache_key("u1", "home", "s1")
    assert c.get(k, 0) is None
    c.put(k, cl(stored=0, ttl_ms=10 * MIN))
    got = c.get(k, 10 * MIN - 1)
    assert got is not None and got.items == ("i0", "i1", "i2") and got.nbytes == entry_nbytes(k, got)
    assert c.get(k, 10 * MIN) is None  # expired
    stale = c.get_stale(k)
    assert stale is not None and stale.items == got.items
    s = c.stats
    assert (s.hits, s.misses, s.expired, s.stale_served, s.entries) == (1, 1, 1, 1, 1)
    assert s.hit_rate == pytest.approx(1 / 3)
    assert c.get_stale(cache_key("nobody", "home", "s1")) is None


def test_ttl_is_shorter_for_users_active_right_now():
    p = TtlPolicy(base_s=600, active_s=300, active_window_s=120)
    now = 1_000_000_000
    assert p.ttl_ms(None, now) == 600_000  # no known event
    assert p.ttl_ms(now - 121_000, now) == 600_000  # last event outside the window
    assert p.ttl_ms(now - 120_000, now) == 300_000
    assert p.ttl_ms(now - 5_000, now) == 300_000
    c = PersonalizedCache(1 << 20, p)
    k_active, k_idle = cache_key("active", "home", "s"), cache_key("idle", "home", "s")
    c.put(k_active, cl(stored=now, ttl_ms=c.expires_at(now, now - 5_000) - now))
    c.put(k_idle, cl(stored=now, ttl_ms=c.expires_at(now) - now))
    later = now + 7 * MIN  # past the active TTL, inside the base one
    assert c.get(k_active, later) is None
    assert c.get(k_idle, later) is not None


def test_policy_and_cache_reject_bad_settings_naming_the_field():
    with pytest.raises(ValueError, match="active_s"):
        TtlPolicy(base_s=300, active_s=600)
    with pytest.raises(ValueError, match="base_s"):
        TtlPolicy(base_s=0)
    with pytest.raises(ValueError, match="max_bytes"):
        PersonalizedCache(0)
    with pytest.raises(ValueError, match="key"):
        PersonalizedCache(1 << 20).put("u1|home", cl())
    with pytest.raises(ValueError, match="scores"):
        CachedList(("a", "b"), (0.5,), "v1", "control", 0, 1)


# -- LRU by bytes -------------------------------------------------------------------------------------


def test_lru_by_bytes_a_big_entry_evicts_several_small_ones_least_recent_first():
    small, big = cl(n=5), cl(n=35, prefix="big")
    ks = [cache_key(f"u{j}", "home", "s") for j in range(6)]
    one = entry_nbytes(ks[0], small)
    c = PersonalizedCache(6 * one + 10)
    for k in ks:
        c.put(k, small)
    assert len(c) == 6 and c.bytes == 6 * one
    c.get(ks[0], 0)  # u0 becomes most recently used
    kb = cache_key("big", "home", "s")
    need = entry_nbytes(kb, big)
    assert 2 * one < need < 5 * one
    c.put(kb, big)
    evicted = c.stats.evicted
    assert evicted >= 3  # several small ones made room for one big one, and no more than needed:
    assert need + (6 - evicted) * one <= c.max_bytes < need + (7 - evicted) * one
    assert c.bytes <= c.max_bytes and c.bytes == need + (6 - evicted) * one
    survivors = [k for k in ks if k in c]
    assert ks[0] in survivors  # recently used: kept
    assert set(survivors) == {ks[0], *ks[1 + evicted:]}  # the least recently used went first
    assert c.get(kb, 0) is not None


def test_an_entry_larger_than_the_whole_cache_is_refused_without_evicting_anything():
    k = cache_key("u", "home", "s")
    c = PersonalizedCache(entry_nbytes(k, cl(n=3)) + 1)
    c.put(k, cl(n=3))
    c.put(cache_key("v", "home", "s"), cl(n=200))
    assert k in c and len(c) == 1 and c.stats.oversize == 1 and c.stats.evicted == 0


def test_replacing_a_key_keeps_the_byte_count_exact():
    c = PersonalizedCache(1 << 20)
    k = cache_key("u", "home", "s")
    c.put(k, cl(n=50))
    c.put(k, cl(n=2))
    assert len(c) == 1 and c.bytes == entry_nbytes(k, cl(n=2))
    assert c.invalidate_user("u") == 1 and c.bytes == 0


# -- material change ----------------------------------------------------------------------------------


def test_invalidate_user_drops_every_context_type_and_segment_of_that_user_only():
    c = PersonalizedCache(1 << 20)
    mine = [cache_key("u1", ctx, seg) for ctx in ("home", "pdp", "cart") for seg in ("s1", "s2")]
    theirs = cache_key("u2", "home", "s1")
    for k in [*mine, theirs]:
        c.put(k, cl())
    assert c.invalidate_user("u1") == 6
    assert all(c.get(k, 0) is None and c.get_stale(k) is None for k in mine)
    assert c.get(theirs, 0) is not None
    assert c.invalidate_user("u1") == 0 and c.invalidate_user("never-seen") == 0
    assert c.stats.invalidated == 6 and c.bytes == entry_nbytes(theirs, c.get_stale(theirs))


def test_a_session_change_is_a_miss_and_the_old_list_is_not_served_stale():
    c = PersonalizedCache(1 << 20)
    k = cache_key("u1", "home", "s1")
    c.put(k, cl(session="sess-a"))
    assert c.get(k, 0, "sess-a") is not None
    assert c.get(k, 0) is not None  # None = no session check
    assert c.get(k, 0, "sess-b") is None
    assert c.get_stale(k) is None  # dropped, not merely expired
    s = c.stats
    assert (s.hits, s.misses, s.invalidated, s.entries, s.bytes) == (2, 1, 1, 0, 0)


# -- property -----------------------------------------------------------------------------------------

op = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 7), st.sampled_from(["home", "pdp"]), st.integers(0, 120)),
    st.tuples(st.just("get"), st.integers(0, 7), st.sampled_from(["home", "pdp"]), st.just(0)),
    st.tuples(st.just("inv"), st.integers(0, 7), st.just(""), st.just(0)),
)


@settings(max_examples=150, deadline=None)
@given(st.integers(1_000, 30_000), st.lists(op, max_size=60))
def test_property_bytes_never_exceed_the_budget_and_every_entry_is_reachable(max_bytes, ops):
    c = PersonalizedCache(max_bytes)
    last: dict[str, CachedList] = {}
    for kind, u, ctx, n in ops:
        k = cache_key(f"user{u}", ctx, "seg")
        if kind == "put":
            v = cl(n=n, prefix=f"{u}-")
            c.put(k, v)
            if k in c:
                last[k] = v
            else:
                assert entry_nbytes(k, v) > max_bytes  # only an oversize entry is not stored
        elif kind == "get":
            c.get(k, 0)
        else:
            c.invalidate_user(f"user{u}")
        assert c.bytes <= max_bytes
        keys = list(c._entries)
        assert c.bytes == sum(c.get_stale(k).nbytes for k in keys)
        for k in keys:  # reachable: by key, with the last value stored under it, and through its user's index
            assert c.get_stale(k).items == last[k].items
            assert k in c._by_user[k.partition(".")[0]]
        assert sum(len(s) for s in c._by_user.values()) == len(keys)
