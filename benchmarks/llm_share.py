"""How often the LLM reasoner is invoked on a mixed workload, and what each explanation path costs.

    python -m benchmarks.llm_share [--requests N] [--rate R] [--llm-delay-ms D] [--modes normal slow error]

Each request is one item explanation run through `serving.explain` + `LlmReasoner` (its policy,
cache, rate limit and hard deadline) against the loopback OpenAI-compatible server of the tests,
offered open-loop at R requests a second. The server (its own process, so it does not compete for
this process's interpreter lock) answers after D ms (a stand-in for a real
gateway's latency); in `slow` mode it answers after 1 s and in `error` mode with HTTP 500, to show
that the LLM path stays inside its budget either way.

The mix (per request, drawn independently from a seeded generator):

    users          5 % cold start, 55 % returning with strong signals, 40 % other returning users
    cache          20 % of returning users' requests are answered from a high-confidence cache
    explain=true   3 % of requests (the user asked why)
    items          8 % low-confidence (bandit α+β < 10, being explored), the rest 10..1000 trials
    high value     4 % (purchase surface);  cross-domain slates 3 %
    budget         200 ms minus an origin time ~ lognormal(median 30 ms); ~1 % leave < 20 ms
    repeats        users from a pool of 2,000 and items from 500, so some explanations repeat

The design expects the LLM on 5-10 % of requests. Printed: the policy's invoke share, the share of
requests that made an HTTP call (after the reasoner's cache and rate limit), the decisions by rule,
and p50/p99 latency of the template path beside the LLM path (HTTP calls) and LLM cache hits.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from serving.explain import ItemSignals, reasons
from serving.llm import DEADLINE_MARGIN_MS, LLM_PATH_BUDGET_MS, LlmConfig, LlmReasoner, PolicyInput, decide

MIN_BUDGET_MS = 20.0
MOODS = ("calm", "tense", "joyful", "melancholy")
SEGMENTS = ("students", "night owls", "families", "commuters")


@dataclass(frozen=True)
class Request:
    context: dict[str, str]
    signals: ItemSignals
    policy: PolicyInput


def workload(n: int, seed: int, cold_share: float = 0.05) -> list[Request]:
    """`n` requests drawn from the mix in the module docstring (cold starts taken from the other returning users)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        user, item = int(rng.integers(2_000)), int(rng.integers(500))
        kind = rng.choice(["cold", "strong", "returning"], p=[cold_share, 0.55, 0.45 - cold_share])
        cold = kind == "cold"
        low_conf = rng.random() < 0.08
        trials = float(rng.uniform(0, 10)) if low_conf else float(rng.uniform(10, 1000))
        origin_ms = float(rng.lognormal(np.log(30.0), 0.6))
        segment = SEGMENTS[user % len(SEGMENTS)]
        mood = MOODS[(user + item) % len(MOODS)]
        signals = ItemSignals(
            item_id=f"m{item}", title=f"Movie {item}", categories=("Drama",), score=float(rng.uniform(0.05, 0.6)),
            similar_to=() if cold else ((f"m{(item * 7) % 500}", f"Movie {(item * 7) % 500}", 0.5 + (item % 5) / 10),),
            trending_rank=item % 200 if item % 3 == 0 else None, segment=segment, explored=low_conf,
            is_new=low_conf and item % 2 == 0, bandit_trials=trials, mood_match=(mood, 0.3 + (item % 7) / 10),
            source="content" if cold else "collaborative",
        )
        context = {"user_id": f"u{user}", "segment": segment, "mood": mood,
                   "recent_titles": "" if cold else "; ".join(f"Movie {(user * k) % 500}" for k in (3, 5, 11))}
        policy = PolicyInput(
            user_asked=rng.random() < 0.03, cold_start=cold, bandit_trials=trials, high_value=rng.random() < 0.04,
            cross_domain=rng.random() < 0.03, cache_hit_high_confidence=not cold and rng.random() < 0.20,
            returning_strong_signals=kind == "strong", budget_left_ms=LLM_PATH_BUDGET_MS - origin_ms,
            rate_available=True,
        )
        out.append(Request(context, signals, policy))
    return out


async def run(requests: list[Request], reasoner: LlmReasoner, rate: float) -> list[tuple[str, float]]:
    """(path, ms) per request in request order, offered open-loop at `rate` a second.

    path: template | llm_call (an HTTP call, answered or not) | llm_cache.
    """
    results: list[tuple[str, float]] = [("", 0.0)] * len(requests)

    async def one(i: int, req: Request) -> None:
        t0 = time.perf_counter()
        e = await reasoner.explain(req.context, req.signals, reasons(req.signals), req.policy)
        ms = (time.perf_counter() - t0) * 1000.0
        # An HTTP call that timed out or failed is on the LLM path: it waited for the gateway.
        results[i] = ({"template": "template", "cache": "llm_cache"}.get(e.outcome, "llm_call"), ms)

    tasks = []
    start = time.perf_counter()
    for i, req in enumerate(requests):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, req)))
    await asyncio.gather(*tasks)
    return results


