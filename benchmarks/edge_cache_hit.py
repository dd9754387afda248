"""The edge cache's hit rate on a fixed workload (issue 6's acceptance), its memory and lookup speed.

    python -m benchmarks.edge_cache_hit [--users 10000] [--zipf 1.1] [--rate 200] [--ttl 600]
        [--active-ttl 300] [--duration 0] [--max-mib 512] [--tight-mib 32] [--seed 0]

The workload (fixed seed): `--users` synthetic users, requests drawn over users by a Zipf law of
exponent `--zipf` (P(rank r) ∝ r^−s, r = 1..users), Poisson arrivals at `--rate` requests per
second of *simulated* time (no sleeping), for `--duration` seconds (0: twice the base TTL). Each
request has a context type (home 70 %, product 20 %, cart 10 %) and the user's fixed segment (one
of 8), so a user has up to three keys. A user counts as active right now if their previous request
was within the policy's window (a request is a page view), so heavy users get the short TTL.

Each request does `cache.get`; on a miss (absent or expired) it "fetches from the origin" — builds
a synthetic list of 100 fresh item-id strings and scores, as decoding an origin answer would — and
`put`s it. Origin calls are counted, and so are origin calls made while serving hits (must be 0).

Runs: the policy as configured (base `--ttl`, `--active-ttl` for active users) with room for every
key; the same with the TTL set to 1 s (the hit rate falls); the configured policy in a tight
`--tight-mib` budget (LRU eviction at work). Then memory per entry — the cache's accounting
(`entry_nbytes`) beside tracemalloc's count of what a fill allocated — and lookups per second
(warm cache, one thread; with and without computing the key).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

from serving.edge_cache import CachedList, PersonalizedCache, TtlPolicy, cache_key

CONTEXTS = ("home", "product", "cart")
CONTEXT_P = (0.7, 0.2, 0.1)
SEGMENTS = 8
POOL = 100
CATALOG = 50_000
MIB = 1024 * 1024


@dataclass
class Workload:
    t_ms: np.ndarray  # request times, simulated ms
    users: np.ndarray  # user index per request
    contexts: np.ndarray  # context index per request
    duration_s: float
    rate: float


def workload(users: int, s: float, rate: float, duration_s: float, seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    n = int(rate * duration_s * 1.05) + 100
    t = np.cumsum(rng.exponential(1000.0 / rate, n))
    n = int(np.searchsorted(t, duration_s * 1000.0))
    p = np.arange(1, users + 1, dtype=np.float64) ** -s
    p /= p.sum()
    return Workload(t[:n].astype(np.int64), rng.choice(users, n, p=p),
                    rng.choice(len(CONTEXTS), n, p=CONTEXT_P), duration_s, rate)


class Origin:
    """Stands in for the origin: counts calls and returns a fresh 100-item ranked pool."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.calls = 0

    def fetch(self, now_ms: int, expires_ms: int) -> CachedList:
        self.calls += 1
        ids = self.rng.integers(0, CATALOG, POOL).tolist()
        scores = sorted(self.rng.random(POOL).tolist(), reverse=True)
        return CachedList(tuple(f"item-{i:06d}" for i in ids), tuple(scores), "v-bench", "control", now_ms, expires_ms)


@dataclass
class RunResult:
    name: str
    policy: TtlPolicy
    max_bytes: int
    requests: int
    hits: int
    steady_hits: int
    steady_requests: int
    origin_calls: int
    origin_calls_on_hits: int
    cache: PersonalizedCache
    wall_s: float


def run(name: str, w: Workload, policy: TtlPolicy, max_bytes: int, seed: int) -> RunResult:
    cache = PersonalizedCache(max_bytes, policy)
    origin = Origin(seed)
    keys = [[cache_key(f"user-{u}", c, f"seg-{u % SEGMENTS}") for c in CONTEXTS] for u in range(int(w.users.max()) + 1)]
    last_event: dict[int, int] = {}
    steady_from = policy.base_s * 1000  # after one base TTL the cache is warm
    hits = steady_hits = steady_requests = on_hits = 0
    t0 = time.perf_counter()
    for now, u, c in zip(w.t_ms.tolist(), w.users.tolist(), w.contexts.tolist(), strict=True):
        key = keys[u][c]
        before = origin.calls
        value = cache.get(key, now)
        steady = now >= steady_from
        steady_requests += steady
        if value is not None:
            hits += 1
            steady_hits += steady
            on_hits += origin.calls - before  # serving a hit touches no origin
        else:
            cache.put(key, origin.fetch(now, cache.expires_at(now, last_event.get(u))))
        last_event[u] = now
    wall = time.perf_counter() - t0
    return RunResult(name, policy, max_bytes, len(w.t_ms), hits, steady_hits, steady_requests, origin.calls, on_hits,
                     cache, wall)


