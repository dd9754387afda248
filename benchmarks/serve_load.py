"""Origin serving under load: Personalize (~500 candidates → 20 items) beside a gRPC echo server.

    python -m benchmarks.serve_load [--rates 25,50,100,200] [--seconds 10] [--concurrency 8] [--n 20]
        [--n-sim N] [--scale 2.0] [--registry DIR --data DIR]

Preparation (cached): the synthetic data set at `--scale` (2.0: 1,000 users, 600 items, so
collaborative retrieval alone fills the 500 candidates), a small model trained through
`pulserank train` (kept under ~/.cache/pulserank/bench-serve/<digest of args and code>), the log
replayed and the version deployed into the embedded Redis and an embedded vector store in a
temporary directory. `--registry/--data` point at an existing trained registry instead. With
`REDIS_URL` set, that database is used and FLUSHED first (as the test suite does): point it at
a scratch database.

The origin (`pulserank serve`, clock pinned to the log's end) and the floor — a grpc.aio echo
server with one unary method that returns its request — each run in a process of their own, so
the client's load generation does not share their GIL (it shares the machine's two cores).
One client back to back first (closed x1: the latency of a request that never queues). Open
loop: Poisson arrivals at each offered rate; latency counts from the scheduled send time, so a
stalled server cannot hide its queue (no coordinated omission). Closed loop: `--concurrency`
clients back to back (saturation). Requests are Personalize(n=20) for random users of the log,
in their last segment, exploration on. The per-stage breakdown and candidates per source come
from the origin's Prometheus endpoint, differenced around each run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from schemas import personalization_pb2 as pb
from schemas import personalization_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
ECHO_METHOD = "/bench.Echo/Echo"
STAGES = ("context", "retrieve", "features", "rank", "explore")
TRAIN_ARGS = ("--tower-epochs", "3", "--ranker-epochs", "1", "--content-dim", "64", "--hashed-dim", "256",
              "--embedding-dim", "32", "--holdout", "none", "--seed", "0", "--promote", "always")
_TRAINED_SOURCES = ("models", "pipelines/train.py", "transforms/training.py", "schemas", "pipelines/datasets")
CHILD_ENV = {"PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "2"}


# -- preparation ------------------------------------------------------------------------------------


def _digest(scale: float) -> str:
    """Changes with the training args, the scale and the code that shapes the model (like tests/conftest.py)."""
    h = hashlib.sha256(" ".join((*TRAIN_ARGS, f"scale={scale}")).encode())
    for name in _TRAINED_SOURCES:
        path = ROOT / name
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(file.relative_to(ROOT).as_posix().encode())
            h.update(file.read_bytes())
    return h.hexdigest()[:16]


def trained(scale: float) -> tuple[Path, Path]:
    """(registry root, data dir): trained once per digest through the real CLI, then reused."""
    from pipelines.datasets import FetchOptions, fetch

    home = Path(os.environ.get("PULSERANK_BENCH_CACHE", Path.home() / ".cache" / "pulserank" / "bench-serve"))
    home = home / _digest(scale)
    if not (home / "done.json").exists():
        shutil.rmtree(home, ignore_errors=True)
        data = home / "data"
        print(f"training a model on the synthetic data set (scale {scale}) into {home} ...", flush=True)
        fetch("synthetic", data, FetchOptions(seed=0, scale=scale))
        started = time.perf_counter()
        cmd = [sys.executable, "-m", "pulserank.cli", "train", "--input", f"{data}/events.jsonl,{data}/items.jsonl",
               "--registry", str(home / "registry"), "--workdir", str(home / "work"), *TRAIN_ARGS]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **CHILD_ENV})
        if proc.returncode != 0:
            sys.exit(f"pulserank train exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        (home / "done.json").write_text(json.dumps({"train_s": time.perf_counter() - started}))
    return home / "registry", home / "data"


def log_facts(data: Path) -> tuple[list[str], int, dict[str, str]]:
    """(event-log files, the log's last instant in ms, each user's last segment)."""
    from schemas.events import EventType, parse_event

    files = [str(p) for p in sorted(data.glob("*.jsonl")) if p.name != "session_shifts.jsonl"]
    end, segment = 0, {}
    for path in files:
        for line in Path(path).read_text().splitlines():
            try:
                e = parse_event(line)
            except ValueError:
                continue
            end = max(end, e.ts)
            if e.type is not EventType.ITEM and e.user_id:
                segment[e.user_id] = (e.context.segment if e.context else None) or ""
    return files, end, segment


def deploy_into_stores(registry_root: Path, files: list[str], end: int, redis_url: str, store: str) -> str:
    """Replays the log and deploys the registry's production version; returns the version."""
    from models import registry
    from pipelines import replay
    from pipelines.deploy import deploy
    from schemas.clock import Clock
    from stores.redis_client import get_redis

    client = get_redis(redis_url)
    client.flushdb()
    client.close()
    started = time.perf_counter()
    result = replay.run(["--input", ",".join(files), "--redis_url", redis_url, "--as_of", str(end),
                         "--dead_letters", str(Path(store.removeprefix("embedded://")).parent / "dl"),
                         "--vector_store", store])
    replay_s = time.perf_counter() - started
    alias = registry.read_alias(str(registry_root))
    if alias is None:
        sys.exit(f"{registry_root}: no production version (train with --promote always)")
    version = alias.version
    started = time.perf_counter()
    with open(os.devnull, "w") as quiet:
        deploy(str(registry_root), version, files, redis_url, store, clock=Clock(end), out=quiet)
    print(f"replay: {result.summary()}\ndeployed {version} in {time.perf_counter() - started:.0f} s "
          f"(replay {replay_s:.0f} s)", flush=True)
    return version