def _pct(values: list[float]) -> str:
    if not values:
        return "      -        -"
    return f"{np.percentile(values, 50):7.2f}  {np.percentile(values, 99):7.2f}"


def policy_share(requests: list[Request]) -> float:
    return sum(decide(r.policy, MIN_BUDGET_MS).invoke for r in requests) / len(requests)


async def measure(mode: str, args: argparse.Namespace, requests: list[Request]) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.llm_server", "--mode", mode, "--delay-ms", str(args.llm_delay_ms)],
        stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    base_url = server.stdout.readline().strip()
    config = LlmConfig(base_url, "loopback", timeout_ms=args.timeout_ms, rate_per_second=args.llm_rate,
                       burst=args.llm_rate, cache_ttl_s=600)
    reasoner = LlmReasoner(config, min_budget_ms=MIN_BUDGET_MS)
    try:
        results = await run(requests, reasoner, args.rate)
    finally:
        await reasoner.aclose()
        server.terminate()
        server.wait(timeout=10)
    stats = reasoner.stats()
    n = len(requests)
    policy = Counter(decide(r.policy, MIN_BUDGET_MS).reason for r in requests)
    invoke = sum(c for rule, c in policy.items() if rule in {"user_asked", "cold_start", "low_confidence",
                                                             "high_value", "cross_domain"})
    by_path: dict[str, list[float]] = {"template": [], "llm_call": [], "llm_cache": []}
    for path, ms in results:
        by_path[path].append(ms)
    print(f"\n== gateway mode: {mode} (answers after "
          f"{'1000' if mode == 'slow' else f'{args.llm_delay_ms:g}' if mode == 'normal' else '~0'} ms"
          f"{', HTTP 500' if mode == 'error' else ''}) ==")
    print(f"requests {n}, offered {args.rate:g}/s; policy invokes {invoke / n:6.2%}; "
          f"HTTP calls {stats['invoked'] / n:6.2%} ({stats['invoked']}); LLM text served "
          f"{(stats['llm_ok'] + stats['cache_hits']) / n:6.2%}")
    print(f"reasoner: {stats}")
    print("policy decisions: " + ", ".join(f"{rule} {c / n:.1%}" for rule, c in policy.most_common()))
    print(f"{'path':<10} {'count':>6}  {'p50 ms':>7}  {'p99 ms':>7}  {'max ms':>7}")
    for path, values in by_path.items():
        top = f"{max(values):7.2f}" if values else "      -"
        print(f"{path:<10} {len(values):>6}  {_pct(values)}  {top}")
    calls = [(ms, r.policy.budget_left_ms) for (path, ms), r in zip(results, requests, strict=True)
             if path == "llm_call"]
    late = max((ms - min(args.timeout_ms, left - DEADLINE_MARGIN_MS) for ms, left in calls), default=0.0)
    print(f"LLM-path answers past their budget_left_ms: {sum(ms > left for ms, left in calls)}; "
          f"latest answer vs its hard deadline {late:+.1f} ms (margin kept {DEADLINE_MARGIN_MS:g} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0, help="offered requests a second")
    parser.add_argument("--llm-delay-ms", type=float, default=40.0, help="the loopback gateway's answer time")
    parser.add_argument("--timeout-ms", type=float, default=120.0)
    parser.add_argument("--llm-rate", type=float, default=25.0, help="the reasoner's rate limit (calls a second)")
    parser.add_argument("--modes", nargs="+", default=["normal", "slow", "error"], choices=["normal", "slow", "error"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    requests = workload(args.requests, args.seed)
    print(f"LLM invocation share on a mixed workload: {args.requests} requests at {args.rate:g}/s, "
          f"timeout {args.timeout_ms:g} ms, LLM rate limit {args.llm_rate:g}/s (mix: see the module docstring)")
    shares = ", ".join(f"{cold:.0%} cold → {policy_share(workload(20_000, args.seed + 1, cold)):.1%}"
                       for cold in (0.0, 0.02, 0.05, 0.10))
    print(f"policy invoke share as the cold-start share varies (20,000 draws, `decide` alone): {shares}")
    for mode in args.modes:
        asyncio.run(measure(mode, args, requests))


if __name__ == "__main__":
    main()
