"""Serving's exploration policy: closed-loop learning, exploration share, closeness to the ranker, speed.

    python -m benchmarks.bandit_loop [--rounds 20000] [--seed 0] [--requests 1000] [--calls 500]

1. The closed loop of `pipelines.bandit_sim` on the synthetic world (500 users, 300 items, 4
   segments; 100 candidates, 10 shown) for every policy, in two regimes: the default ranker
   (personalization 0.2, item errors of sd 1.5: the counts have something to correct) and a
   well-personalized one (personalization 1.0, item errors of sd 1.0). Click rate per tenth of
   the rounds and cumulative regret at a few checkpoints.
2. Over `--requests` requests of calibrated-looking ranker probabilities
   (`bandit_sim.calibrated_probabilities`: logit p ~ N(−6, 2) over 500, the top 100 kept), an
   empty bandit store, 20 shown: mean Kendall τ to the ranker's order and the exploration share
   by n0, and the share by ε at the default n0. Also τ when the empty store is read through
   `borrowed_posterior` (α = β = 11, see the report).
3. `thompson_slate` wall time, 20 from 100 candidates, p50/p99 over `--calls` calls, by n_sim
   and ε (one process, one thread; the machine is shared, so p99 carries its noise).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pipelines.bandit_sim import POLICIES, LoopConfig, calibrated_probabilities, ranker_tau, run_all
from serving.exploration import DEFAULT_N0, exploration_share, thompson_slate


def _loop(title: str, config: LoopConfig) -> None:
    t0 = time.perf_counter()
    results = run_all(config)
    elapsed = time.perf_counter() - t0
    print(f"\n{title} — {config.rounds} rounds, k={config.k} of {config.candidates}, n0={config.n0:g}, "
          f"ε-greedy ε={config.epsilon:g}, personalization={config.personalization:g}, "
          f"item_bias={config.item_bias:g} ({elapsed:.1f} s)")
    windows = 10
    print("  click rate per tenth of the rounds (clicks / impression)")
    for name, r in results.items():
        print(f"    {name:15s} " + " ".join(f"{x:.3f}" for x in r.click_rate(windows)))
    checkpoints = [config.rounds // 10, config.rounds // 4, config.rounds // 2, config.rounds]
    print("  cumulative regret (expected clicks lost vs the best slate) at rounds " + ", ".join(map(str, checkpoints)))
    for name, r in results.items():
        cum = r.cumulative_regret()
        print(f"    {name:15s} " + " ".join(f"{cum[c - 1]:9.1f}" for c in checkpoints)
              + f"   exploration share {r.exploration_share:.3f}")


def _closeness(requests: list[np.ndarray], seed: int) -> None:
    def slates(n0: float, epsilon: float = 0.0, prior: float = 1.0):
        rng = np.random.default_rng(seed)
        ab = np.full(100, prior)
        return [thompson_slate(p, ab, ab, 20, rng, n0=n0, epsilon=epsilon, n_sim=1) for p in requests]

    print(f"\nCloseness to the ranker — {len(requests)} requests, 20 of 100 shown, empty bandit store (α = β = 1)")
    print(f"  {'n0':>8s} {'mean τ':>8s} {'τ p10':>6s} {'explored':>9s}")
    for n0 in (5.0, 20.0, 50.0, 100.0, 200.0, 300.0, DEFAULT_N0, 400.0, 1_000.0, 1e4, 1e12):
        s = slates(n0)
        taus = np.array([ranker_tau(x) for x in s])
        mark = "  ← DEFAULT_N0" if n0 == DEFAULT_N0 else ""
        print(f"  {n0:8g} {taus.mean():8.3f} {np.percentile(taus, 10):6.2f} {exploration_share(s):9.3f}{mark}")
    tau_11 = np.mean([ranker_tau(x) for x in slates(DEFAULT_N0, prior=11.0)])
    print(f"  empty store read through borrowed_posterior (α = β = 11): mean τ {tau_11:.3f} at n0 = {DEFAULT_N0:g}")
    print(f"  exploration share by ε at n0 = {DEFAULT_N0:g}")
    for eps in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3):
        print(f"    ε = {eps:<5g} {exploration_share(slates(DEFAULT_N0, eps)):.3f}")


def _timing(calls: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    one = np.ones(100)
    requests = [calibrated_probabilities(rng) for _ in range(calls)]
    print(f"\nthompson_slate wall time, 20 of 100 candidates, {calls} calls")
    for n_sim, eps in ((1_000, 0.0), (1_000, 0.1), (500, 0.0), (250, 0.0), (250, 0.1)):
        for p in requests[:20]:  # warm up
            thompson_slate(p, one, one, 20, rng, epsilon=eps, n_sim=n_sim)
        times = []
        for p in requests:
            t0 = time.perf_counter()
            thompson_slate(p, one, one, 20, rng, epsilon=eps, n_sim=n_sim)
            times.append(time.perf_counter() - t0)
        p50, p99 = np.percentile(np.array(times) * 1e3, [50, 99])
        print(f"  n_sim={n_sim:5d} ε={eps:<4g} p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--requests", type=int, default=1_000, help="requests for τ and the exploration share")
    parser.add_argument("--calls", type=int, default=500, help="timed thompson_slate calls per setting")
    args = parser.parse_args()

    print(f"policies: {', '.join(POLICIES)}; DEFAULT_N0 = {DEFAULT_N0:g}")
    _loop("Closed loop, default ranker (the acceptance regime)", LoopConfig(rounds=args.rounds, seed=args.seed))
    _loop("Closed loop, well-personalized ranker",
          LoopConfig(rounds=args.rounds, seed=args.seed, personalization=1.0, item_bias=1.0))
    rng = np.random.default_rng(args.seed)
    _closeness([calibrated_probabilities(rng) for _ in range(args.requests)], args.seed + 1)
    _timing(args.calls, args.seed + 2)


if __name__ == "__main__":
    main()
