"""Replay throughput on MovieLens-100K: every transform and real Redis writes, beside a bare-Beam floor.

    python -m benchmarks.replay_throughput [--data DIR] [--as-of T] [--repeats N] [--no-stages] [--profile]

- **full**: `pipelines.replay.run` on the data set (parse, dedupe, every feature family, item
  lookups, Redis merges, vector queue drain) into a fresh private redis-server;
- **floor**: the least any Beam replay of these files costs on the same runner, measured in the
  same process: `ReadFromText` + `json.loads` + `GroupByKey` on the event id + count;
- **stages** (where the time goes, by sub-pipelines of the same transforms): read + parse +
  dedupe only; + every feature family without the sink (lookups still read Redis); the sink
  is what the full run adds on top;
- `--profile`: one more full run under cProfile, its own time grouped by component.

Every pipeline runs on `FnApiRunner` (in-process, one core for Python; Redis takes the other).
Each line shows wall seconds, this process's CPU seconds and redis-server's (from /proc): on a
shared machine the CPU figures are the steadier ones. The issue's aim is 10,000 events/s.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.datasets import FetchOptions, fetch
from pipelines.gc_tuning import relaxed_gc
from pipelines.replay import run as run_replay
from schemas.features import FeatureConfig
from stores.redis_client import get_redis
from stores.redis_server import EmbeddedRedis
from transforms.features import Catalog, ComputeFeatures, RouteEvents
from transforms.parse import ParseEvents, ReadEventLines

DEFAULT_DATA = "out/demo/data/movielens100k"
DEFAULT_AS_OF = "1998-04-23T00:00:00Z"  # just after MovieLens-100K's last rating, as an analyst pins it


def _options() -> PipelineOptions:
    return PipelineOptions(["--runner=FnApiRunner"])


def _files(data: Path) -> list[str]:
    manifest = data / "manifest.json"
    if not manifest.exists():
        print(f"fetching movielens100k into {data}")
        fetch("movielens100k", data, FetchOptions())
    return [str(data / name) for name in json.loads(manifest.read_text())["files"]]


def _count(n: int) -> None:
    Metrics.counter("benchmark", "out").inc(n)


@dataclass
class Timing:
    """Wall seconds, CPU seconds of this process (the in-process runner) and of redis-server."""

    wall: float
    cpu: float
    redis_cpu: float
    out: int = 0

    def __str__(self) -> str:
        return f"{self.wall:6.2f}s wall  {self.cpu:6.2f}s cpu  (redis-server {self.redis_cpu:5.2f}s cpu)"


def _redis_cpu(pid: int | None) -> float:
    """utime + stime of a process, from /proc (0 when unknown)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(fn, redis_pid: int | None = None) -> tuple[Timing, object]:
    wall, cpu, rcpu = time.perf_counter(), time.process_time(), _redis_cpu(redis_pid)
    value = fn()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu, _redis_cpu(redis_pid) - rcpu), value


def _timed(build) -> int:
    """Runs a pipeline built by `build(p)` (a PCollection of counts) on FnApiRunner; returns the total."""
    p = beam.Pipeline(options=_options())
    build(p) | beam.CombineGlobally(sum) | beam.Map(_count)
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("out"))["counters"]
    return sum(c.committed or c.attempted or 0 for c in counters)


def floor(files: list[str]) -> int:
    """ReadFromText + json parse + GroupByKey + count: the bare Beam cost of a replay."""
    def build(p):
        lines = [p | f"Read{i}" >> beam.io.ReadFromText(f) for i, f in enumerate(files)]
        return (
            lines
            | beam.Flatten()
            | beam.Map(json.loads)
            | beam.Map(lambda e: (e["event_id"], 1))
            | beam.GroupByKey()
            | beam.Map(lambda kv: len(list(kv[1])))
        )
    return _timed(build)


def parse_only(files: list[str]) -> int:
    def build(p):
        parsed = p | ReadEventLines(files) | ParseEvents()
        return parsed["events"] | beam.Map(lambda _: 1)
    return _timed(build)


def features_without_sink(files: list[str], url: str) -> int:
    """Every family up to the writes; the catalog must already be in Redis (lookups read it)."""
    config = FeatureConfig()  # the replay's defaults (bandit decay off)

    def build(p):
        routed = (p | ReadEventLines(files) | ParseEvents())["events"] | RouteEvents()
        done = routed["catalog"] | Catalog(config) | "CountCatalog" >> beam.combiners.Count.Globally()
        writes = routed | ComputeFeatures(url, config, wait_for=done)
        return writes | beam.Map(lambda _: 1)
    return _timed(build)


