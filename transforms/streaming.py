"""Streaming: only what differs from batch — dedupe within an event-time horizon, and panes.

Everything after the panes is the batch code (`transforms/features.py`, `transforms/sinks.py`):
each pane of a key is one partial summary whose id is the digest of the pane's events, so the
sink merges it exactly once, and merges being associative and commutative, the sum of the
panes equals the one summary a batch replay writes.

Two streaming limits, both bounded by `FeatureConfig.dedupe_horizon_ms` (24 h by default):

- dedupe remembers an event id until the watermark passes the event's time plus the horizon,
  so a duplicate delivered later than that is counted twice;
- a pane accepts events up to the same horizon behind the watermark (allowed lateness); Beam
  drops events later than that at the grouping, silently (the Python SDK keeps no counter).
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.deduplicate import DeduplicatePerKey
from apache_beam.utils.timestamp import Duration, Timestamp

from schemas.events import Event
from schemas.features import FeatureConfig
from transforms.content import ContentVectors, WriteContentVectors
from transforms.features import Catalog, ComputeFeatures, RouteEvents
from transforms.parse import DEAD_LETTERS, NAMESPACE, _Parse
from transforms.sinks import WriteFeatures

PANE_SECONDS = 60


def at_event_time(event: Event) -> beam.window.TimestampedValue:
    """The element timestamp becomes the event's own time (sources stamp arrival time)."""
    return beam.window.TimestampedValue(event, Timestamp(micros=event.ts * 1000))


class _Entered(beam.DoFn):
    """Every parsed event enters as a would-be duplicate; `_Kept` takes back the ones kept.

    So `duplicates` ends as entered − kept, the batch metric, while Beam's DeduplicatePerKey
    stays as it is (it drops silently). Events in flight count as duplicates for a moment.
    """

    def __init__(self) -> None:
        self.duplicates = Metrics.counter(NAMESPACE, "duplicates")

    def process(self, event: Event):
        self.duplicates.inc()
        yield event.event_id, event


class _Kept(beam.DoFn):
    def __init__(self) -> None:
        self.duplicates = Metrics.counter(NAMESPACE, "duplicates")
        self.written = Metrics.counter(NAMESPACE, "events_written")

    def process(self, keyed: tuple[str, Event]):
        self.duplicates.dec()
        self.written.inc()
        yield keyed[1]


class StreamingParse(beam.PTransform):
    """(source, line, raw) → {"events", "dead_letters"}: the batch `_Parse`, then dedupe by
    event_id within `horizon_ms` of event time (Beam's `DeduplicatePerKey`, in the global
    window, before any pane). The first delivery of an id is kept; batch keeps the earliest by
    time, which is the same event whenever duplicates are retries of one event.
    """

    def __init__(self, horizon_ms: int = FeatureConfig.dedupe_horizon_ms) -> None:
        super().__init__()
        self.horizon_ms = horizon_ms

    def expand(self, lines):
        parsed = lines | "Parse" >> beam.ParDo(_Parse(None, None)).with_outputs(DEAD_LETTERS, main="events")
        events = (
            parsed.events
            | "EventTime" >> beam.Map(at_event_time)
            | "Entered" >> beam.ParDo(_Entered()).with_output_types(tuple[str, Event])  # a deterministic key coder
            | "Dedupe" >> DeduplicatePerKey(event_time_duration=Duration(micros=self.horizon_ms * 1000))
            | "Kept" >> beam.ParDo(_Kept())
        )
        return {"events": events, "dead_letters": parsed[DEAD_LETTERS]}


class EmitPanes(beam.PTransform):
    """Fixed event-time windows whose panes are deltas: one on-time pane when the watermark
    passes the window, then one late pane per late arrival (`AfterCount(1)`), DISCARDING, with
    the dedupe horizon as allowed lateness. Each event is in exactly one pane; events later than
    the allowed lateness are dropped by Beam.
    """

    def __init__(self, seconds: int = PANE_SECONDS,
                 allowed_lateness_ms: int = FeatureConfig.dedupe_horizon_ms) -> None:
        super().__init__()
        self.seconds = seconds
        self.allowed_lateness_ms = allowed_lateness_ms

    def expand(self, events):
        return events | "Panes" >> beam.WindowInto(
            window.FixedWindows(self.seconds),
            trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
            accumulation_mode=trigger.AccumulationMode.DISCARDING,
            allowed_lateness=Duration(micros=self.allowed_lateness_ms * 1000),
        )


class StreamingFeatures(beam.PTransform):
    """Unbounded (source, line, raw) → the batch feature transforms per pane → Redis.

    No catalog barrier: an item must reach the store before the interactions that look it up
    (true of live catalogs, where items are published before they are shown). Returns
    {"dead_letters", "written"}; the caller sinks the dead letters (files, a Redis Stream).
    """

    def __init__(self, redis_url: str, vector_url: str | None, config: FeatureConfig | None = None,
                 scorer: str = "vader", pane_seconds: int = PANE_SECONDS, batch_size: int = 500,
                 shards: int = 8, max_buffering_secs: float = 1.0, registry: str | None = None,
                 as_of_ms: int | None = None) -> None:
        super().__init__()
        self.redis_url = redis_url
        self.vector_url = vector_url
        self.config = config or FeatureConfig()
        self.scorer = scorer
        self.pane_seconds = pane_seconds
        self.registry = registry  # item content vectors from the production content tower
        self.sink = dict(batch_size=batch_size, shards=shards, max_buffering_secs=max_buffering_secs,
                         as_of_ms=as_of_ms)

    def expand(self, lines):
        config, url = self.config, self.redis_url
        parsed = lines | "StreamingParse" >> StreamingParse(config.dedupe_horizon_ms)
        routed = (
            parsed["events"]
            | "EmitPanes" >> EmitPanes(self.pane_seconds, config.dedupe_horizon_ms)
            | "RouteEvents" >> RouteEvents()
        )
        catalog = (
            routed["catalog"]
            | "Catalog" >> Catalog(config)
            | "WriteCatalog" >> WriteFeatures(url, self.vector_url, config, **self.sink)
        )
        features = (
            routed
            | "Features" >> ComputeFeatures(url, config, self.scorer, wait_for=None)
            | "WriteFeatures" >> WriteFeatures(url, self.vector_url, config, **self.sink)
        )
        parts = [catalog, features]
        if self.registry:
            parts.append(
                routed["catalog"]
                | "ContentVectors" >> ContentVectors(self.registry)
                | "WriteContentVectors" >> WriteContentVectors(url, self.vector_url, max_buffering_secs=self.sink[
                    "max_buffering_secs"])
            )
        written = tuple(parts) | "Written" >> beam.Flatten()
        return {"dead_letters": parsed["dead_letters"], "written": written}
