"""The edge's personalized cache: the origin's ranked pool per (user, context type, segment).

An edge answers a repeat request from memory (ARCHITECTURE.md, "The edge tier"): the origin's
top ~100 (item, ranker probability) for the key, re-scored at the edge with the freshest context.
Plain Python, no I/O, so it is cheap to test and to reason about:

- **Key**: `cache_key` — a stable digest (blake2b), never Python's salted `hash()`, so every edge
  process and every restart agrees. It is two halves, `<user digest>.<context-and-segment digest>`:
  the user half lets `invalidate_user` find a user's keys without storing raw user ids.
- **TTL**: `TtlPolicy` — 10 min by default (within the design's 5–15 min), 5 min for users active
  right now (an event in the last 2 min): their context moves fastest, so their list goes stale
  soonest. The caller stamps `expires_ms` when it stores a list (`PersonalizedCache.expires_at`).
- **Bounded memory**: least-recently-used eviction by *bytes*, not entries, since lists differ in
  size. `entry_nbytes` estimates an entry's Python memory from `sys.getsizeof` of the key, the
  value object (slotted), its tuples and every string, float and int in them, plus a fixed
  per-entry allowance for the bookkeeping (`_BOOKKEEPING`: the ordered-dict slot, the user
  index). Strings are counted in full even if shared — an edge decodes each origin answer into
  fresh objects, so that is what it holds (`benchmarks/edge_cache_hit.py` checks the estimate
  against tracemalloc: within ~1.5 % for 100-item lists).
- **Material change** (new session, purchase): `invalidate_user` drops all of a user's keys; a
  `get` whose session differs from the one stored drops that entry. Dropped entries are gone, so
  the all-origins-down fallback (`get_stale`) never serves a list from a superseded session.
  Expired entries stay until LRU pressure evicts them: they are that fallback.

Thread-safe (one lock): the edge's event loop and any executor threads may share it.
"""

from __future__ import annotations

import hashlib
import re
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

_HALF = 8  # bytes per digest half: 64 bits each, 128 for a key
_KEY_RE = re.compile(r"[0-9a-f]{16}\.[0-9a-f]{16}")
# Per entry beyond the objects themselves: an OrderedDict slot (hash-table entry plus its
# linked-list node, ~100 bytes on CPython 3.11+) and the user index — a set per user (216 bytes
# while small), charged in full to every key, so a user with several keys is over-counted a little.
_BOOKKEEPING = 320


def _digest(*parts: str) -> str:
    h = hashlib.blake2b(digest_size=_HALF)
    for p in parts:
        b = p.encode("utf-8")
        h.update(len(b).to_bytes(4, "big"))  # length-prefixed: ("ab", "c") ≠ ("a", "bc")
        h.update(b)
    return h.hexdigest()


def _user_part(user_id: str) -> str:
    return _digest("user", user_id)


def cache_key(user_id: str, context_type: str, segment: str) -> str:
    """Stable key for (user, context type, segment): `<user digest>.<context/segment digest>`."""
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("user_id: must be a non-empty string")
    if not isinstance(context_type, str) or not isinstance(segment, str):
        raise ValueError("context_type and segment: must be strings")
    return f"{_user_part(user_id)}.{_digest('ctx', context_type, segment)}"


@dataclass(frozen=True, slots=True)
class CachedList:
    """The origin's ranked pool for one key, as the edge keeps it."""

    items: tuple[str, ...]  # the origin's pool, ranker order
    scores: tuple[float, ...]  # the origin ranker's probability per item
    model_version: str
    variant: str
    stored_ms: int  # when it was cached (the edge's clock)
    expires_ms: int
    session_key: str = ""  # the user's session when cached (material-change check)
    nbytes: int = 0  # its accounted size (set by `PersonalizedCache.put`)

    def __post_init__(self) -> None:
        if len(self.items) != len(self.scores):
            raise ValueError(f"scores: {len(self.scores)} scores for {len(self.items)} items")
        if self.expires_ms < self.stored_ms:
            raise ValueError(f"expires_ms: {self.expires_ms} is before stored_ms {self.stored_ms}")


@dataclass(frozen=True)
class TtlPolicy:
    """How long a cached list lives: shorter for users active right now."""

    base_s: float = 600.0  # within the design's 5–15 min
    active_s: float = 300.0  # users active right now get the short end
    active_window_s: float = 120.0  # "active right now" = an event within this window

    def __post_init__(self) -> None:
        if not self.base_s > 0:
            raise ValueError(f"base_s: must be > 0, got {self.base_s}")
        if not 0 < self.active_s <= self.base_s:
            raise ValueError(f"active_s: must be in (0, base_s={self.base_s}], got {self.active_s}")
        if not self.active_window_s >= 0:
            raise ValueError(f"active_window_s: must be ≥ 0, got {self.active_window_s}")

    def ttl_ms(self, last_event_ms: int | None, now_ms: int) -> int:
        """`active_s` if the user's last event is within the window (or ahead of this clock), else `base_s`."""
        active = last_event_ms is not None and now_ms - last_event_ms <= self.active_window_s * 1000
        return round((self.active_s if active else self.base_s) * 1000)


