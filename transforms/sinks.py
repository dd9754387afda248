"""Thin DoFns that hand batches to `stores/` — the only code that talks to Redis."""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.metrics import Metrics

from stores.activity import write_activity
from stores.redis_client import get_redis
from transforms.parse import NAMESPACE


class _WriteActivityBatch(beam.DoFn):
    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.keys_written = Metrics.counter(NAMESPACE, "keys_written")
        self.client = None

    def setup(self) -> None:
        self.client = get_redis(self.redis_url)

    def process(self, batch: list):
        self.keys_written.inc(write_activity(self.client, batch))

    def teardown(self) -> None:
        if self.client is not None:
            self.client.close()


class WriteActivity(beam.PTransform):
    """Writes ((kind, id), counts) rows to Redis in pipelined batches."""

    def __init__(self, redis_url: str, batch_size: int = 500) -> None:
        super().__init__()
        self.redis_url = redis_url
        self.batch_size = batch_size

    def expand(self, rows):
        return (
            rows
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch_size)
            | "Write" >> beam.ParDo(_WriteActivityBatch(self.redis_url))
        )


class WriteDeadLetters(beam.PTransform):
    """Dead letters as JSON lines under a path prefix, so none is only logged."""

    def __init__(self, path_prefix: str) -> None:
        super().__init__()
        self.path_prefix = path_prefix

    def expand(self, records):
        return (
            records
            | "ToJson" >> beam.Map(lambda r: json.dumps(r, ensure_ascii=False, sort_keys=True))
            | "Write" >> beam.io.WriteToText(self.path_prefix, file_name_suffix=".jsonl", shard_name_template="")
        )