# -- the servers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def echo_server(port: int) -> None:
    """The floor: a grpc.aio server whose one unary method returns its request bytes."""

    async def echo(request: bytes, context) -> bytes:
        return request

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(echo)  # no (de)serializers: bytes in, bytes out
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("echo: serving", flush=True)
    await server.wait_for_termination()


def start_origin(registry_root: Path, redis_url: str, store: str, end: int, port: int, metrics_port: int,
                 config: str | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pulserank.cli", "serve", "--registry", str(registry_root), "--redis-url", redis_url,
           "--vector-store", store, "--listen", f"127.0.0.1:{port}", "--metrics-port", str(metrics_port)]
    if config:
        cmd += ["--config", config]
    env = {**os.environ, **CHILD_ENV, "PULSERANK_AS_OF": str(end), "REDIS_URL": redis_url}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def start_echo(port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "benchmarks.serve_load", "--echo-server", str(port)]
    return subprocess.Popen(cmd, env={**os.environ, **CHILD_ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=ROOT)


def wait_serving(address: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    """Polls the standard health service until SERVING (the echo server: until it answers)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        echo = channel.unary_unary(ECHO_METHOD)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                sys.exit(f"server on {address} exited {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # the echo server has no health service
                    try:
                        echo(b"", timeout=1)
                        return
                    except grpc.RpcError:
                        pass
            time.sleep(0.2)
    sys.exit(f"server on {address} not SERVING within {timeout_s:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- load -----------------------------------------------------------------------------------------


@dataclass
class Run:
    target: str
    load: str
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stages: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # stage → (mean, p50, p99) ms
    candidates: dict[str, float] = field(default_factory=dict)  # source → mean per request
    server_ms: tuple[float, float, float] | None = None  # the handler's own time (mean, p50, p99)
    cpu_s: float = 0.0  # CPU time the server process used during the run (all its threads)
    peer_cpu_s: float = 0.0  # CPU time a process behind it used meanwhile (an edge's origin)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms(self) -> float:
        """Server CPU per answered request: a cost the other loads on this shared machine do not inflate much."""
        return self.cpu_s * 1000 / len(self.latencies_ms) if self.latencies_ms else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Target:
    """One server as the client sees it: a channel and a unary call taking a PersonalizeRequest."""

    def __init__(self, name: str, address: str, echo: bool, pid: int) -> None:
        self.name = name
        self.pid = pid
        self.channel = grpc.aio.insecure_channel(address)
        if echo:
            self.call = self.channel.unary_unary(ECHO_METHOD,
                                                 request_serializer=pb.PersonalizeRequest.SerializeToString,
                                                 response_deserializer=pb.PersonalizeRequest.FromString)
        else:
            self.call = pb_grpc.PersonalizationStub(self.channel).Personalize


async def _one(target: Target, req: pb.PersonalizeRequest, t0: float, run: Run, timeout_s: float) -> None:
    try:
        await target.call(req, timeout=timeout_s)
        run.latencies_ms.append((time.perf_counter() - t0) * 1000)
    except grpc.aio.AioRpcError as exc:
        run.errors[exc.code().name] = run.errors.get(exc.code().name, 0) + 1


async def open_loop(target: Target, requests: list[pb.PersonalizeRequest], rate: float, seconds: float,
                    rng: np.random.Generator) -> Run:
    """Poisson arrivals at `rate`; each latency from its scheduled send time.

    The client wakes up to `spin` early and spins to the send time: asyncio's timer alone is
    late by ~0.9 ms (p50) and ~2.3 ms (p99) here, the client's lateness rather than the
    server's. The spin costs the client at most 5 % of a core at any rate."""
    run = Run(target.name, f"{rate:g}/s")
    gaps = rng.exponential(1.0 / rate, int(rate * seconds * 1.5) + 10)
    offsets = np.cumsum(gaps)
    offsets = offsets[offsets < seconds]
    tasks = []
    spin = min(0.002, 0.05 / rate)
    start = time.perf_counter() + 0.01
    for k, offset in enumerate(offsets):
        at = start + offset
        delay = at - time.perf_counter()
        if delay > spin:
            await asyncio.sleep(delay - spin)
        while time.perf_counter() < at:
            pass
        tasks.append(asyncio.create_task(_one(target, requests[k % len(requests)], at, run, 5.0)))
    await asyncio.gather(*tasks)
    run.seconds = max(seconds, time.perf_counter() - start)
    return run


async def closed_loop(target: Target, requests: list[pb.PersonalizeRequest], concurrency: int, seconds: float
                      ) -> Run:
    """`concurrency` clients, each sending its next request as soon as the last one returns."""
    run = Run(target.name, f"closed x{concurrency}")
    start = time.perf_counter()
    end = start + seconds

    async def client(k: int) -> None:
        while time.perf_counter() < end:
            await _one(target, requests[k % len(requests)], time.perf_counter(), run, 5.0)
            k += concurrency

    await asyncio.gather(*(client(k) for k in range(concurrency)))
    run.seconds = time.perf_counter() - start
    return run


# -- the origin's Prometheus histograms ----------------------------------------------------------


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of the endpoint, keyed by (name, sorted labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _hist(before: dict, after: dict, name: str, label: str, value: str) -> tuple[float, list[tuple[float, float]]]:
    """(mean, [(upper bound, cumulative count)]) of one labelled histogram's growth between two scrapes."""
    def delta(key):
        return after.get(key, 0.0) - before.get(key, 0.0)

    count = delta((f"{name}_count", ((label, value),)))
    total = delta((f"{name}_sum", ((label, value),)))
    buckets = []
    for (n, labels), _ in after.items():
        d = dict(labels)
        if n == f"{name}_bucket" and d.get(label) == value:
            buckets.append((float(d["le"]), delta((n, labels))))
    buckets.sort()
    return (total / count if count else float("nan")), buckets


def _quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Linear interpolation inside the bucket holding the q-quantile (as PromQL's histogram_quantile)."""
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    rank, lo, below = q * buckets[-1][1], 0.0, 0.0
    for le, cum in buckets:
        if cum >= rank:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * ((rank - below) / (cum - below) if cum > below else 0.0)
        lo, below = le, cum
    return lo


def attach_metrics(run: Run, before: dict, after: dict) -> None:
    for stage in STAGES:
        mean, buckets = _hist(before, after, "pulserank_stage_ms", "stage", stage)
        run.stages[stage] = (mean, _quantile(buckets, 0.5), _quantile(buckets, 0.99))
    mean, buckets = _hist(before, after, "pulserank_request_ms", "method", "Personalize")
    run.server_ms = (mean, _quantile(buckets, 0.5), _quantile(buckets, 0.99))
    sources = {dict(labels).get("source") for (n, labels) in after if n == "pulserank_candidates_count"}
    for source in sorted(s for s in sources if s):
        run.candidates[source], _ = _hist(before, after, "pulserank_candidates", "source", source)


# -- report ------------------------------------------------------------------------------------------


def report(pairs: list[tuple[Run, Run]]) -> None:
    print("\nlatency from the client (ms), achieved throughput (requests/s), server CPU per request (ms, all its "
          "threads); floor = gRPC echo, same client")
    head = f"{'load':>12} | {'origin p50':>10} {'p99':>7} {'req/s':>6} {'cpu':>5} {'errors':>6} | {'echo p50':>8} " \
           f"{'p99':>5} {'req/s':>6} {'cpu':>5} | {'p50 ×':>6} {'p99 ×':>6}"
    print(head)
    print("-" * len(head))
    for o, e in pairs:
        errs = sum(o.errors.values()) + sum(e.errors.values())
        print(f"{o.load:>12} | {o.pct(50):>10.1f} {o.pct(99):>7.1f} {o.throughput:>6.1f} {o.cpu_ms:>5.1f} {errs:>6d} | "
              f"{e.pct(50):>8.2f} {e.pct(99):>5.2f} {e.throughput:>6.0f} {e.cpu_ms:>5.2f} | "
              f"{o.pct(50) / e.pct(50):>6.1f} {o.pct(99) / e.pct(99):>6.1f}")
    for o, e in pairs:
        if o.errors or e.errors:
            print(f"  errors at {o.load}: origin {o.errors} echo {e.errors}")
    print("\norigin stages (server side, ms: mean / p50 / p99 from the Prometheus histograms; an awaiting stage also "
          "counts other requests' turns on the event loop)")
    head = f"{'load':>12} | " + " | ".join(f"{s:>17}" for s in (*STAGES, "handler"))
    print(head)
    print("-" * len(head))
    for o, _ in pairs:
        cells = [o.stages.get(s, (float("nan"),) * 3) for s in STAGES] + [o.server_ms or (float("nan"),) * 3]
        print(f"{o.load:>12} | " + " | ".join(f"{m:>5.1f} {p50:>5.1f} {p99:>5.0f}" for m, p50, p99 in cells))
    o = pairs[0][0]
    print("\ncandidates per request (mean): " + ", ".join(f"{s} {v:.0f}" for s, v in o.candidates.items()))


# -- main ---------------------------------------------------------------------------------------------


async def load_all(origin: Target, echo: Target, metrics_url: str, requests: list[pb.PersonalizeRequest],
                   rates: list[float], seconds: float, concurrency: int) -> list[tuple[Run, Run]]:
    rng = np.random.default_rng(0)
    for t in (echo, origin):  # warm-up: connections, ONNX sessions' first runs, Redis pools, the feature cache
        await closed_loop(t, requests, 4, 3.0)
    pairs = []

    async def measured(target: Target, load) -> Run:
        before, cpu = scrape(metrics_url) if target is origin else None, cpu_seconds(target.pid)
        run = await load(target)
        run.cpu_s = cpu_seconds(target.pid) - cpu
        if before is not None:
            attach_metrics(run, before, scrape(metrics_url))
        return run

    loads = [lambda t: closed_loop(t, requests, 1, seconds / 2)]  # one client: latency without queueing
    loads += [(lambda t, r=rate: open_loop(t, requests, r, seconds, rng)) for rate in rates]
    loads.append(lambda t: closed_loop(t, requests, concurrency, seconds))
    for load in loads:
        e = await measured(echo, load)
        o = await measured(origin, load)
        pairs.append((o, e))
        print(f"  {o.load}: origin p50 {o.pct(50):.1f} p99 {o.pct(99):.1f} ms, {o.throughput:.0f}/s, "
              f"{o.cpu_ms:.1f} ms CPU/request; echo p50 {e.pct(50):.2f} p99 {e.pct(99):.2f} ms, {e.throughput:.0f}/s",
              flush=True)
    return pairs


async def run_loads(origin_addr: str, origin_pid: int, echo_addr: str, echo_pid: int, metrics_url: str,
                    requests: list[pb.PersonalizeRequest], rates: list[float], seconds: float, concurrency: int
                    ) -> list[tuple[Run, Run]]:
    origin = Target("origin", origin_addr, echo=False, pid=origin_pid)
    echo = Target("echo", echo_addr, echo=True, pid=echo_pid)
    try:
        return await load_all(origin, echo, metrics_url, requests, rates, seconds, concurrency)
    finally:
        await origin.channel.close()
        await echo.channel.close()


def model_and_log(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """(registry root, data directory, log files, the log's end, its segments): `--registry/--data`,
    or the cached synthetic model trained for the benchmarks."""
    if bool(args.registry) != bool(args.data):
        parser.error("--registry and --data go together")
    registry_root, data = (Path(args.registry), Path(args.data)) if args.registry else trained(args.scale)
    files, end, segments = log_facts(data)
    return registry_root, data, files, end, segments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="25,50,100,200", help="offered loads (requests/s), comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="per load level")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop clients (saturation)")
    parser.add_argument("--n", type=int, default=20, help="items per Personalize")
    parser.add_argument("--scale", type=float, default=2.0, help="synthetic data set size (2.0: 600 items)")
    parser.add_argument("--n-sim", type=int, default=None,
                        help="the origin's Monte-Carlo draws per request for propensities (default: the server's)")
    parser.add_argument("--registry", default=None, help="an existing trained registry (with --data)")
    parser.add_argument("--data", default=None, help="the event logs that registry was trained on (a directory)")
    parser.add_argument("--echo-server", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server is not None:
        asyncio.run(echo_server(args.echo_server))
        return
    started = time.perf_counter()
    registry_root, data, files, end, segments = model_and_log(parser, args)

    from stores.redis_client import redis_url, shutdown_embedded

    url = redis_url()
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        store = f"embedded://{tmp}/vectors"
        try:
            version = deploy_into_stores(registry_root, files, end, url, store)
            port, metrics_port, echo_port = free_port(), free_port(), free_port()
            config = None
            if args.n_sim is not None:
                config = f"{tmp}/serve.yaml"
                Path(config).write_text(f"n_sim: {args.n_sim}\n")
            procs.append(start_origin(registry_root, url, store, end, port, metrics_port, config))
            procs.append(start_echo(echo_port))
            wait_serving(f"127.0.0.1:{port}", procs[0])
            wait_serving(f"127.0.0.1:{echo_port}", procs[1])
            rng = np.random.default_rng(0)
            users = sorted(segments)
            picks = rng.choice(len(users), size=2000)
            requests = [pb.PersonalizeRequest(user_id=users[i], n=args.n,
                                              context=pb.Context(segment=segments[users[i]])) for i in picks]
            rates = [float(r) for r in args.rates.split(",") if r]
            print(f"model {version}; {len(users)} users; Personalize n={args.n}, n_sim "
                  f"{args.n_sim or 'default'}; {args.seconds:g} s per load; "
                  f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} before the run", flush=True)
            pairs = asyncio.run(run_loads(f"127.0.0.1:{port}", procs[0].pid, f"127.0.0.1:{echo_port}", procs[1].pid,
                                          f"http://127.0.0.1:{metrics_port}/metrics", requests, rates, args.seconds,
                                          args.concurrency))
            report(pairs)
            print(f"load average {os.getloadavg()[0]:.2f} after the run (this process, the origin, the echo server "
                  "and Redis count ~1-2; more means other work shared the cores)")
            at100 = next((o for o, _ in pairs if o.load == "100/s"), None)
            if at100 is not None:
                print(f"\naim: p99 ≤ 25 ms at 100 requests/s — measured {at100.pct(99):.1f} ms "
                      f"({'met' if at100.pct(99) <= 25 else 'missed'})")
        finally:
            for p in procs:
                stop(p)
            shutdown_embedded()
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
