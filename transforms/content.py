"""Content vectors of catalog items from the registered content tower (Beam RunInference, ONNX).

`item` events → `ContentVector(item_id, version, vector, categories)`, the vector computed by the
content tower the registry's `production` alias names, with the inputs `models/content_contract`
defines. Until a version is promoted (or while the aliased one fails verification) nothing comes
out and the hashed content vector the catalog writes (`hash-v0`) stays the fallback.

The model is resolved at run time, not at graph construction: RunInference loads a `ContentTower`
once per worker process, which re-reads the small alias file at most every `refresh_secs` and
loads a newly promoted version, so a streaming job follows promotions without a restart. A new
alias that does not verify is logged and the last verified version keeps serving.

Per item, only the latest `item` event of a run (batch) or pane (streaming) is scored, by
(ts, event_id) — the catalog's own last-writer-wins order — so the vector store ends with the
vector of the attributes Redis keeps. Across panes, upserts land in the order they are written.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from models.registry import PRODUCTION, production_model_path, read_alias
from schemas import content_contract as cc
from schemas import keys
from schemas.events import Event, EventType
from stores.redis_client import get_redis
from stores.vector_sink import VectorUpsert, enqueue, is_embedded, write
from transforms.parse import NAMESPACE

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ContentVector:
    """One item's vector in a content tower's space; `version` names the space (its collection)."""

    item_id: str
    version: str
    vector: tuple[float, ...]
    categories: tuple[str, ...] = ()


def content_upserts(vectors: Iterable[ContentVector]) -> list[VectorUpsert]:
    """Vector-store upserts into the version's content collection (`content_<version>`; the item
    tower's embeddings go to `items_<version>`)."""
    return [VectorUpsert(keys.vector_collection(keys.CONTENT, v.version), v.item_id, v.vector,
                         {"categories": list(v.categories)}) for v in vectors]


@dataclass(frozen=True)
class _Loaded:
    version: str
    files: dict[str, str]
    session: Any  # onnxruntime.InferenceSession
    contract: cc.ContentContract


def _session(path: str, threads: int):
    import onnxruntime as ort  # here, not at import: pipelines without a model never load it

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


class ContentTower:
    """What RunInference loads and shares per process: the production content tower, or none.

    `current()` re-resolves the alias at most every `refresh_secs` (thread-safe); it reloads only
    when the alias names other files, and keeps the last verified version when the new one fails.
    """

    def __init__(self, root: str, alias: str = PRODUCTION, refresh_secs: float = 60.0, threads: int = 1) -> None:
        self.root = root
        self.alias = alias
        self.refresh_secs = refresh_secs
        self.threads = threads
        self._loaded: _Loaded | None = None
        self._checked = -math.inf
        self._lock = threading.Lock()
        self._reported: str | None = None

    def current(self) -> _Loaded | None:
        if time.monotonic() - self._checked >= self.refresh_secs:
            with self._lock:
                if time.monotonic() - self._checked >= self.refresh_secs:
                    self._refresh()
                    self._checked = time.monotonic()
        return self._loaded

    def _report(self, message: str, level: int = logging.WARNING) -> None:
        if message != self._reported:  # once per distinct problem, not once per batch
            log.log(level, "%s", message)
            self._reported = message

    def _refresh(self) -> None:
        try:
            alias = read_alias(self.root, self.alias)
            if alias is None:
                self._loaded = None
                self._report(f"content vectors off: no {self.alias!r} model in registry {self.root}", logging.INFO)
                return
            if self._loaded is not None and (alias.version, alias.files) == (self._loaded.version, self._loaded.files):
                return
            found = production_model_path(self.root, cc.MODEL_FILE, self.alias)
            if found is None:  # the alias vanished in between
                self._loaded = None
                return
            version, path = found
            contract = cc.ContentContract.from_metadata(version.metadata)
            session = _session(path, self.threads)
            cc.check_model(session, contract)
        except Exception as exc:  # a registry or model problem must not stop the pipeline: no vectors
            kept = f"; keeping version {self._loaded.version}" if self._loaded is not None else "; content vectors off"
            self._report(f"content tower in {self.root} refused: {type(exc).__name__}: {exc}{kept}")
            return
        self._loaded = _Loaded(version.version, version.files, session, contract)
        self._report(f"content tower {version.version} loaded from {self.root}", logging.INFO)


