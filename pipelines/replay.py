"""Batch replay: event logs → ParseEvents → every feature family → Redis and the vector store.

Analysts use it to rebuild state from logs, and it is the backfill: `--from/--until` bound
event time, so a backfill can stop exactly where live traffic began. Run with Beam's options:

    python -m pipelines.replay --input 'data/ml/*.jsonl' --as_of 1998-04-23T00:00:00Z

Exit codes: 0 done, 1 the counts do not reconcile, 3 a Redis Cluster master is unreachable (the
message names its slots; re-run once it is back: guarded merges make the re-run a clean run).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.gc_tuning import relaxed_gc
from pipelines.options import FeatureOptions, feature_config
from schemas.clock import AS_OF_ENV, clock_from, parse_instant
from schemas.features import FeatureConfig
from stores.redis_client import ClusterUnavailable, check_cluster, get_redis, redis_url
from stores.vector_sink import drain, is_embedded
from transforms.content import ContentVectors, WriteContentVectors
from transforms.features import Catalog, ComputeFeatures, RouteEvents
from transforms.parse import NAMESPACE, ParseEvents, ReadEventLines
from transforms.sinks import WriteDeadLetters, WriteFeatures


class ReplayOptions(FeatureOptions, PipelineOptions):  # PipelineOptions too: see pipelines/options.py
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--input", default=None, help="JSONL or Parquet glob(s), comma-separated (required)")
        parser.add_argument("--from", dest="from_ts", default=None, help="first event time to include")
        parser.add_argument("--until", dest="until_ts", default=None, help="event time to stop before")
        parser.add_argument("--dead_letters", default="out/dead-letters/replay", help="dead-letter path prefix")


@dataclass
class ReplayResult:
    counters: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    vectors_synced: int = 0

    def __getitem__(self, name: str) -> int:
        return self.counters.get(name, 0)

    @property
    def reconciles(self) -> bool:
        """read = written + dead letters + duplicates + outside the time range."""
        return self["events_read"] == (
            self["events_written"] + self["dead_letters"] + self["duplicates"] + self["out_of_range"]
        )

    def summary(self) -> str:
        c = self
        rate = c["events_read"] / c.seconds if c.seconds else 0
        return (
            f"read {c['events_read']:,} = written {c['events_written']:,} + dead letters {c['dead_letters']:,}"
            f" + duplicates {c['duplicates']:,} + out of range {c['out_of_range']:,}"
            f" in {c.seconds:.1f}s ({rate:,.0f} events/s); keys merged {c['keys_merged']:,},"
            f" skipped by guard {c['merges_skipped_by_guard']:,}; vectors synced {c.vectors_synced:,}"
        )


def build(p: beam.Pipeline, opts: ReplayOptions, url: str) -> None:
    lo = parse_instant(opts.from_ts) if opts.from_ts else None
    hi = parse_instant(opts.until_ts) if opts.until_ts else None
    lines = p | "Read" >> ReadEventLines([g for g in opts.input.split(",") if g])
    parsed = lines | "ParseEvents" >> ParseEvents(from_ms=lo, until_ms=hi)
    parsed["dead_letters"] | "DeadLetters" >> WriteDeadLetters(opts.dead_letters)
    as_of_ms = clock_from(opts.as_of).pinned_ms if opts.as_of else None
    build_features(parsed["events"], url, feature_config(opts), opts.vector_store, opts.scorer, opts.registry,
                   as_of_ms)


def build_features(events, url: str, config: FeatureConfig, vector_store: str | None, scorer: str,
                   registry: str | None = None, as_of_ms: int | None = None) -> None:
    """Parsed events → every feature family → Redis and the vector store (shared with live mode).

    With a model registry, item events also get the production content tower's vectors.
    """
    routed = events | "RouteEvents" >> RouteEvents()
    if registry:
        (
            routed["catalog"]
            | "ContentVectors" >> ContentVectors(registry)
            | "WriteContentVectors" >> WriteContentVectors(url, vector_store)
        )
    catalog_done = (
        routed["catalog"]
        | "Catalog" >> Catalog(config)
        | "WriteCatalog" >> WriteFeatures(url, vector_store, config, as_of_ms=as_of_ms)
        | "CatalogDone" >> beam.CombineGlobally(sum)
    )
    (
        routed
        | "Features" >> ComputeFeatures(url, config, scorer, wait_for=catalog_done)
        | "WriteFeatures" >> WriteFeatures(url, vector_store, config, as_of_ms=as_of_ms)
    )


def run(argv: list[str] | None = None) -> ReplayResult:
    options = PipelineOptions(argv)
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "FnApiRunner"  # not Prism: it downloads a binary
    opts = options.view_as(ReplayOptions)
    if not opts.input:
        raise ValueError("replay needs --input (JSONL or Parquet globs)")
    if opts.as_of:
        os.environ[AS_OF_ENV] = str(clock_from(opts.as_of).pinned_ms)  # workers read the clock from here
    url = opts.redis_url or redis_url()
    started = time.perf_counter()
    p = beam.Pipeline(options=options)
    build(p, opts, url)
    with relaxed_gc():  # an allocation-heavy run: see pipelines/gc_tuning.py
        try:
            result = p.run()
            result.wait_until_finish()
        except Exception as exc:
            check_cluster(url, exc)  # a Redis Cluster with unreachable slots: say which
            raise
    counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    totals: dict[str, int] = {}
    for c in counters:
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + int(c.committed or c.attempted or 0)
    synced = drain(get_redis(url), opts.vector_store) if is_embedded(opts.vector_store) else 0
    return ReplayResult(totals, time.perf_counter() - started, synced)


if __name__ == "__main__":
    try:
        res = run(sys.argv[1:])
    except ClusterUnavailable as exc:
        print(f"replay failed: {exc}", file=sys.stderr)
        sys.exit(3)
    print(res.summary())
    sys.exit(0 if res.reconciles else 1)
