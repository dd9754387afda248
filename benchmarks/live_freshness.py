"""Local live mode freshness: an event appended to the Redis stream → visible through the FeatureStore readers.

A live driver runs as its own process (`python -m pipelines.live`, as deployed); this process
appends click events at a few steady rates, each for a new user, and polls
`FeatureStore.user_features` until the event shows among the user's recent interactions.
Beside the percentiles: the floor, an empty micro-batch (the fixed cost of running the Beam
graph once), the ratio, and where a micro-batch's time goes (from the driver's progress lines).

    python -m benchmarks.live_freshness [--rates 2,20,200] [--seconds 10] [--batch_size 500]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from schemas.clock import WALL
from stores import event_stream
from stores.feature_store import FeatureStore
from stores.redis_client import get_redis, redis_url

ROOT = Path(__file__).resolve().parents[1]
BATCH_LINE = re.compile(r"^batch \d+.*?: (\d+) entries .*; (\d+) ms \((.*)\)$")
READY_LINE = re.compile(r"empty in (\d+) ms, an empty micro-batch takes (\d+) ms")
REDIS_PARTS = ("dedupe", "stage", "mark", "ack")  # not "read": it includes the blocking wait for events


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


class DriverOutput(threading.Thread):
    """Reads the driver's progress lines with the time each arrived."""

    def __init__(self, proc: subprocess.Popen) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.lines: list[tuple[float, str]] = []
        self.ready = threading.Event()
        self.first_ms: float | None = None
        self.floor_ms: float | None = None

    def run(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append((time.perf_counter(), line))
            if m := READY_LINE.search(line):
                self.first_ms, self.floor_ms = float(m.group(1)), float(m.group(2))
                self.ready.set()

    def batches(self, start: float, end: float) -> list[tuple[int, float, dict[str, float]]]:
        out = []
        for t, line in self.lines:
            if start <= t <= end and (m := BATCH_LINE.match(line)):
                parts = dict((k, float(v)) for k, v in (p.split(" ") for p in m.group(3).split(", ")))
                out.append((int(m.group(1)), float(m.group(2)), parts))
        return out


def measure_rate(client, store: FeatureStore, rate: float, seconds: float, tag: str) -> list[float]:
    """Appends `rate` events/s for `seconds`; returns each event's freshness in ms."""
    n = max(1, round(rate * seconds))
    appended: dict[str, float] = {}
    lock = threading.Lock()

    def produce() -> None:
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            user = f"fresh-{tag}-{i}"
            event = {"event_id": f"{user}-e", "ts": WALL.now_ms(), "user_id": user, "type": "click",
                     "item_id": "bench-item"}
            with lock:
                appended[user] = time.perf_counter()
            event_stream.append(client, [event])

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    fresh: list[float] = []
    seen: set[str] = set()
    deadline = time.perf_counter() + seconds + 60
    while len(seen) < n and time.perf_counter() < deadline:
        with lock:
            pending = [(u, t) for u, t in appended.items() if u not in seen]
        for user, t0 in pending:
            if store.user_features(user)["recent"]:
                fresh.append((time.perf_counter() - t0) * 1000)
                seen.add(user)
        time.sleep(0.002)
    producer.join()
    if len(seen) < n:
        print(f"  warning: {n - len(seen)} of {n} events never became visible", file=sys.stderr)
    return fresh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="2,20,200", help="events per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each rate runs")
    parser.add_argument("--batch_size", type=int, default=500)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r]

    url = redis_url()
    client = get_redis(url)
    client.delete("pr:events")
    store = FeatureStore(client)
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONWARNINGS="ignore", REDIS_URL=url)
        cmd = [sys.executable, "-m", "pipelines.live", "--redis_url", url, "--lake", f"{tmp}/lake",
               "--vector_store", f"embedded://{tmp}/vectors", "--batch_size", str(args.batch_size),
               "--block_ms", "1000", "--consumer", "bench"]
        t_start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, bufsize=1)
        out = DriverOutput(proc)
        out.start()
        try:
            if not out.ready.wait(120):
                raise SystemExit("the live driver did not start within 120 s")
            startup = time.perf_counter() - t_start
            floor = out.floor_ms or float("nan")
            print(f"live driver ready in {startup:.1f}s: imports, then building + translating the Beam graph and"
                  f" running it empty {out.first_ms:.0f} ms (once); the floor, an empty micro-batch: {floor:.0f} ms")
            print(f"{'rate/s':>7} {'events':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'p50/fl':>7}"
                  f" {'p99/fl':>7} {'batches':>7} {'ev/batch':>8} {'batch ms':>8} {'beam':>6} {'redis':>6}"
                  f" {'lake':>5} {'vectors':>7}")
            for rate in rates:
                t0 = time.perf_counter()
                fresh = measure_rate(client, store, rate, args.seconds, f"{int(rate)}-{int(t0)}")
                batches = out.batches(t0, time.perf_counter() + 0.5)
                sizes = [b[0] for b in batches] or [0]
                durations = [b[1] for b in batches] or [0.0]

                def part(names, bs=batches):
                    return statistics.mean(sum(b[2].get(k, 0.0) for k in names) for b in bs) if bs else 0.0

                p50, p99 = percentile(fresh, 50), percentile(fresh, 99)
                print(f"{rate:7.0f} {len(fresh):7d} {p50:7.0f} {p99:7.0f} {max(fresh):7.0f} {p50 / floor:7.1f}"
                      f" {p99 / floor:7.1f} {len(batches):7d} {statistics.mean(sizes):8.1f}"
                      f" {statistics.mean(durations):8.0f} {part(('beam',)):6.0f} {part(REDIS_PARTS):6.0f}"
                      f" {part(('lake',)):5.0f} {part(('drain',)):7.0f}", flush=True)
                time.sleep(1.5)  # let the driver go idle between rates
        finally:
            proc.terminate()  # the driver we started, by its pid
            proc.wait(30)
    print("freshness = waiting for the micro-batch in flight + the event's own micro-batch + polling (2 ms).")
    print("batch ms splits into beam (running the graph: parse, features, Lua merges), redis (driver: dedupe markers,"
          " staging, ack+trim; not the blocking read), lake (archive) and vectors (draining the embedded index).")


if __name__ == "__main__":
    main()