class ContentModelHandler(ModelHandler[Event, PredictionResult, ContentTower]):
    """Scores a batch of item events with one `session.run` over the contract's stacked inputs.

    Beam's `OnnxModelHandlerNumpy` feeds a single input; the contract has ten, whose widths come
    from the loaded version, so the feed is built here, per batch, after the model is known.
    """

    def __init__(self, registry_root: str, alias: str = PRODUCTION, refresh_secs: float = 60.0, threads: int = 1,
                 max_batch_size: int = 256, max_batch_duration_secs: int | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, max_batch_duration_secs=max_batch_duration_secs)
        self.registry_root = registry_root
        self.alias = alias
        self.refresh_secs = refresh_secs
        self.threads = threads
        self.no_model = Metrics.counter(NAMESPACE, "content_items_without_model")

    def load_model(self) -> ContentTower:
        tower = ContentTower(self.registry_root, self.alias, self.refresh_secs, self.threads)
        tower.current()
        return tower

    def run_inference(self, batch: Sequence[Event], model: ContentTower,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        loaded = model.current()
        if loaded is None:
            self.no_model.inc(len(batch))
            return []
        feed = cc.content_inputs(batch, loaded.contract)
        out = loaded.session.run([cc.OUTPUT], feed)[0]
        return [PredictionResult(event, out[i], loaded.version) for i, event in enumerate(batch)]

    def get_num_bytes(self, batch: Sequence[Event]) -> int:
        """An estimate (the default pickles the whole batch): text plus float32 modality vectors."""
        total = 0
        for e in batch:
            a = e.attributes
            if a is not None:
                total += len(a.title or "") + len(a.description or "") + 4 * sum(map(len, a.vectors.values()))
        return total

    def get_metrics_namespace(self) -> str:
        return "BeamML_ContentTower"


def _keyed_item(event: Event):
    if event.type is EventType.ITEM:
        yield event.item_id, event


def _latest(events: Iterable[Event]) -> Event:
    return max(events, key=lambda e: (e.ts, e.event_id))


class _ToVectors(beam.DoFn):
    def __init__(self) -> None:
        self.written = Metrics.counter(NAMESPACE, "content_vectors")
        self.invalid = Metrics.counter(NAMESPACE, "content_vectors_invalid")

    def process(self, keyed: tuple[str, PredictionResult]):
        item_id, result = keyed
        vec = np.asarray(result.inference, dtype=np.float64)
        if not np.all(np.isfinite(vec)) or not np.any(vec):
            self.invalid.inc()
            log.warning("content tower %s gave item %s a zero or non-finite vector: not stored", result.model_id,
                        item_id)
            return
        self.written.inc()
        attrs = result.example.attributes
        yield ContentVector(item_id, result.model_id, tuple(vec.tolist()), attrs.categories if attrs else ())


class ContentVectors(beam.PTransform):
    """`item` events → `ContentVector`s from the production content tower (nothing without one).

    `registry_root` None switches the path off at construction (no RunInference stage at all).
    """

    def __init__(self, registry_root: str | None, alias: str = PRODUCTION, refresh_secs: float = 60.0,
                 threads: int = 1, max_batch_size: int = 256, max_batch_duration_secs: int | None = None) -> None:
        super().__init__()
        self.registry_root = registry_root
        self.handler_args = dict(alias=alias, refresh_secs=refresh_secs, threads=threads,
                                 max_batch_size=max_batch_size, max_batch_duration_secs=max_batch_duration_secs)

    def expand(self, events):
        if self.registry_root is None:
            return events | "NoRegistry" >> beam.FlatMap(lambda _: ()).with_output_types(ContentVector)
        handler = KeyedModelHandler(ContentModelHandler(self.registry_root, **self.handler_args))
        return (
            events
            | "KeyByItem" >> beam.FlatMap(_keyed_item).with_output_types(tuple[str, Event])
            | "LatestPerItem" >> beam.CombinePerKey(_latest)
            | "RunInference" >> RunInference(handler)
            | "ToVectors" >> beam.ParDo(_ToVectors()).with_output_types(ContentVector)
        )


class _UpsertVectors(beam.DoFn):
    """A batch of content vectors → the vector store (queued in Redis for the embedded store)."""

    def __init__(self, redis_url: str, vector_url: str | None) -> None:
        self.redis_url = redis_url
        self.vector_url = vector_url

    def setup(self) -> None:
        self.client = get_redis(self.redis_url)
        self.vectors = None
        if not is_embedded(self.vector_url):
            from stores.vector_store import open_vector_store

            self.vectors = open_vector_store(self.vector_url)

    def process(self, batch):
        upserts = content_upserts(batch[1])
        if self.vectors is None:
            enqueue(self.client, upserts)
        else:
            write(self.vectors, upserts)
        yield len(upserts)

    def teardown(self) -> None:
        self.client.close()
        if self.vectors is not None:
            self.vectors.close()


class WriteContentVectors(beam.PTransform):
    """`ContentVector`s → sharded `GroupIntoBatches` → vector-store upserts (idempotent: by id).

    The same route as the feature sink's vectors (`transforms/sinks.py`): Weaviate directly, the
    embedded store through the Redis queue its driver drains. Emits batch sizes.
    """

    def __init__(self, redis_url: str, vector_url: str | None, batch_size: int = 500, shards: int = 4,
                 max_buffering_secs: float | None = None) -> None:
        super().__init__()
        self.redis_url = redis_url
        self.vector_url = vector_url
        self.batch_size = batch_size
        self.shards = shards
        self.max_buffering_secs = max_buffering_secs

    def expand(self, vectors):
        shards = self.shards
        return (
            vectors
            | "Shard" >> beam.Map(lambda v: (zlib.crc32(v.item_id.encode()) % shards, v)).with_output_types(
                tuple[int, ContentVector])
            | "Batch" >> beam.GroupIntoBatches(self.batch_size, max_buffering_duration_secs=self.max_buffering_secs)
            | "Upsert" >> beam.ParDo(_UpsertVectors(self.redis_url, self.vector_url))
        )