def entry_nbytes(key: str, value: CachedList) -> int:
    """Estimated Python memory of one cache entry (see the module docstring)."""
    size = sys.getsizeof
    n = size(key) + size(value) + _BOOKKEEPING
    n += size(value.items) + sum(size(s) for s in value.items)
    n += size(value.scores) + sum(size(x) for x in value.scores)
    n += size(value.model_version) + size(value.variant) + size(value.session_key)
    n += size(value.stored_ms) + size(value.expires_ms) + size(0)  # nbytes itself
    return n


@dataclass(frozen=True)
class CacheStats:
    """Counters since construction, plus the current size.

    Every `get` is exactly one of hits, misses (absent, or its session changed) or expired.
    """

    hits: int
    misses: int
    expired: int
    invalidated: int  # entries dropped for a material change (invalidate_user or a session change)
    evicted: int  # entries dropped by LRU to stay within max_bytes
    oversize: int  # puts refused because one entry alone exceeds max_bytes
    stale_served: int  # get_stale calls that returned a list
    bytes: int
    entries: int

    @property
    def lookups(self) -> int:
        return self.hits + self.misses + self.expired

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0


class PersonalizedCache:
    """LRU-by-bytes cache of `CachedList`s with per-entry expiry and per-user invalidation."""

    def __init__(self, max_bytes: int, policy: TtlPolicy = TtlPolicy()) -> None:  # noqa: B008 (frozen)
        if not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"max_bytes: must be a positive int, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.policy = policy
        self._entries: OrderedDict[str, CachedList] = OrderedDict()  # oldest use first
        self._by_user: dict[str, set[str]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = self._misses = self._expired = 0
        self._invalidated = self._evicted = self._oversize = self._stale = 0

    def expires_at(self, now_ms: int, last_event_ms: int | None = None) -> int:
        """`expires_ms` for a list stored now, by this cache's policy."""
        return now_ms + self.policy.ttl_ms(last_event_ms, now_ms)

    def get(self, key: str, now_ms: int, session_key: str | None = None) -> CachedList | None:
        """The live list for `key`, or None on a miss, an expired entry or a session change.

        `session_key=None` skips the session check; otherwise any difference from the stored
        session (including "" vs a session) is a material change and drops the entry.
        """
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self._misses += 1
                return None
            if session_key is not None and session_key != value.session_key:
                self._drop(key)
                self._invalidated += 1
                self._misses += 1
                return None
            if now_ms >= value.expires_ms:
                self._expired += 1  # kept: the fallback when every origin is down
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return value

    def get_stale(self, key: str) -> CachedList | None:
        """The list for `key` even if expired (the all-origins-down fallback); does not refresh recency."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._stale += 1
            return value

    def put(self, key: str, value: CachedList) -> None:
        """Store (or replace) `key`, evicting least-recently-used entries until it fits.

        The stored copy carries its accounted size in `nbytes` (the caller's value is ignored).
        An entry larger than `max_bytes` on its own is not stored (counted as `oversize`).
        """
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise ValueError(f"key: not a cache_key() value: {key!r}")
        if not isinstance(value, CachedList):
            raise TypeError(f"value: expected CachedList, got {type(value).__name__}")
        nbytes = entry_nbytes(key, value)
        value = replace(value, nbytes=nbytes)
        with self._lock:
            if key in self._entries:
                self._drop(key)
            if nbytes > self.max_bytes:
                self._oversize += 1
                return
            while self._bytes + nbytes > self.max_bytes:
                oldest = next(iter(self._entries))
                self._drop(oldest)
                self._evicted += 1
            self._entries[key] = value
            self._bytes += nbytes
            self._by_user.setdefault(key.partition(".")[0], set()).add(key)

    def invalidate_user(self, user_id: str) -> int:
        """Drop every key of `user_id` (all context types and segments); returns how many."""
        with self._lock:
            keys = self._by_user.get(_user_part(user_id))
            if not keys:
                return 0
            dropped = list(keys)
            for key in dropped:
                self._drop(key)
            self._invalidated += len(dropped)
            return len(dropped)

    def _drop(self, key: str) -> None:
        value = self._entries.pop(key)
        self._bytes -= value.nbytes
        user = key.partition(".")[0]
        keys = self._by_user[user]
        keys.discard(key)
        if not keys:
            del self._by_user[user]

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._expired, self._invalidated, self._evicted,
                              self._oversize, self._stale, self._bytes, len(self._entries))