def full(files: list[str], url: str, as_of: str, work: Path, tag: str):
    client = get_redis(url)
    client.flushdb()
    client.close()
    return run_replay(["--runner=FnApiRunner", "--input", ",".join(files), "--dead_letters", str(work / f"dl-{tag}"),
                       "--redis_url", url, "--vector_store", f"embedded://{work / f'vectors-{tag}'}",
                       "--as_of", as_of])


def _component(filename: str, name: str) -> str:
    if "apache_beam/coders" in filename or "_pickle" in name:
        return "Beam coders / pickling"
    if "dataclasses.py" in filename:
        return "dataclass pickling (getstate/setstate)"
    if "apache_beam" in filename:
        return "Beam runner and SDK harness"
    if "/redis/" in filename or "socket" in name:
        return "redis-py client and socket I/O"
    if "_thread.lock" in name:
        return "waiting on threads (Enrichment's request thread, Redis round trips)"
    for part in ("schemas/", "transforms/summaries/", "transforms/observe", "transforms/parse", "transforms/features",
                 "transforms/sinks", "stores/", "json/"):
        if part in filename:
            return {"json/": "json (stdlib)"}.get(part, part.rstrip("/"))
    return "other (stdlib, numpy, builtins)"


def profile(files: list[str], url: str, as_of: str, work: Path, top: int = 15) -> None:
    prof = cProfile.Profile()
    prof.enable()
    res = full(files, url, as_of, work, "profiled")
    prof.disable()
    stats = pstats.Stats(prof)
    by_component: dict[str, float] = defaultdict(float)
    total = 0.0
    for (filename, _, name), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        by_component[_component(filename, name)] += tottime
        total += tottime
    print(f"\nprofiled full run: {res.seconds:.1f}s under cProfile; own time by component:")
    for comp, secs in sorted(by_component.items(), key=lambda kv: -kv[1]):
        print(f"  {secs:7.2f}s  {100 * secs / total:5.1f}%  {comp}")
    print(f"\ntop {top} functions by own time:")
    stats.sort_stats("tottime").print_stats(top)


def _best(fn, repeats: int, redis_pid: int | None) -> tuple[Timing, object]:
    runs = [_measure(fn, redis_pid) for _ in range(repeats)]
    return min(runs, key=lambda r: r[0].wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="a movielens100k directory (fetched when missing)")
    parser.add_argument("--as-of", default=DEFAULT_AS_OF, help="the clock the replay is pinned to")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each measurement (the fastest is shown)")
    parser.add_argument("--no-stages", action="store_true", help="skip the parse / features sub-pipelines")
    parser.add_argument("--profile", action="store_true", help="also profile one full run")
    args = parser.parse_args()
    files = _files(Path(args.data))

    # The replay relaxes the garbage collector while it runs (pipelines/gc_tuning.py); the floor and
    # the sub-pipelines get the same setting, so the comparison is like for like.
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory(prefix="pr-bench-") as tmp, relaxed_gc():
        work, url, pid = Path(tmp), server.url, server.pid
        floor_t, floor_n = _best(lambda: floor(files), args.repeats, pid)
        runs = iter(range(args.repeats))
        full_t, res = _best(lambda: full(files, url, args.as_of, work, f"run{next(runs)}"), args.repeats, pid)
        n = res["events_read"]
        print(f"MovieLens-100K: {n:,} events from {', '.join(Path(f).name for f in files)}, as of {args.as_of};"
              f" load average before: {os.getloadavg()[0]:.2f} (the wall figures assume an idle machine)")
        print(f"floor  (ReadFromText + json + GroupByKey + count)  {floor_t}  {floor_n / floor_t.wall:8,.0f} events/s")
        print(f"replay (every transform, real Redis writes)        {full_t}  {n / full_t.wall:8,.0f} events/s"
              f" = {floor_t.wall / full_t.wall:.2f}x the floor's rate ({n / full_t.cpu:,.0f} events per cpu-second)")
        print(f"       {res.summary()}")
        if not res.reconciles:
            raise SystemExit("the replay's counts do not reconcile")
        if not args.no_stages:
            parse_t, _ = _best(lambda: parse_only(files), args.repeats, pid)
            feat_t, writes = _best(lambda: features_without_sink(files, url), args.repeats, pid)
            print("where the time goes (sub-pipelines of the same transforms; each line adds to the one above):")
            print(f"  read + parse + dedupe                {parse_t}")
            print(f"  + routing, lookups, every family     {feat_t}  ({writes:,} writes)")
            print(f"  + sink (Redis merges, vector queue)  {full_t}")
        if args.profile:
            profile(files, url, args.as_of, work)


if __name__ == "__main__":
    main()
