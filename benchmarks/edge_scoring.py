"""In-process cost of an edge cache hit's two steps: the ONNX edge scorer and the edge bandit.

    python -m benchmarks.edge_scoring --registry R [--calls 2000] [--seed 0]

R: a registry whose production version has `edge_ranker.onnx` (e.g. the suite's cached one,
~/.cache/pulserank/test-model/<digest>/registry). Per call, a pool of 100 items (ids item-00000…
item-00099; origin probabilities from `pipelines.bandit_sim.calibrated_probabilities`: logit p
~ N(−6, 2) over 500, the top 100 kept) and a user's last 10 interactions drawn from them afresh:

1. `EdgeScorer.score` of the 100 items, p50/p99 (the design's budget: 15 ms).
2. `edge_slate`, 20 of 100, n_sim = 250, at the default policy (n0 = DEFAULT_N0) with synced
   counts (segment and global rows), p50/p99; also with ε = 0.05, with n_sim = 100 (the
   propensities' Monte-Carlo draws are most of the cost) and with exploration disabled.
3. Both together (what a hit costs before the gRPC layer).

One process, one thread (onnxruntime intra_op_num_threads = 1, as serving runs it); the machine
is shared, so p99 carries its noise. Also the wall time of `calibrate(0.12, 200 pools)`.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from models import registry
from pipelines.bandit_sim import calibrated_probabilities
from serving.edge_bandit import DEFAULT_EXPLORATION, DEFAULT_TARGET_SHARE, EdgeExploration, calibrate, edge_slate
from serving.edge_scorer import EDGE_RANKER, EdgeScorer

ITEMS, SHOWN = 100, 20


def _line(name: str, times: list[float]) -> None:
    ms = np.array(times) * 1000.0
    print(f"  {name:46s} p50 {np.percentile(ms, 50):7.3f} ms   p99 {np.percentile(ms, 99):7.3f} ms   "
          f"max {ms.max():7.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per measurement")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    scorer = EdgeScorer(args.registry)
    if scorer.version is None:
        raise SystemExit(f"--registry {args.registry}: no production version with a loadable {EDGE_RANKER}")
    size = os.path.getsize(registry.load_version(args.registry, scorer.version).file_path(EDGE_RANKER))
    rng = np.random.default_rng(args.seed)
    ids = [f"item-{i:05d}" for i in range(ITEMS)]
    pools = [calibrated_probabilities(rng) for _ in range(args.calls)]
    recents = [list(rng.choice(ids, 10, replace=False)) for _ in range(args.calls)]
    seg_c, seg_n = rng.poisson(3.0, (args.calls, ITEMS)), rng.poisson(60.0, (args.calls, ITEMS))
    glob_c, glob_n = rng.poisson(30.0, (args.calls, ITEMS)), rng.poisson(600.0, (args.calls, ITEMS))
    print(f"edge ranker {scorer.version} ({size / 1024:.0f} KiB); {args.calls} calls each, {ITEMS} items, "
          f"{SHOWN} shown")

    for i in range(50):  # warm up
        scorer.score(recents[i], ids, pools[i])
    score_t, scores = [], []
    for i in range(args.calls):
        t0 = time.perf_counter()
        p = scorer.score(recents[i], ids, pools[i])
        score_t.append(time.perf_counter() - t0)
        scores.append(p.astype(np.float64))
    print("\nEdge scorer (onnxruntime, 1 thread)")
    _line(f"score {ITEMS} items (budget 15 ms)", score_t)

    print(f"\nEdge bandit, {SHOWN} of {ITEMS}, n_sim = 250, synced counts")
    n0 = DEFAULT_EXPLORATION.n0
    policies = [(f"edge_slate n0={n0:g}", DEFAULT_EXPLORATION, True, 250),
                (f"edge_slate n0={n0:g} ε=0.05", EdgeExploration(n0, 0.05), True, 250),
                (f"edge_slate n0={n0:g}, n_sim = 100", DEFAULT_EXPLORATION, True, 100),
                ("edge_slate, exploration disabled", DEFAULT_EXPLORATION, False, 250)]
    for name, policy, explore, n_sim in policies:
        for i in range(20):
            edge_slate(scores[i], seg_c[i], seg_n[i], glob_c[i], glob_n[i], SHOWN, rng, policy, explore, n_sim)
        times = []
        for i in range(args.calls):
            t0 = time.perf_counter()
            edge_slate(scores[i], seg_c[i], seg_n[i], glob_c[i], glob_n[i], SHOWN, rng, policy, explore, n_sim)
            times.append(time.perf_counter() - t0)
        _line(name, times)

    both = []
    for i in range(args.calls):
        t0 = time.perf_counter()
        p = scorer.score(recents[i], ids, pools[i]).astype(np.float64)
        edge_slate(p, seg_c[i], seg_n[i], glob_c[i], glob_n[i], SHOWN, rng, DEFAULT_EXPLORATION)
        both.append(time.perf_counter() - t0)
    print("\nA cache hit's scoring work (score + edge_slate)")
    _line("score + edge_slate", both)

    t0 = time.perf_counter()
    found = calibrate(DEFAULT_TARGET_SHARE, pools[:200], SHOWN, seed=args.seed)
    print(f"\ncalibrate({DEFAULT_TARGET_SHARE:g}, 200 pools, 20 000 slates): n0 = {found.n0:,.0f}, "
          f"ε = {found.epsilon:g} in {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
