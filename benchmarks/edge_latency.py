"""Edge latency over gRPC: cache hits and misses beside the origin and the gRPC echo floor, one run.

    python -m benchmarks.edge_latency [--rate 25] [--seconds 16] [--x1-seconds 6] [--n 20] [--hit-users 200]
        [--calls 2000] [--scale 2.0] [--registry DIR --data DIR]

Preparation and servers come from `benchmarks/serve_load.py`: the cached trained synthetic model
(~/.cache/pulserank/bench-serve), the log replayed and deployed into the embedded Redis and a
temporary vector store, the origin (`pulserank serve`) and the echo floor each in a process of
their own. Here an edge (`pulserank edge --origin … --registry …`, clock pinned to the log's end
like the origin) runs in a third process, subscribed to the origin's sync stream.

Targets, each measured with one client back to back (x1: latency that never queues) and at a
modest fixed Poisson rate (`--rate`, latency from the scheduled send time). The default is 25/s:
the origin alone saturates near 80/s on this 2-core machine, and the edge, Redis and this client
share the same two cores. Personalize(n = `--n`) for users of the log in their last segment:
- edge miss: every request a fresh `context.surface`, so its cache key is new and the edge passes
  the request to an origin with `include_pool` (the origin's answer goes back, its pool is cached);
- edge hit: `--hit-users` users whose (user, "home", segment) lists were cached beforehand, after
  the edge calibrated its n0 on them (it does once it has re-ranked 64 pools);
- edge hit, exploration off (x1 only): the same minus the bandit — what the Thompson step costs;
- origin: the same kind of requests straight to the origin, taking turns with the misses in one
  run (`Alternating`): the miss aim is their difference, and this VM's speed drifts between runs;
- origin + pool: the same with `include_pool`, what a miss asks an origin for;
- echo: the floor (a grpc.aio server returning its request bytes).
Every response's `source` is counted, so a "hit" run that went to the origin shows. CPU per
request is the server process's own (the edge's, for edge rows; in the turn-taking run the
origin's CPU is split between misses and direct requests by count). Before a run that reaches the
origin the edge's forwarded impressions are let drain.

Then, in this process (servers stopped), where a hit's server time goes: the edge scorer on 100
items of the catalogue (origin probabilities from `pipelines.bandit_sim.calibrated_probabilities`,
10 recent items); the edge bandit (`edge_slate`, 20 of 100, synced-like counts) at n_sim 250 (the
edge's), 100 and with exploration off; and a whole hit without gRPC (`Edge.personalize` on an edge
that was never started, lists cached directly) with its two parts, `serve_cached` (view, scorer,
bandit, response) and the impression logging (one `Slate` message built for forwarding, local shown counts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from benchmarks.serve_load import (
    CHILD_ENV,
    Run,
    Target,
    closed_loop,
    cpu_seconds,
    deploy_into_stores,
    free_port,
    model_and_log,
    open_loop,
    start_echo,
    start_origin,
    stop,
    wait_serving,
)
from schemas import personalization_pb2 as pb

ITEMS, SHOWN = 100, 20
HIT_SURFACE = "home"


def start_edge(registry_root: Path, origin_port: int, port: int, end: int, log: Path) -> subprocess.Popen:
    """The edge in its own process, its log in `log` (a pipe nobody reads would fill up and stall it)."""
    cmd = [sys.executable, "-m", "pulserank.cli", "edge", "--origin", f"127.0.0.1:{origin_port}",
           "--registry", str(registry_root), "--listen", f"127.0.0.1:{port}"]
    env = {**os.environ, **CHILD_ENV, "PULSERANK_AS_OF": str(end)}
    with log.open("w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)


def source_name(resp: pb.PersonalizeResponse) -> str:
    """The answering tier as the table prints it ("edge_scorer", "origin", ...)."""
    return pb.Source.Name(resp.source).removeprefix("SOURCE_").lower()


def counting(target: Target, sources: Counter) -> Target:
    """Wraps the target's call to count each response's `source` (proof a hit was a hit)."""
    call = target.call

    async def counted(req, timeout=None):
        resp = await call(req, timeout=timeout)
        sources[source_name(resp)] += 1
        return resp

    target.call = counted
    return target


def requests_for(users: list[str], segments: dict[str, str], n: int, surface: str | None = None,
                 disable_exploration: bool = False) -> list[pb.PersonalizeRequest]:
    """One request per user, in order; `surface=None` gives each a surface of its own (a fresh cache key)."""
    return [pb.PersonalizeRequest(user_id=u, n=n, disable_exploration=disable_exploration,
                                  context=pb.Context(segment=segments[u],
                                                     surface=surface if surface is not None else f"s{k}"))
            for k, u in enumerate(users)]


class Alternating:
    """Two targets taking turns, request by request, within one load. The miss aim is a difference
    (edge miss − origin), so both sides are measured in the same window: this 2-core VM's speed
    drifts between runs a few seconds apart (an origin GC pause or a slow minute lands on both)."""

    def __init__(self, first: Target, second: Target) -> None:
        self.targets = (first, second)
        self.name = f"{first.name} / {second.name}"
        self.turn = 0
        self.answered: list[int] = []  # which target, in the order the load records latencies
        self.errors: tuple[Counter, Counter] = (Counter(), Counter())
        self.sources: tuple[Counter, Counter] = (Counter(), Counter())

    async def call(self, req, timeout=None):
        which, self.turn = self.turn, self.turn ^ 1
        try:
            resp = await self.targets[which].call(req, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            self.errors[which][exc.code().name] += 1
            raise
        self.answered.append(which)  # the load appends this answer's latency right after
        self.sources[which][source_name(resp)] += 1
        return resp

    def split(self, run: Run, second_cpu_s: float) -> tuple[Run, Run]:
        """The run's answers by target; the first's CPU is the run's, the second's (`second_cpu_s`,
        which served both) is split between them by requests."""
        out = (Run(self.targets[0].name, run.load, seconds=run.seconds),
               Run(self.targets[1].name, run.load, seconds=run.seconds))
        for which, ms in zip(self.answered, run.latencies_ms, strict=True):
            out[which].latencies_ms.append(ms)
        for which in (0, 1):
            out[which].errors = dict(self.errors[which])
        share = len(out[0].latencies_ms) / max(1, len(run.latencies_ms))
        out[0].cpu_s, out[0].peer_cpu_s, out[1].cpu_s = run.cpu_s, second_cpu_s * share, second_cpu_s * (1 - share)
        return out


async def measure(addrs: dict[str, str], pids: dict[str, int], users: list[str], hit_users: list[str],
                  segments: dict[str, str], args: argparse.Namespace) -> list[tuple[str, Run, Counter]]:
    rng = np.random.default_rng(0)
    rows: list[tuple[str, Run, Counter]] = []
    per_load = int(args.rate * args.seconds * 2) + 2000  # more than any one load sends
    targets: list[Target] = []

    def target(kind: str) -> Target:
        t = Target(kind, addrs[kind], echo=kind == "echo", pid=pids[kind])
        targets.append(t)
        return t

    edge, origin, echo = target("edge"), target("origin"), target("echo")
    sources = Counter()
    counting(edge, sources)
    counting(origin, sources)
    try:
        # warm-up: connections, ONNX sessions' first runs, the origin's feature cache; then fill the hit users' lists
        warm = requests_for(list(rng.choice(users, 400)), segments, args.n, None)
        for t in (echo, origin, edge):
            await closed_loop(t, warm, 2, 2.0)
        fill = requests_for(hit_users, segments, args.n, HIT_SURFACE)
        for r in fill:
            await edge.call(r, timeout=5.0)
        await closed_loop(edge, fill, 2, 2.0)
        await asyncio.sleep(6.0)  # the edge calibrates n0 on the pools it re-ranked (background, ~1–2 s)
        sources.clear()

        hits = requests_for(list(rng.choice(hit_users, per_load)), segments, args.n, HIT_SURFACE)
        hits_off = requests_for(list(rng.choice(hit_users, per_load)), segments, args.n, HIT_SURFACE, True)
        loads = [("x1", lambda t, reqs: closed_loop(t, reqs, 1, args.x1_seconds)),
                 (f"{args.rate:g}/s", lambda t, reqs: open_loop(t, reqs, args.rate, args.seconds, rng))]
        for k, (load, run_load) in enumerate(loads):
            # misses and the origin: the same users, a fresh surface per request (the origin ignores surfaces)
            picks = list(rng.choice(users, per_load))
            misses = requests_for(picks, segments, args.n, None)
            for r in misses:
                r.context.surface = f"{load}-{r.context.surface}"
            pool = requests_for(picks, segments, args.n, None)
            for r in pool:
                r.include_pool = True
            # misses and the origin take turns in one run (`Alternating`): the miss aim compares them
            plan: list[tuple[str, Target | Alternating, list]] = [
                ("edge hit", edge, hits), ("edge miss / origin", Alternating(edge, origin), misses)]
            if k == 0:
                plan.insert(1, ("edge hit, no explore", edge, hits_off))
            plan += [("origin + pool", origin, pool), ("echo", echo, misses)]
            for name, t, reqs in plan:
                if t is not edge:
                    await asyncio.sleep(1.5)  # the edge forwards impressions every 0.1 s: let them drain
                sources.clear()
                pid = t.pid if isinstance(t, Target) else edge.pid
                cpu, peer = cpu_seconds(pid), cpu_seconds(origin.pid)
                run = await run_load(t, reqs)
                run.cpu_s, peer = cpu_seconds(pid) - cpu, cpu_seconds(origin.pid) - peer
                if t is edge:  # the origin's share: impressions it is forwarded
                    run.peer_cpu_s = peer
                if isinstance(t, Alternating):
                    miss, direct = t.split(run, peer)
                    parts = [("edge miss", miss, t.sources[0]), ("origin", direct, t.sources[1])]
                else:
                    parts = [(name, run, Counter(sources))]
                for part_name, part, counted in parts:
                    part.target = part_name
                    rows.append((part_name, part, counted))
                    errors = f", errors {dict(part.errors)}" if part.errors else ""
                    print(f"  {part_name:>22} {part.load:>9}: p50 {part.pct(50):6.2f} p99 {part.pct(99):6.2f} ms, "
                          f"{len(part.latencies_ms)} requests{errors}", flush=True)
    finally:
        for t in targets:
            await t.channel.close()
    return rows


def in_process(registry_root: Path, data: Path, calls: int) -> dict[str, np.ndarray]:
    """In-process times (ms): the edge scorer on 100 items, the edge bandit at several n_sim, and
    a cache hit's whole server-side path without gRPC (`Edge.personalize` on a cached list) with
    its parts — `serve_cached` (view, scorer, bandit, response) and the impression logging."""
    from pipelines.bandit_sim import calibrated_probabilities
    from serving.edge_bandit import DEFAULT_EXPLORATION, edge_slate
    from serving.edge_cache import CachedList, cache_key
    from serving.edge_scorer import EdgeScorer
    from serving.edge_server import Edge, EdgeConfig

    scorer = EdgeScorer(str(registry_root))
    if scorer.version is None:
        sys.exit(f"{registry_root}: no production version with an edge ranker")
    rng = np.random.default_rng(0)
    catalogue = [json.loads(line)["item_id"] for line in (data / "items.jsonl").read_text().splitlines() if line]
    pools = [list(rng.choice(catalogue, ITEMS, replace=False)) for _ in range(calls)]
    probs = [calibrated_probabilities(rng).astype(np.float32) for _ in range(calls)]
    recents = [list(rng.choice(pool, 10, replace=False)) for pool in pools]
    seg_c, seg_n = rng.poisson(3.0, (calls, ITEMS)), rng.poisson(60.0, (calls, ITEMS))
    glob_c, glob_n = rng.poisson(30.0, (calls, ITEMS)), rng.poisson(600.0, (calls, ITEMS))
    out: dict[str, np.ndarray] = {}

    def timed(name: str, fn) -> None:
        for i in range(min(50, calls)):
            fn(i)
        times = []
        for i in range(calls):
            t0 = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t0)
        out[name] = np.array(times) * 1000.0

    scores = [scorer.score(recents[i], pools[i], probs[i]).astype(np.float64) for i in range(calls)]
    bare = EdgeScorer(str(registry_root), memo_size=0)  # every call runs the ranker, as a first hit does
    timed(f"edge scorer, {ITEMS} items", lambda i: bare.score(recents[i], pools[i], probs[i]))
    for label, n_sim, explore in (("n_sim 250 (the edge's)", 250, True), ("n_sim 100", 100, True),
                                  ("exploration off", 250, False)):
        timed(f"edge_slate {SHOWN} of {ITEMS}, {label}",
              lambda i, s=n_sim, e=explore: edge_slate(scores[i], seg_c[i], seg_n[i], glob_c[i], glob_n[i], SHOWN,
                                                       rng, DEFAULT_EXPLORATION, e, s))

    async def hit_path() -> None:
        # an edge never started: no sync, no origin calls (a hit makes none); 200 users with cached lists
        edge = Edge(EdgeConfig(origins=["127.0.0.1:9"], registry=str(registry_root)), seed=0)
        now = edge.clock.now_ms()
        users = [f"bench-user-{u}" for u in range(200)]
        for u, user in enumerate(users):
            for k, item in enumerate(recents[u]):
                edge.view.record_local(user, item, "click", now - 1000 * (k + 1))
            order = np.argsort(-probs[u])
            edge.cache.put(cache_key(user, HIT_SURFACE, "global"),
                           CachedList(tuple(pools[u][i] for i in order), tuple(float(probs[u][i]) for i in order),
                                      "bench", "control", now, now + 3_600_000))
        reqs = [pb.PersonalizeRequest(user_id=user, n=SHOWN, context=pb.Context(surface=HIT_SURFACE))
                for user in users]
        key = {r.user_id: cache_key(r.user_id, HIT_SURFACE, "global") for r in reqs}
        responses = {}

        async def personalize(i: int) -> None:
            responses[i % len(reqs)] = await edge.personalize(reqs[i % len(reqs)])
            if len(edge._slates) > 1_000:  # never flushed here (no origin): keep memory flat
                edge._slates.clear()

        def serve_cached(i: int) -> None:
            r = reqs[i % len(reqs)]
            edge.serve_cached(r, edge.cache.get(key[r.user_id], now, edge.view.session_key(r.user_id)), "global")

        def impressions(i: int) -> None:
            r = reqs[i % len(reqs)]
            edge._log_impressions(r, responses[i % len(reqs)], "global")
            if len(edge._slates) > 1_000:
                edge._slates.clear()

        for i in range(100):
            await personalize(i)
        edge.calibrate_exploration()  # as the server does once it has re-ranked 64 pools
        times = []
        for i in range(calls):
            t0 = time.perf_counter()
            await personalize(i)
            times.append(time.perf_counter() - t0)
        out["hit: Edge.personalize, no gRPC"] = np.array(times) * 1000.0
        if edge.counters.hits != edge.counters.requests:
            sys.exit(f"in-process hit path: {edge.counters.misses} of {edge.counters.requests} requests missed")
        timed("  of which serve_cached", serve_cached)
        timed("  of which impression logging", impressions)
        await edge.close()

    asyncio.run(hit_path())
    return out


def report(rows: list[tuple[str, Run, Counter]], timings: dict[str, np.ndarray], rate: float) -> None:
    print("\nEdge latency over gRPC (client-side ms; CPU = the server process's ms per request; "
          "origin CPU = the origin's ms per edge request meanwhile)")
    head = (f"{'target':>22} | {'load':>9} | {'n':>5} | {'p50':>6} | {'p99':>6} | {'max':>6} | {'CPU':>5} | "
            f"{'origin CPU':>10} | sources")
    print(head)
    print("-" * (len(head) + 20))
    for name, run, sources in rows:
        mx = max(run.latencies_ms) if run.latencies_ms else float("nan")
        src = ", ".join(f"{s} {c}" for s, c in sorted(sources.items())) or "-"
        errors = f"; errors {dict(run.errors)}" if run.errors else ""
        peer = f"{run.peer_cpu_s * 1000 / len(run.latencies_ms):>10.2f}" if run.peer_cpu_s else f"{'':>10}"
        print(f"{name:>22} | {run.load:>9} | {len(run.latencies_ms):>5} | {run.pct(50):>6.2f} | {run.pct(99):>6.2f} | "
              f"{mx:>6.1f} | {run.cpu_ms:>5.2f} | {peer} | {src}{errors}")

    print("\nratios")
    by = {(name, run.load): run for name, run, _ in rows}
    for load in dict.fromkeys(run.load for _, run, _ in rows):
        hit, echo = by.get(("edge hit", load)), by.get(("echo", load))
        miss, origin = by.get(("edge miss", load)), by.get(("origin", load))
        if hit and echo:
            print(f"  {load:>9}: hit / echo    p50 {hit.pct(50) / echo.pct(50):5.1f}x     "
                  f"p99 {hit.pct(99) / echo.pct(99):5.1f}x")
        if miss and origin:
            print(f"  {load:>9}: miss − origin p50 {miss.pct(50) - origin.pct(50):+6.2f} ms   "
                  f"p99 {miss.pct(99) - origin.pct(99):+6.2f} ms")

    print("\nin-process (one thread), ms")
    for name, ms in timings.items():
        print(f"  {name:46s} p50 {np.percentile(ms, 50):7.3f}   p99 {np.percentile(ms, 99):7.3f}   max {ms.max():7.3f}")

    print("\naims")
    for load in (f"{rate:g}/s", "closed x1"):
        hit, miss, origin = by.get(("edge hit", load)), by.get(("edge miss", load)), by.get(("origin", load))
        if hit:
            ok = hit.pct(99) <= 5 and not hit.errors
            print(f"  hit p99 ≤ 5 ms ({load}): {hit.pct(99):.2f} ms — {'met' if ok else 'missed'}")
        if miss and origin:
            # failed misses (the edge's origin deadline, 200 ms) are the slowest ones: their absence is no win
            failed = sum(miss.errors.values())
            ok = miss.pct(99) <= origin.pct(99) + 5 and not failed
            why = f" ({failed} of {failed + len(miss.latencies_ms)} failed: {dict(miss.errors)})" if failed else ""
            print(f"  miss p99 ≤ origin p99 + 5 ms ({load}): {miss.pct(99):.1f} vs {origin.pct(99):.1f} + 5 — "
                  f"{'met' if ok else 'missed'}{why}")
    score = next((ms for name, ms in timings.items() if name.startswith("edge scorer")), None)
    if score is not None:
        print(f"  scoring {ITEMS} items p99 far under 15 ms: {np.percentile(score, 99):.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=25.0, help="the open-loop rate (requests/s)")
    parser.add_argument("--seconds", type=float, default=16.0, help="per open-loop run (~400 requests at 25/s)")
    parser.add_argument("--x1-seconds", type=float, default=6.0, help="per one-client run")
    parser.add_argument("--n", type=int, default=20, help="items per Personalize")
    parser.add_argument("--hit-users", type=int, default=200, help="users whose lists are cached for the hit runs")
    parser.add_argument("--calls", type=int, default=2000, help="in-process timed calls per measurement")
    parser.add_argument("--scale", type=float, default=2.0, help="synthetic data set size (2.0: 600 items)")
    parser.add_argument("--registry", default=None, help="an existing trained registry (with --data)")
    parser.add_argument("--data", default=None, help="the event logs that registry was trained on (a directory)")
    args = parser.parse_args()
    started = time.perf_counter()
    registry_root, data, files, end, segments = model_and_log(parser, args)

    from stores.redis_client import redis_url, shutdown_embedded

    url = redis_url()
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="edge-latency-") as tmp:
        store = f"embedded://{tmp}/vectors"
        try:
            version = deploy_into_stores(registry_root, files, end, url, store)
            port, metrics_port, echo_port, edge_port = free_port(), free_port(), free_port(), free_port()
            procs.append(start_origin(registry_root, url, store, end, port, metrics_port))
            procs.append(start_echo(echo_port))
            wait_serving(f"127.0.0.1:{port}", procs[0])
            wait_serving(f"127.0.0.1:{echo_port}", procs[1])
            edge_log = Path(tmp) / "edge.log"
            procs.append(start_edge(registry_root, port, edge_port, end, edge_log))
            wait_serving(f"127.0.0.1:{edge_port}", procs[2])
            users = sorted(segments)
            hit_users = list(np.random.default_rng(1).choice(users, min(args.hit_users, len(users)), replace=False))
            print(f"model {version}; {len(users)} users, {len(hit_users)} cached for hits; Personalize n={args.n}; "
                  f"{args.x1_seconds:g} s one client, {args.seconds:g} s at {args.rate:g}/s; {os.cpu_count()} cores, "
                  f"load average {os.getloadavg()[0]:.2f} before the run", flush=True)
            addrs = {"origin": f"127.0.0.1:{port}", "echo": f"127.0.0.1:{echo_port}", "edge": f"127.0.0.1:{edge_port}"}
            pids = {"origin": procs[0].pid, "echo": procs[1].pid, "edge": procs[2].pid}
            rows = asyncio.run(measure(addrs, pids, users, hit_users, segments, args))
            load_after = os.getloadavg()[0]
            calibrated = [line.split(": ", 1)[-1] for line in edge_log.read_text().splitlines()
                          if "edge bandit" in line]
            print("the edge's exploration: " + ("; ".join(calibrated) or "never calibrated (default n0)"), flush=True)
        finally:
            for p in reversed(procs):
                stop(p)
            shutdown_embedded()
    timings = in_process(registry_root, data, args.calls)
    report(rows, timings, args.rate)
    print(f"\nload average {load_after:.2f} after the gRPC runs (the edge, the origin, Redis and this client count "
          f"~1-2); total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
