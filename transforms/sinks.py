"""Thin sinks: batches of writes handed to `stores/`, the only code that talks to Redis."""

from __future__ import annotations

import json
import zlib

import apache_beam as beam
import numpy as np
import redis
from apache_beam.metrics import Metrics

from schemas import keys
from schemas.clock import clock_from
from schemas.features import FeatureConfig
from stores import event_stream
from stores.feature_store import FeatureStore, Write
from stores.redis_client import check_cluster, get_redis
from stores.vector_sink import VectorUpsert, enqueue, is_embedded, write
from transforms.parse import NAMESPACE


def vector_upserts(writes: list[Write], merged: dict, config: FeatureConfig) -> list[VectorUpsert]:
    """User vectors (normalised decayed means) after their merge, and item content vectors."""
    out = []
    for (key, field), d in merged.items():
        if key.endswith(":vec") and d.sums[0] > 0:
            kind, model = field.split(":", 1)
            vec = d.sums[1:] / d.sums[0]
            norm = float(np.linalg.norm(vec))
            if norm > 0:
                user_id = keys.hash_tag(key)[2:]
                out.append(VectorUpsert(keys.vector_collection(f"users_{kind}", model), user_id,
                                        tuple((vec / norm).tolist()), {"model": model}))
    for w in writes:
        if w.kind == "item":
            fields = w.payload[2]
            raw = fields.get(f"vec:{config.content_model}")
            if raw:
                vec = tuple(float(x) for x in raw.split(","))
                if any(vec):
                    props = {"categories": json.loads(fields.get("categories", "[]"))}
                    out.append(VectorUpsert(keys.vector_collection("items", config.content_model),
                                            fields["item_id"], vec, props))
    return out


class _ApplyWrites(beam.DoFn):
    def __init__(self, redis_url: str, vector_url: str | None, config: FeatureConfig,
                 as_of_ms: int | None = None) -> None:
        self.redis_url = redis_url
        self.vector_url = vector_url
        self.config = config
        self.as_of_ms = as_of_ms
        self.merged = Metrics.counter(NAMESPACE, "keys_merged")
        self.skipped = Metrics.counter(NAMESPACE, "merges_skipped_by_guard")

    def setup(self) -> None:
        self.client = get_redis(self.redis_url)
        # the launcher's --as_of travels with the DoFn: its environment does not reach cluster workers
        self.store = FeatureStore(self.client, clock_from(self.as_of_ms) if self.as_of_ms is not None else None)
        self.vectors = None
        if not is_embedded(self.vector_url):
            from stores.vector_store import open_vector_store

            self.vectors = open_vector_store(self.vector_url)

    def process(self, batch):
        _, writes = batch
        writes = list(writes)
        try:
            result = self.store.apply(writes)
            upserts = vector_upserts(writes, result.decayed, self.config)
            if self.vectors is None:
                enqueue(self.client, upserts)
        except redis.RedisError as exc:
            check_cluster(self.redis_url, exc)  # on a cluster: names the slots whose master is gone
            raise
        self.merged.inc(result.merged)
        self.skipped.inc(result.skipped)
        if self.vectors is not None:
            write(self.vectors, upserts)
        yield len(writes)

    def teardown(self) -> None:
        self.client.close()
        if self.vectors is not None:
            self.vectors.close()


class WriteFeatures(beam.PTransform):
    """Writes → sharded `GroupIntoBatches` → one pipelined merge per batch. Emits batch sizes."""

    def __init__(self, redis_url: str, vector_url: str | None, config: FeatureConfig, batch_size: int = 500,
                 shards: int = 8, max_buffering_secs: float | None = None, as_of_ms: int | None = None) -> None:
        super().__init__()
        self.as_of_ms = as_of_ms  # the merges' clock (None: the worker's, PULSERANK_AS_OF or wall time)
        self.redis_url = redis_url
        self.vector_url = vector_url
        self.config = config
        self.batch_size = batch_size
        self.shards = shards
        self.max_buffering_secs = max_buffering_secs  # streaming: flush a partial batch after this

    def expand(self, writes):
        shards = self.shards
        return (
            writes
            | "Shard" >> beam.Map(lambda w: (zlib.crc32(w.key.encode()) % shards, w)).with_output_types(
                tuple[int, Write])
            | "Batch" >> beam.GroupIntoBatches(self.batch_size, max_buffering_duration_secs=self.max_buffering_secs)
            | "Apply" >> beam.ParDo(_ApplyWrites(self.redis_url, self.vector_url, self.config, self.as_of_ms))
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


class _DeadLettersToStream(beam.DoFn):
    """Buffers a bundle's dead letters and appends them to the dead-letter stream (once per entry)."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url

    def setup(self) -> None:
        self.client = get_redis(self.redis_url)

    def start_bundle(self) -> None:
        self.buffer: list[dict] = []

    def process(self, record: dict):
        self.buffer.append(record)

    def finish_bundle(self) -> None:
        event_stream.dead_letter(self.client, self.buffer)
        self.buffer = []

    def teardown(self) -> None:
        self.client.close()


class WriteDeadLetterStream(beam.PTransform):
    """Dead letters (source, line, raw, field, reason) → the Redis dead-letter stream (live mode).

    At most once per `source` (a guard per source), so a retried bundle or a redelivered
    micro-batch adds none twice.
    """

    def __init__(self, redis_url: str) -> None:
        super().__init__()
        self.redis_url = redis_url

    def expand(self, records):
        return records | "Append" >> beam.ParDo(_DeadLettersToStream(self.redis_url))