def memory_per_entry(entries: int, seed: int) -> tuple[float, float]:
    """(accounted bytes per entry, tracemalloc-measured bytes per entry) for a fill of `entries` keys."""
    origin = Origin(seed)
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    cache = PersonalizedCache(1 << 40)
    for u in range(entries):
        cache.put(cache_key(f"mem-{u}", "home", "seg-0"), origin.fetch(0, 600_000))
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return cache.bytes / entries, (used - base) / entries


def lookups_per_s(r: RunResult, w: Workload, n: int) -> tuple[float, float, float]:
    """(gets/s on precomputed keys, (cache_key + get)/s, hit share of those gets) on the run's warm cache."""
    cache = r.cache
    idx = np.arange(n) % len(w.t_ms)
    us, cs = w.users[idx].tolist(), w.contexts[idx].tolist()
    names = [(f"user-{u}", CONTEXTS[c], f"seg-{u % SEGMENTS}") for u, c in zip(us, cs, strict=True)]
    keys = [cache_key(*x) for x in names]
    now = int(w.t_ms[-1])
    before = cache.stats.hits
    t0 = time.perf_counter()
    for k in keys:
        cache.get(k, now)
    get_s = time.perf_counter() - t0
    share = (cache.stats.hits - before) / n
    t0 = time.perf_counter()
    for user, ctx, seg in names:
        cache.get(cache_key(user, ctx, seg), now)
    both_s = time.perf_counter() - t0
    return n / get_s, n / both_s, share


def _ttl(p: TtlPolicy) -> str:
    return f"{p.base_s:g}s" if p.active_s == p.base_s else f"{p.base_s:g}s/{p.active_s:g}s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second of simulated time")
    ap.add_argument("--ttl", type=float, default=600.0, help="base TTL, seconds")
    ap.add_argument("--active-ttl", type=float, default=300.0, help="TTL for users active right now, seconds")
    ap.add_argument("--duration", type=float, default=0.0, help="simulated seconds (0: twice the base TTL)")
    ap.add_argument("--max-mib", type=float, default=512.0)
    ap.add_argument("--tight-mib", type=float, default=32.0)
    ap.add_argument("--lookups", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    duration = a.duration or 2 * a.ttl
    w = workload(a.users, a.zipf, a.rate, duration, a.seed)
    policy = TtlPolicy(base_s=a.ttl, active_s=a.active_ttl)
    print(f"workload: {a.users:,} users, Zipf s={a.zipf:g}, {a.rate:g} req/s (Poisson), {duration:g} s simulated "
          f"→ {len(w.t_ms):,} requests, {len(np.unique(w.users)):,} distinct users; contexts "
          + ", ".join(f"{c} {p:.0%}" for c, p in zip(CONTEXTS, CONTEXT_P, strict=True))
          + f", {SEGMENTS} segments; {POOL} items per origin list; seed {a.seed}")
    print(f"active right now = a request within {policy.active_window_s:g} s; "
          f"'steady' = requests after the first base TTL ({a.ttl:g} s)")
    runs = [
        run("configured", w, policy, int(a.max_mib * MIB), a.seed),
        run("TTL = 1 s", w, TtlPolicy(base_s=1.0, active_s=1.0), int(a.max_mib * MIB), a.seed),
        run(f"tight {a.tight_mib:g} MiB", w, policy, int(a.tight_mib * MIB), a.seed),
    ]
    print(f"\n{'run':<15} {'TTL':>9} {'budget':>8} {'hit rate':>8} {'steady':>7} {'misses':>7} {'expired':>7} "
          f"{'evicted':>8} {'origin':>7} {'on hits':>7} {'entries':>7} {'MiB':>6} {'wall s':>6}")
    for r in runs:
        s = r.cache.stats
        assert r.origin_calls == s.misses + s.expired == r.requests - r.hits  # the only origin calls are misses
        print(f"{r.name:<15} {_ttl(r.policy):>9} {r.max_bytes / MIB:>7g}M {r.hits / r.requests:>8.1%} "
              f"{r.steady_hits / max(r.steady_requests, 1):>7.1%} {s.misses:>7,} {s.expired:>7,} {s.evicted:>8,} "
              f"{r.origin_calls:>7,} {r.origin_calls_on_hits:>7} {s.entries:>7,} {s.bytes / MIB:>6.1f} "
              f"{r.wall_s:>6.1f}")
    print("  origin = origin calls (= misses + expired, every non-hit); on hits = origin calls made while serving hits")
    acc, real = memory_per_entry(2_000, a.seed)
    print(f"\nmemory per entry ({POOL} items): accounted {acc:,.0f} B; tracemalloc {real:,.0f} B "
          f"(accounted / measured = {acc / real:.2f})")
    gets, both, share = lookups_per_s(runs[0], w, a.lookups)
    print(f"lookups (warm 'configured' cache, {a.lookups:,} gets, {share:.0%} hits, one thread): "
          f"get {gets:,.0f}/s ({1e6 / gets:.2f} µs); cache_key + get {both:,.0f}/s ({1e6 / both:.2f} µs)")


if __name__ == "__main__":
    main()
