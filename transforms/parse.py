"""ParseEvents: raw lines → validated events, plus a dead-letter output that loses nothing."""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas.events import Event, EventError, try_parse_event

NAMESPACE = "pulserank"
DEAD_LETTERS = "dead_letters"


def dead_letter_record(raw: object, error: EventError) -> dict:
    """What a dead letter carries: the raw input and why it was refused."""
    raw_text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return {"raw": raw_text, "field": error.field, "reason": error.reason}


class _FirstByEventId(beam.DoFn):
    """Keeps one event per event_id (the earliest, ties by canonical form) and counts the rest."""

    def __init__(self) -> None:
        self.duplicates = Metrics.counter(NAMESPACE, "duplicates")

    def process(self, keyed: tuple[str, list[Event]]):
        _, events = keyed
        events = list(events)
        if len(events) > 1:
            self.duplicates.inc(len(events) - 1)
        yield min(events, key=lambda e: (e.ts, json.dumps(e.to_dict(), sort_keys=True)))


class _Parse(beam.DoFn):
    """Tags each line as an event or a dead letter.

    Not `with_exception_handling`: that hands back the error's repr, and dead letters need the
    contract's field and reason as data.
    """

    def __init__(self) -> None:
        self.read = Metrics.counter(NAMESPACE, "events_read")
        self.dead = Metrics.counter(NAMESPACE, "dead_letters")

    def process(self, line: object):
        self.read.inc()
        result = try_parse_event(line)
        if isinstance(result, EventError):
            self.dead.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, dead_letter_record(line, result))
        else:
            yield result


class ParseEvents(beam.PTransform):
    """Parses and validates lines; exact dedupe by event_id (batch).

    Returns a dict with `events` and `dead_letters` (raw line, field, reason).
    """

    def expand(self, lines):
        parsed = lines | "Parse" >> beam.ParDo(_Parse()).with_outputs(DEAD_LETTERS, main="events")
        events = (
            parsed.events
            | "KeyById" >> beam.Map(lambda e: (e.event_id, e))
            | "GroupById" >> beam.GroupByKey()
            | "Dedupe" >> beam.ParDo(_FirstByEventId())
        )
        return {"events": events, "dead_letters": parsed[DEAD_LETTERS]}
