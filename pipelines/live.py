"""Local live mode: a long-running driver that turns the Redis event stream into features in micro-batches.

Each micro-batch runs the SAME transforms as the batch replay (`pipelines.replay.build_features`:
ParseEvents → RouteEvents → Catalog → ComputeFeatures → WriteFeatures) on Beam's in-process
runner (FnApiRunner), over the batch's `("stream:<id>", n, raw)` tuples. The graph is built once
and rerun per batch, the tuples handed over through Redis (`StagedBatch`): building and
translating it costs more than running it on a small batch. Live mode is the single-machine
default, not a replacement for Flink/Dataflow (`pipelines.stream`).

One micro-batch, in this order (each step only after the previous one succeeded):

1. read: this consumer's pending entries first (a batch a crash interrupted comes back whole and
   identical), else up to `--batch_size` new entries, blocking up to `--block_ms`;
2. cross-batch dedupe: events whose id an earlier batch already merged (a `SET NX` marker per
   event id, TTL = the dedupe horizon) are counted as duplicates and left out; within the batch
   ParseEvents dedupes exactly;
3. merge: the Beam pipeline merges summaries into Redis (guarded by summary ids), queues vector
   upserts, and appends dead letters to the dead-letter stream (once per entry); the driver then
   drains the vector queue into the embedded index;
4. mark: the merged event ids get their seen-markers (value: this batch's id). Marked AFTER the
   merge: a crash before marking re-processes the batch, whose summaries (same events → same ids)
   the guards skip; a crash after marking finds markers holding this batch's own id, which count
   as unseen, so the redelivered batch is still the same batch;
5. archive: the merged events go to the lake (`stores.lake`, one file per date partition named by
   the batch's stream ids, rewritten identically on redelivery) and the archived mark is raised;
6. acknowledge the entries, then trim the stream below what is both archived and acknowledged.

Between batches, every `--prune_every_s` (wall seconds), users idle longer than `--idle_days` by
the driver's clock lose every feature key (`stores/retention.py`), so idle users stay bounded.

Duplicates further apart than the horizon (in wall time, the marker's TTL) are merged twice, as
in any streaming dedupe; the lake then holds both and a replay of it keeps one. Which copy of a
duplicate wins: the first merged in live mode, the earliest by event time in a batch replay (the
same when duplicates are exact copies, as retries are). Item lookups see the catalog as merged
by earlier batches and by the batch's own `item` events (the replay's barrier), so an item
appended after the interactions that name it is missing from their features, as in streaming.

    python -m pipelines.live --lake out/lake --as_of 1998-04-23T00:00:00Z --idle_exit_s 5
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines.options import FeatureOptions, feature_config
from pipelines.replay import build_features
from schemas import keys
from schemas.clock import AS_OF_ENV, clock_from, default_clock
from schemas.events import Event, EventError, try_parse_event
from stores import event_stream, lake, retention
from stores.redis_client import get_redis, redis_url
from stores.vector_sink import drain, is_embedded
from transforms.parse import NAMESPACE, ParseEvents
from transforms.sinks import WriteDeadLetterStream

CRASH_EXIT_CODE = 137
CRASH_POINTS = ("merge", "archive")


class LiveOptions(FeatureOptions, PipelineOptions):  # see pipelines/options.py
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--batch_size", type=int, default=500, help="most new entries per micro-batch")
        parser.add_argument("--block_ms", type=int, default=1000,
                            help="wait this long for new entries (< the Redis socket timeout)")
        parser.add_argument("--max_batches", type=int, default=0, help="stop after this many batches (0: never)")
        parser.add_argument("--idle_exit_s", type=float, default=0.0,
                            help="stop after this long without new entries (0: never)")
        parser.add_argument("--lake", default="out/lake", help="data-lake root (local path or gs://...)")
        parser.add_argument("--group", default=event_stream.GROUP, help="consumer group")
        parser.add_argument("--consumer", default="live-1",
                            help="consumer name; keep it across restarts so a crashed batch is redelivered")
        parser.add_argument("--quiet", action="store_true", help="no per-batch progress lines")
        parser.add_argument("--max_failures", type=int, default=3,
                            help="consecutive failed micro-batches to retry (redelivered whole) before giving up")
        parser.add_argument("--idle_days", type=float, default=retention.DEFAULT_IDLE_DAYS,
                            help="drop users idle this long by the clock (stores/retention.py; 0: never)")
        parser.add_argument("--prune_every_s", type=float, default=3600.0,
                            help="run the idle-user prune this often while live (wall seconds)")
        parser.add_argument("--crash_after_batches", type=int, default=0,
                            help="TEST HOOK: os._exit(137) during batch N (1-based), at --crash_point")
        parser.add_argument("--crash_point", choices=CRASH_POINTS, default="merge",
                            help="merge: after the merge, before marking/archiving/acknowledging; "
                                 "archive: after marking and archiving, before acknowledging")


@dataclass
class BatchStats:
    first_id: str
    last_id: str
    entries: int
    redelivered: bool
    counters: dict[str, int] = field(default_factory=dict)
    seen_before: int = 0  # duplicates of events an earlier batch merged
    lake_files: list[str] = field(default_factory=list)
    trimmed: int = 0
    ms: dict[str, float] = field(default_factory=dict)  # read, dedupe, stage, beam, drain, mark, lake, ack

    def __getitem__(self, name: str) -> int:
        return self.counters.get(name, 0)

    @property
    def reconciles(self) -> bool:
        """entries = written + dead letters + duplicates (in the batch and across batches)."""
        return self.entries == (self["events_written"] + self["dead_letters"] + self["duplicates"]
                                + self.seen_before) and self.entries == self["events_read"] + self.seen_before

    def line(self, number: int) -> str:
        total = sum(self.ms.values())
        where = ", ".join(f"{k} {v:.0f}" for k, v in self.ms.items() if v >= 1)
        again = " (redelivered)" if self.redelivered else ""
        return (f"batch {number}{again} [{self.first_id}..{self.last_id}]: {self.entries} entries → "
                f"{self['events_written']} events, {self['dead_letters']} dead letters, "
                f"{self['duplicates'] + self.seen_before} duplicates ({self.seen_before} across batches), "
                f"{self['keys_merged']} keys merged, {self['merges_skipped_by_guard']} skipped by guard; "
                f"{total:.0f} ms ({where})")


@dataclass
class LiveResult:
    batches: list[BatchStats] = field(default_factory=list)
    seconds: float = 0.0
    vectors_synced: int = 0

    def __getitem__(self, name: str) -> int:
        if name == "seen_before":
            return sum(b.seen_before for b in self.batches)
        if name == "entries":
            return sum(b.entries for b in self.batches)
        return sum(b[name] for b in self.batches)

    @property
    def reconciles(self) -> bool:
        return all(b.reconciles for b in self.batches)

    def summary(self) -> str:
        r = self
        return (f"{len(r.batches)} micro-batches: {r['entries']:,} entries = written {r['events_written']:,}"
                f" + dead letters {r['dead_letters']:,} + duplicates {r['duplicates'] + r['seen_before']:,}"
                f" in {r.seconds:.1f}s; keys merged {r['keys_merged']:,}, skipped by guard"
                f" {r['merges_skipped_by_guard']:,}; vectors synced {r.vectors_synced:,}")


class _ReadStaged(beam.DoFn):
    def __init__(self, redis_url: str, key: str) -> None:
        self.redis_url = redis_url
        self.key = key

    def setup(self) -> None:
        self.client = get_redis(self.redis_url)

    def process(self, _impulse):
        yield from event_stream.staged_batch(self.client, self.key)

    def teardown(self) -> None:
        self.client.close()


class StagedBatch(beam.PTransform):
    """The current micro-batch's `(source, n, raw)` tuples, as `beam.Create` would give them.

    They are handed over through Redis (`event_stream.stage_batch`) rather than baked into the
    graph, so the graph is built and translated once and every batch reruns it (that saves most
    of a micro-batch's fixed cost), in any running mode (in-process or multi-process workers).
    """

    def __init__(self, redis_url: str, key: str) -> None:
        super().__init__()
        self.redis_url = redis_url
        self.key = key

    def expand(self, p):
        return p | "Impulse" >> beam.Impulse() | "Read" >> beam.ParDo(_ReadStaged(self.redis_url, self.key))


class _ReusableRunner(FnApiRunner):
    """Beam's in-process runner, keeping the runner-API form of the pipeline it ran for reruns."""

    def __init__(self) -> None:
        super().__init__()
        self.proto = None

    def run_via_runner_api(self, pipeline_proto, options):
        self.proto = pipeline_proto
        return super().run_via_runner_api(pipeline_proto, options)


def first_by_event_id(events: Sequence[Event]) -> list[Event]:
    """One event per id, as ParseEvents keeps it (earliest, ties by canonical form), in stream order."""
    best: dict[str, Event] = {}
    for e in events:
        kept = best.get(e.event_id)
        if kept is None or (e.ts, _canonical(e)) < (kept.ts, _canonical(kept)):
            best[e.event_id] = e
    chosen = {id(e) for e in best.values()}
    return [e for e in events if id(e) in chosen]


def _canonical(e: Event) -> str:
    return json.dumps(e.to_dict(), sort_keys=True)


class LiveDriver:
    """Reads micro-batches from the stream and runs them through the batch transforms; see the module doc."""

    def __init__(self, argv: Sequence[str] | None = None) -> None:
        self.options = PipelineOptions(list(argv or []))
        self.opts = self.options.view_as(LiveOptions)
        if self.opts.as_of:
            os.environ[AS_OF_ENV] = str(clock_from(self.opts.as_of).pinned_ms)  # DoFns read the clock here
        self.url = self.opts.redis_url or redis_url()
        self.config = feature_config(self.opts)
        # XREADGROUP BLOCK must return before the socket times out.
        self.client = get_redis(self.url, socket_timeout=max(10.0, self.opts.block_ms / 1000 + 5))
        event_stream.ensure_group(self.client, self.opts.group)
        self.batch_key = keys.live_batch(self.opts.consumer)
        self.runner = _ReusableRunner()
        self.batches_done = 0
        self.vectors_synced = 0
        self.pruned_at = time.monotonic()  # the first prune comes one period after the start

    def close(self) -> None:
        self.client.close()

    # -- one micro-batch ---------------------------------------------------------------------

    def _build(self) -> beam.Pipeline:
        """The micro-batch pipeline: the replay's transforms over the staged batch."""
        p = beam.Pipeline(runner=self.runner, options=self.options)
        lines = p | "Entries" >> StagedBatch(self.url, self.batch_key)
        parsed = lines | "ParseEvents" >> ParseEvents()
        parsed["dead_letters"] | "DeadLetters" >> WriteDeadLetterStream(self.url)
        build_features(parsed["events"], self.url, self.config, self.opts.vector_store, self.opts.scorer,
                       self.opts.registry)
        return p

    def run_pipeline(self, inputs: Sequence[tuple[str, int, bytes | None]]) -> tuple[dict[str, int], float, float]:
        """The batch transforms over `inputs` on the in-process runner; (counters, stage ms, run ms).

        The first call builds the graph and runs it through `Pipeline.run`; later calls rerun the
        translated graph, so a micro-batch pays for execution only.
        """
        t0 = time.perf_counter()
        event_stream.stage_batch(self.client, self.batch_key, inputs)
        t1 = time.perf_counter()
        if self.runner.proto is None:
            result = self._build().run()
        else:
            result = self.runner.run_via_runner_api(self.runner.proto, self.options)
        result.wait_until_finish()
        counters: dict[str, int] = {}
        for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
            name = c.key.metric.name
            counters[name] = counters.get(name, 0) + int(c.committed or c.attempted or 0)
        return counters, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000

    def warm_up(self) -> tuple[float, float]:
        """Builds the graph by running an empty batch (writes nothing), then reruns it.

        Returns (ms of the first run, which builds and translates the graph; ms of the rerun, the
        floor of every micro-batch).
        """
        t = time.perf_counter()
        self.run_pipeline([])
        first = _ms_since(t)
        t = time.perf_counter()
        self.run_pipeline([])
        return first, _ms_since(t)

    def process(self, entries: list[event_stream.Entry], redelivered: bool = False,
                read_ms: float = 0.0) -> BatchStats:
        opts, client = self.opts, self.client
        batch_id, last_id = entries[0].id, entries[-1].id
        stats = BatchStats(batch_id, last_id, len(entries), redelivered, ms={"read": read_ms})
        number = self.batches_done + 1

        t = time.perf_counter()
        parsed = [try_parse_event(e.raw) for e in entries]
        valid = [r for r in parsed if isinstance(r, Event)]
        seen = event_stream.seen_elsewhere(client, sorted({e.event_id for e in valid}), batch_id)
        inputs: list[tuple[str, int, bytes | None]] = []
        fresh: list[Event] = []
        for n, (entry, res) in enumerate(zip(entries, parsed, strict=True), start=1):
            if isinstance(res, Event) and res.event_id in seen:
                stats.seen_before += 1
                continue
            inputs.append((f"stream:{entry.id}", n, entry.raw))
            if not isinstance(res, EventError):
                fresh.append(res)
        admitted = first_by_event_id(fresh)
        stats.ms["dedupe"] = _ms_since(t)

        if inputs:
            stats.counters, stats.ms["stage"], stats.ms["beam"] = self.run_pipeline(inputs)
        t = time.perf_counter()
        if is_embedded(opts.vector_store) and client.llen(keys.VECTOR_QUEUE):
            self.vectors_synced += drain(client, opts.vector_store)
        stats.ms["drain"] = _ms_since(t)
        self._maybe_crash(number, "merge")

        t = time.perf_counter()
        event_stream.mark_seen(client, [e.event_id for e in admitted], batch_id,
                               ttl_s=max(1, int(self.config.dedupe_horizon_ms // 1000)))
        stats.ms["mark"] = _ms_since(t)
        t = time.perf_counter()
        stats.lake_files = lake.archive(opts.lake, batch_id, last_id, admitted)
        stats.ms["lake"] = _ms_since(t)
        self._maybe_crash(number, "archive")

        t = time.perf_counter()
        event_stream.mark_archived(client, last_id)
        event_stream.ack(client, [e.id for e in entries], opts.group)
        stats.trimmed = event_stream.trim(client)
        stats.ms["ack"] = _ms_since(t)
        self.batches_done += 1
        return stats

    def _maybe_crash(self, number: int, point: str) -> None:
        if self.opts.crash_after_batches == number and self.opts.crash_point == point:
            print(f"crash hook: exiting during batch {number} after {point}", flush=True)
            os._exit(CRASH_EXIT_CODE)  # like a SIGKILL: no cleanup, no acknowledgement

    def maybe_prune(self) -> retention.PruneResult | None:
        """Every `--prune_every_s`: drop users idle longer than `--idle_days` by the process clock."""
        opts = self.opts
        if not opts.idle_days or time.monotonic() - self.pruned_at < opts.prune_every_s:
            return None
        self.pruned_at = time.monotonic()
        result = retention.prune_idle_users(self.client, default_clock(), retention.idle_ttl_ms(opts.idle_days))
        if not opts.quiet:
            print(f"live: idle-user prune: {result.summary()}", flush=True)
        return result

    def step(self) -> BatchStats | None:
        """Reads and processes one micro-batch; None when nothing arrived within `--block_ms`."""
        t = time.perf_counter()
        entries, redelivered = event_stream.read_batch(self.client, self.opts.consumer, self.opts.batch_size,
                                                       self.opts.block_ms, self.opts.group)
        if not entries:
            return None
        return self.process(entries, redelivered, read_ms=_ms_since(t))

    def run(self) -> LiveResult:
        """Loops until `--max_batches` batches or `--idle_exit_s` without entries (or forever)."""
        opts = self.opts
        result = LiveResult()
        started = time.perf_counter()
        first, floor = self.warm_up()
        if not opts.quiet:
            print(f"live: reading {keys.EVENT_STREAM} as {opts.group}/{opts.consumer}; graph built and run "
                  f"empty in {first:.0f} ms, an empty micro-batch takes {floor:.0f} ms", flush=True)
        idle_since = time.perf_counter()
        failures = 0
        while not (opts.max_batches and len(result.batches) >= opts.max_batches):
            try:
                self.maybe_prune()
                stats = self.step()
                failures = 0
            except Exception as err:  # noqa: BLE001 — the unacknowledged batch comes back whole next step
                failures += 1
                if failures > opts.max_failures:
                    raise
                print(f"live: micro-batch failed ({type(err).__name__}: {err}); retry {failures}/"
                      f"{opts.max_failures}", file=sys.stderr, flush=True)
                time.sleep(min(2.0 ** failures, 30.0))
                continue
            if stats is None:
                if opts.idle_exit_s and time.perf_counter() - idle_since >= opts.idle_exit_s:
                    break
                continue
            idle_since = time.perf_counter()
            result.batches.append(stats)
            if not opts.quiet:
                print(stats.line(self.batches_done), flush=True)
        result.seconds = time.perf_counter() - started
        result.vectors_synced = self.vectors_synced
        return result


def _ms_since(t: float) -> float:
    return (time.perf_counter() - t) * 1000


def run(argv: Sequence[str] | None = None) -> LiveResult:
    driver = LiveDriver(argv)
    try:
        return driver.run()
    finally:
        driver.close()


if __name__ == "__main__":
    res = run(sys.argv[1:])
    print(res.summary())
    sys.exit(0 if res.reconciles else 1)
