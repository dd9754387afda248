"""Reading event logs and ParseEvents: raw lines → validated, deduplicated events, and a
dead-letter output that loses nothing (each refused line with its source, line and reason).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics

from schemas.events import Event, EventError, EventType, try_parse_event
from transforms import pickling  # noqa: F401  (registers fast pickling of events between stages)

NAMESPACE = "pulserank"
DEAD_LETTERS = "dead_letters"
TYPE_PREFIX = "events_written."  # + event type: written events by type (they sum to events_written)

Line = tuple[str, int, object]  # (source, 1-based line or row number, raw line or row dict)


def numbered_lines(readable: fileio.ReadableFile) -> Iterator[Line]:
    """JSONL lines (or Parquet rows) of one file with their numbers, for dead letters."""
    path = readable.metadata.path
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        with readable.open() as fh:
            for i, row in enumerate(pq.read_table(fh).to_pylist(), start=1):
                yield path, i, {k: v for k, v in row.items() if v is not None}
        return
    with readable.open() as fh:  # a `.gz` opens as Beam's CompressedFile: readline, but no iteration
        for i, raw in enumerate(iter(fh.readline, b""), start=1):
            text = raw.rstrip(b"\r\n")
            if text.strip():
                yield path, i, text


class ReadEventLines(beam.PTransform):
    """Globs → (source, line number, raw); one file per worker so numbers stay exact."""

    def __init__(self, globs: list[str]) -> None:
        super().__init__()
        self.globs = globs

    def expand(self, p):
        return (
            p
            | "Globs" >> beam.Create(self.globs)
            | "Match" >> fileio.MatchAll()
            | "Open" >> fileio.ReadMatches()
            | "Lines" >> beam.FlatMap(numbered_lines)
        )


def dead_letter_record(source: str, line: int, raw: object, error: EventError) -> dict:
    """What a dead letter carries: where it came from, the raw input and why it was refused."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    elif not isinstance(raw, str):
        raw = json.dumps(raw, default=str, ensure_ascii=False)
    return {"source": source, "line": line, "raw": raw, "field": error.field, "reason": error.reason}


class _Parse(beam.DoFn):
    """Tags each line as an event or a dead letter; events outside [from, until) are counted.

    Not `with_exception_handling`: that hands back the error's repr, and dead letters need the
    contract's field and reason as data.
    """

    def __init__(self, from_ms: int | None, until_ms: int | None) -> None:
        self.from_ms = from_ms
        self.until_ms = until_ms
        self.read = Metrics.counter(NAMESPACE, "events_read")
        self.dead = Metrics.counter(NAMESPACE, "dead_letters")
        self.out_of_range = Metrics.counter(NAMESPACE, "out_of_range")

    def process(self, line: Line):
        source, number, raw = line
        self.read.inc()
        result = try_parse_event(raw)
        if isinstance(result, EventError):
            self.dead.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, dead_letter_record(source, number, raw, result))
        elif (self.from_ms is not None and result.ts < self.from_ms) or (
            self.until_ms is not None and result.ts >= self.until_ms
        ):
            self.out_of_range.inc()
        else:
            yield result


class _FirstByEventId(beam.DoFn):
    """Keeps one event per event_id (the earliest, ties by canonical form) and counts the rest."""

    def __init__(self) -> None:
        self.duplicates = Metrics.counter(NAMESPACE, "duplicates")
        self.written = Metrics.counter(NAMESPACE, "events_written")
        self.by_type = {t: Metrics.counter(NAMESPACE, f"{TYPE_PREFIX}{t.value}") for t in EventType}

    def process(self, keyed: tuple[str, list[Event]]):
        _, events = keyed
        events = list(events)
        if len(events) > 1:
            self.duplicates.inc(len(events) - 1)
            first = min(events, key=lambda e: (e.ts, json.dumps(e.to_dict(), sort_keys=True)))
        else:
            first = events[0]
        self.written.inc()
        self.by_type[first.type].inc()
        yield first


class ParseEvents(beam.PTransform):
    """Parses and validates (source, line, raw) tuples; exact dedupe by event_id (batch).

    Returns a dict with `events` and `dead_letters`.
    """

    def __init__(self, from_ms: int | None = None, until_ms: int | None = None) -> None:
        super().__init__()
        self.from_ms = from_ms
        self.until_ms = until_ms

    def expand(self, lines):
        parsed = lines | "Parse" >> beam.ParDo(_Parse(self.from_ms, self.until_ms)).with_outputs(
            DEAD_LETTERS, main="events"
        )
        events = (
            parsed.events
            | "KeyById" >> beam.Map(lambda e: (e.event_id, e))
            | "GroupById" >> beam.GroupByKey()
            | "Dedupe" >> beam.ParDo(_FirstByEventId())
        )
        return {"events": events, "dead_letters": parsed[DEAD_LETTERS]}
