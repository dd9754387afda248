"""Batch replay: event logs → ParseEvents → features → Redis (also the backfill).

Run with Beam's own options, e.g.
    python -m pipelines.replay --input 'data/ml/*.jsonl' --runner=FnApiRunner
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from stores.redis_client import redis_url
from transforms.activity import CountActivity
from transforms.parse import NAMESPACE, ParseEvents
from transforms.sinks import WriteActivity, WriteDeadLetters


class ReplayOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--input", required=True, help="JSONL glob(s) of events, comma-separated")
        parser.add_argument("--dead_letters", default="dead-letters/replay", help="dead-letter path prefix")
        parser.add_argument("--redis_url", default=None, help="default: REDIS_URL, else an embedded server")


@dataclass
class ReplayResult:
    counters: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> int:
        return self.counters.get(name, 0)

    @property
    def reconciles(self) -> bool:
        valid = self["events_read"] - self["dead_letters"] - self["duplicates"]
        return valid >= 0 and valid == self["events_written"]


def build(p: beam.Pipeline, options: ReplayOptions) -> None:
    globs = [g for g in options.input.split(",") if g]
    lines = (
        [p | f"Read{i}" >> beam.io.ReadFromText(g) for i, g in enumerate(globs)]
        | "Flatten" >> beam.Flatten()
    )
    parsed = lines | "ParseEvents" >> ParseEvents()
    parsed["dead_letters"] | "DeadLetters" >> WriteDeadLetters(options.dead_letters)

    written = beam.metrics.Metrics.counter(NAMESPACE, "events_written")

    def count_written(event):
        written.inc()
        return event

    (
        parsed["events"]
        | "Written" >> beam.Map(count_written)
        | "CountActivity" >> CountActivity()
        | "WriteActivity" >> WriteActivity(options.redis_url or redis_url())
    )


def run(argv: list[str] | None = None) -> ReplayResult:
    options = PipelineOptions(argv)
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "FnApiRunner"  # not Prism: it downloads a binary
    replay = options.view_as(ReplayOptions)
    p = beam.Pipeline(options=options)
    build(p, replay)
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    totals: dict[str, int] = {}
    for c in counters:
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + int(c.committed or c.attempted or 0)
    return ReplayResult(totals)


if __name__ == "__main__":
    res = run(sys.argv[1:])
    print(res.counters)
