"""After training: a registry version's embeddings and features into the stores serving reads.

    python -m pipelines.deploy --registry DIR [--version V] --input 'logs/*.jsonl' [--inactive-days 30] [--idle-days 90]
        [--vector-store embedded:///dir | http://weaviate:8080] [--redis-url URL] [--as-of T] [Beam options]

`--version` defaults to the registry's `production` alias. Everything is computed from the event
log as of the clock (`--as-of`, else `PULSERANK_AS_OF`, else wall time; later events are left
out), with the version's ONNX files only: onnxruntime, no TensorFlow in this process.

1. **Items.** Every catalogue item (`item` events ∪ items with a positive interaction) gets its
   content vector (content_tower.onnx over `schemas.content_contract.catalog_inputs`) and its
   item-tower embedding. Upserted by item id into `vector_collection(CONTENT, version)` (cosine)
   and `vector_collection(ITEMS, version)` (inner product, what the towers score by). The version
   is in the collection name, so a new model never mixes its space with the old one's, and
   serving switches by name (`serving.active_model`).
   The ranker's per-item inputs go to Redis, `keys.item_model_features(item, version)`
   (categories padded to the ranker's width, content and embedding as float32 bytes, popularity),
   written through pipelines.
2. **Users** (the design's batch fallback path). The user tower embeds each user's positive
   items (most recent first) and context as of the clock (`models.examples.serving_row`, the
   same row serving builds): **all** users when this version was never deployed before
   (`keys.DEPLOYED_MODELS`), and on every run the inactive ones — no event for `--inactive-days`.
   Stored in `keys.user_batch_embedding(user)` (field `<version>`: as-of ms and vector) and,
   unless `--no-users-collection`, in `vector_collection(USERS, version)`. Users idle longer than
   `--idle-days` (default 90) get no seen set and no embedding: `pulserank prune` drops their keys.

   How serving picks the user vector for the active version (`stores.deployment.prefer_batch_embedding`):
   the batch embedding while the user has no interaction after its `as_of` (the newest entry of
   `keys.user_recent`); once they interact, the streaming path's incremental embedding
   (`keys.user_vectors` field `collab:<version>`, a decayed mean of the version's item vectors,
   fresh within seconds) is the one that knows the new session. Active users need no batch
   refresh — the streaming path covers them — while an inactive user's streaming vector decays
   towards nothing and the batch one, recomputed here on every run (its context moves with the
   clock), stands in. No vector of this version at all: the cold-start path (trending, content).
3. **Bandit posteriors**, re-derived from the log by the streaming path's own transform
   (`RouteEvents` → `BanditUpdates` → `WriteFeatures`, the sink replay uses) on Beam's
   `FnApiRunner`. Idempotence, and why it is a rebuild and not a merge: the sink merges each
   summary once, guarded by its id (family, key, set of event ids), so running the same log
   again changes nothing — but a *grown* log is a new event set with a new id, and merging its
   summary on top would count the old events twice. So each segment's summary is merged into a
   staging key of this run (an id of its own, so a replay's guard cannot skip it), then swapped
   in with `stores.deployment.swap_bandit`: one WATCH/MULTI that writes staging + (live −
   snapshot taken before the run), keeping whatever the streaming path merged meanwhile, and sets
   the live key's guard for this event set, so a later replay of the same log is a no-op. Hence:
   deploy after replay, replay after deploy, and deploy twice all leave the posteriors equal to
   one replay of the log. The log must hold every event the live state held when the run began
   (a complete lake; segments without events in it are emptied), and no event the stream merges
   after that (pass files closed before the run, or one event would count twice). Needs Redis
   >= 6.2 (COPY). `--no-bandit` skips the step.
4. The run is recorded in `keys.DEPLOYED_MODELS` last: a run that dies earlier leaves the version
   undeployed, so the next run embeds every user again and serving does not switch to it.

Every write is an upsert by id or an overwrite of a whole per-version record, so a re-run gives
the same state. `pipelines/train` calls `deploy(...)` after a promotion.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import redis

from models import registry
from models.examples import CATEGORIES_LEN, POSITIVE_TYPES, SERVING_HISTORY_LEN, history_matrix, padded, serving_row
from models.onnx_recommender import ITEM_TOWER, USER_TOWER  # models.exported imports TensorFlow
from schemas import keys
from schemas.clock import Clock, InstantError, clock_from, default_clock, format_instant
from schemas.content_contract import MODEL_FILE, ContentContract, catalog_inputs
from schemas.events import Event, EventError, EventType, parse_event
from schemas.features import FeatureConfig
from stores import deployment, retention
from stores import files as fs
from stores.feature_store import Write
from stores.redis_client import get_redis
from stores.redis_client import redis_url as default_redis_url
from stores.vector_store import VectorStore, open_vector_store

DAY_MS = 86_400_000
ONNX_BATCH = 4096
USER_BATCH = 256  # user rows per user-tower call: a batch is as wide as its longest history
UPSERT_BATCH = 2000
REQUIRED_FILES = (MODEL_FILE, ITEM_TOWER, USER_TOWER)
# The towers score by a raw inner product (the item's last coordinate is its bias, the user's a 1),
# so their collections search by "ip": cosine would normalise the magnitudes and the bias away.
# Content vectors are compared by direction.
TOWER_METRIC = "ip"
CONTENT_METRIC = "cos"


class DeployError(ValueError):
    """A deploy that cannot run as asked: the message names the argument or input at fault."""


# -- the log as of the clock ---------------------------------------------------------------------


@dataclass
class LogView:
    """What deploy needs from the event log as of `now_ms` (later events are left out)."""

    now_ms: int
    catalog: dict[str, Event] = field(default_factory=dict)  # item → its latest `item` event
    positives: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)  # user → (ts, event_id, item)
    last_seen: dict[str, int] = field(default_factory=dict)  # user → their newest event's time
    popularity: Counter = field(default_factory=Counter)  # item → positive interactions
    files: int = 0
    events: int = 0
    bad_lines: int = 0
    duplicates: int = 0
    after_clock: int = 0

    def item_ids(self) -> list[str]:
        return sorted(set(self.catalog) | set(self.popularity))

    def history(self, user_id: str) -> list[str]:
        """The user's positive items, oldest first (the order `serving_row` wants)."""
        return [item for _, _, item in sorted(self.positives.get(user_id, ()))]


def expand_inputs(globs: Sequence[str]) -> list[str]:
    if not globs:
        raise DeployError("--input: no glob given")
    files: set[str] = set()
    for pattern in globs:
        found = fs.match_files(pattern)  # local, or gs:// and any Beam filesystem
        if not found:
            raise DeployError(f"--input: no file matches {pattern!r}")
        files.update(found)
    return sorted(files)


def _records(path: str) -> Iterator[object]:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        if fs.is_local(path):
            rows = pq.read_table(path).to_pylist()
        else:
            with fs.open_read(path) as f:
                rows = pq.read_table(f).to_pylist()
        for row in rows:
            yield {k: v for k, v in row.items() if v is not None}
        return
    with fs.open_read(path, decompress=True) as f:
        for line in f:
            if line.strip():
                yield line


def read_log(globs: Sequence[str], now_ms: int) -> LogView:
    """One pass over the logs: catalogue, positives and last activity per user, item popularity.
    Bad lines are counted, not fatal (replay's dead letters name them); an event id counts once."""
    view = LogView(now_ms)
    seen: set[str] = set()
    for path in expand_inputs(globs):
        view.files += 1
        for raw in _records(path):
            try:
                event = parse_event(raw)
            except EventError:
                view.bad_lines += 1
                continue
            if event.event_id in seen:
                view.duplicates += 1
                continue
            seen.add(event.event_id)
            if event.ts > now_ms:
                view.after_clock += 1
                continue
            view.events += 1
            if event.type is EventType.ITEM:
                prev = view.catalog.get(event.item_id)
                if prev is None or (event.ts, event.event_id) >= (prev.ts, prev.event_id):
                    view.catalog[event.item_id] = event
                continue
            if event.user_id is None:
                continue
            view.last_seen[event.user_id] = max(view.last_seen.get(event.user_id, event.ts), event.ts)
            if event.type in POSITIVE_TYPES:
                view.positives.setdefault(event.user_id, []).append((event.ts, event.event_id, event.item_id))
                view.popularity[event.item_id] += 1
    return view


# -- ONNX ----------------------------------------------------------------------------------------


def _session(path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def _strings(values) -> np.ndarray:
    return np.asarray(values, dtype=object)  # str, never bytes: CategoryMapper maps bytes to OOV


def run_model(session, feed: dict[str, np.ndarray], output: str, batch: int = ONNX_BATCH) -> np.ndarray:
    """One output of an ONNX model over a feed of any length, in batches."""
    n = len(next(iter(feed.values())))
    parts = [session.run([output], {k: v[lo:lo + batch] for k, v in feed.items()})[0] for lo in range(0, n, batch)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)


def _width(session, name: str) -> int | None:
    """The fixed width of a 2-D input, or None when the model takes any width."""
    for arg in session.get_inputs():
        if arg.name == name and len(arg.shape) == 2 and isinstance(arg.shape[1], int):
            return arg.shape[1]
    return None


@dataclass
class Models:
    """The version's sessions and the shapes its files were exported with."""

    version: registry.Version
    content: object
    item: object
    user: object
    contract: ContentContract
    history_width: int | None  # the user tower's fixed history width, None when it takes any
    history_len: int  # positives read per user (the version's serving_history_len)
    categories_len: int

    @property
    def name(self) -> str:
        return self.version.version


def load_models(root: str, version: str | None) -> Models:
    """The named version (default: the production alias), verified, as onnxruntime sessions."""
    try:
        if version is None:
            v = registry.resolve(root)
            if v is None:
                raise DeployError(f"--registry {root}: no {registry.PRODUCTION!r} version; promote one "
                                  f"(pulserank models promote VERSION) or pass --version")
        else:
            v = registry.load_version(root, version)
            registry.verify(v)
        missing = [name for name in REQUIRED_FILES if name not in v.files]
        if missing:
            raise DeployError(f"version {v.version} has no {', '.join(missing)}: not a two-tower version")
        paths = {name: registry._fetch(v, name, None) for name in REQUIRED_FILES}
        contract = ContentContract.from_metadata(v.metadata)
    except registry.RegistryError as exc:
        raise DeployError(f"--registry {root}: {exc}") from None
    except ValueError as exc:
        if isinstance(exc, DeployError):
            raise
        raise DeployError(f"version {version or 'production'}: metadata: {exc}") from None
    spec = v.metadata.get("feature_spec") or {}
    user = _session(paths[USER_TOWER])
    return Models(v, _session(paths[MODEL_FILE]), _session(paths[ITEM_TOWER]), user, contract,
                  _width(user, "history"), int(spec.get("serving_history_len", SERVING_HISTORY_LEN)),
                  int(spec.get("categories_len", CATEGORIES_LEN)))


# -- the steps -----------------------------------------------------------------------------------


@dataclass
class DeployReport:
    version: str
    as_of_ms: int
    first_deployment: bool = False
    items: int = 0  # item features in Redis and item embeddings in the items collection
    content_vectors: int = 0
    vectors_skipped: int = 0  # non-finite vectors, and zero ones under cosine
    users: int = 0  # users in the log as of the clock
    users_inactive: int = 0
    users_embedded: int = 0
    bandit_segments: int = 0
    bandit_fields: int = 0
    collections: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    categories: list[str] = field(default_factory=list)  # the catalogue's, for serving's filter checks

    def summary(self) -> str:
        who = "all users (first deployment)" if self.first_deployment else f"{self.users_inactive:,} inactive users"
        times = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        return (f"deployed {self.version} as of {format_instant(self.as_of_ms)}: {self.items:,} items "
                f"({self.content_vectors:,} content vectors), {self.users_embedded:,} of {self.users:,} users "
                f"embedded ({who}), bandit {self.bandit_fields:,} posteriors in {self.bandit_segments} segments; "
                f"collections {', '.join(self.collections.values())}; {times}; "
                f"total {sum(self.seconds.values()):.1f}s")

    def to_record(self) -> dict:
        return {"as_of": self.as_of_ms, "deployed_at": format_instant(int(time.time() * 1000)),
                "items": self.items, "users_embedded": self.users_embedded, "users": self.users,
                "collections": self.collections, "categories": self.categories}


@contextmanager
def _stage(report: DeployReport, name: str, out) -> Iterator[None]:
    print(f"[{name}] ...", file=out, flush=True)
    started = time.perf_counter()
    yield
    report.seconds[name] = time.perf_counter() - started
    print(f"[{name}] done in {report.seconds[name]:.1f}s", file=out, flush=True)


def _usable(vectors: np.ndarray, metric: str) -> np.ndarray:
    ok = np.isfinite(vectors).all(axis=1)
    return ok & (np.abs(vectors).sum(axis=1) > 0) if metric == "cos" else ok


def upsert_vectors(store: VectorStore, collection: str, ids: Sequence[str], vectors: np.ndarray,
                   properties: Sequence[dict], metric: str) -> int:
    """Upserts the usable rows (non-finite ones never; zero ones not under cosine); returns how many."""
    keep = np.flatnonzero(_usable(vectors, metric))
    if len(keep) == 0:
        return 0
    store.ensure_collection(collection, int(vectors.shape[1]), metric)
    for lo in range(0, len(keep), UPSERT_BATCH):
        rows = keep[lo:lo + UPSERT_BATCH]
        store.upsert(collection, [ids[i] for i in rows], vectors[rows], [properties[i] for i in rows])
    return len(keep)


def deploy_items(models: Models, log: LogView, client: redis.Redis, store: VectorStore,
                 report: DeployReport) -> None:
    ids = log.item_ids()
    content = run_model(models.content, catalog_inputs(ids, log.catalog, models.contract), "content")
    embedding = run_model(models.item, {"item_id": _strings(ids), "content": content}, "embedding")
    events = [log.catalog.get(i) for i in ids]
    categories = [tuple(e.attributes.categories) if e is not None and e.attributes is not None else () for e in events]
    rows = [deployment.ItemFeatures(item_id, tuple(padded(list(cats), models.categories_len)), content[n],
                                    embedding[n], log.popularity.get(item_id, 0), log.now_ms)
            for n, (item_id, cats) in enumerate(zip(ids, categories, strict=True))]
    report.items = deployment.write_item_features(client, models.name, rows)
    report.categories = sorted({c for cats in categories for c in cats if c})
    props = [{"categories": list(c), "popularity": int(log.popularity.get(i, 0)), "model": models.name}
             for i, c in zip(ids, categories, strict=True)]
    written = upsert_vectors(store, report.collections[keys.ITEMS], ids, embedding, props, TOWER_METRIC)
    report.content_vectors = upsert_vectors(store, report.collections[keys.CONTENT], ids, content, props,
                                            CONTENT_METRIC)
    report.vectors_skipped += 2 * len(ids) - written - report.content_vectors


def user_feed(log: LogView, users: Sequence[str], history_len: int, width: int | None = None
              ) -> dict[str, np.ndarray]:
    """User-tower inputs as of the clock: the last `history_len` positives, padded to `width`
    (a model exported with a fixed width) or to the longest in the batch."""
    rows = [serving_row(u, log.history(u), log.now_ms, history_len) for u in users]
    history = history_matrix([r["history"] for r in rows], width)
    return {"user_id": _strings([r["user_id"] for r in rows]),
            "history": _strings(history).reshape(len(rows), len(history[0]) if history else 0),
            "context": np.asarray([r["context"] for r in rows], np.float32).reshape(len(rows), -1)}


def user_embeddings(models: Models, log: LogView, users: Sequence[str]) -> np.ndarray:
    """In batches of USER_BATCH, so one batch's width (its longest history) bounds the memory."""
    parts = [run_model(models.user, user_feed(log, users[lo:lo + USER_BATCH], models.history_len,
                                              models.history_width), "embedding")
             for lo in range(0, len(users), USER_BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def users_to_embed(log: LogView, first_deployment: bool, inactive_days: float,
                   idle_days: float | None = None) -> tuple[list[str], list[str]]:
    """(users to embed, inactive users): every user on a version's first deployment, else the
    users with no event in the last `inactive_days` (as of the clock). Users idle longer than
    `idle_days` are in neither: the idle-user prune (stores/retention.py) drops their keys."""
    cutoff = log.now_ms - inactive_days * DAY_MS
    users = kept_users(log, idle_days)
    inactive = [u for u in users if log.last_seen[u] < cutoff]
    return (users if first_deployment else inactive), inactive


def kept_users(log: LogView, idle_days: float | None) -> list[str]:
    """The log's users not idle longer than `idle_days` as of the clock (None: all), sorted."""
    if idle_days is None:
        return sorted(log.last_seen)
    cutoff = log.now_ms - retention.idle_ttl_ms(idle_days)
    return sorted(u for u, last in log.last_seen.items() if last >= cutoff)


def deploy_users(models: Models, log: LogView, client: redis.Redis, store: VectorStore | None,
                 inactive_days: float, report: DeployReport, idle_days: float | None = None) -> None:
    report.first_deployment = not deployment.is_deployed(client, models.name)
    todo, inactive = users_to_embed(log, report.first_deployment, inactive_days, idle_days)
    report.users, report.users_inactive = len(log.last_seen), len(inactive)
    deployment.write_seen(client, {u: {item: ts for ts, _, item in sorted(log.positives.get(u, ()))}
                                     for u in kept_users(log, idle_days)})
    if not todo:
        return
    vectors = user_embeddings(models, log, todo)
    report.users_embedded = deployment.write_user_embeddings(client, models.name, todo, vectors, log.now_ms)
    if store is not None:
        props = [{"as_of": int(log.now_ms), "model": models.name}] * len(todo)
        written = upsert_vectors(store, report.collections[keys.USERS], todo, vectors, props, TOWER_METRIC)
        report.vectors_skipped += len(todo) - written


@dataclass
class BanditResult:
    segments: int
    fields: int
    events_read: int


def _to_staging(write: Write, run: str) -> Write:
    staging = keys.bandit_rebuild(keys.hash_tag(write.key)[2:], run, "staging")
    return Write(write.kind, staging, deployment.staging_summary_id(write.summary_id, run), write.payload)


def rederive_bandit(globs: Sequence[str], url: str, config: FeatureConfig, now_ms: int,
                    vector_store: str | None = None, beam_args: Sequence[str] = ()) -> BanditResult:
    """The bandit posteriors rebuilt from the log and swapped in (module docstring, step 3)."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from pipelines.gc_tuning import relaxed_gc
    from transforms.features import BanditUpdates, RouteEvents
    from transforms.parse import NAMESPACE, ParseEvents, ReadEventLines
    from transforms.sinks import WriteFeatures

    client = get_redis(url)
    run = uuid.uuid4().hex[:12]
    try:
        before = deployment.bandit_segments(client)
        deployment.snapshot_bandit(client, run, before)
        options = PipelineOptions(list(beam_args))
        if options.view_as(StandardOptions).runner is None:
            options.view_as(StandardOptions).runner = "FnApiRunner"  # not Prism: it downloads a binary
        with tempfile.TemporaryDirectory(prefix="pulserank-deploy-") as tmp:
            ids_path = os.path.join(tmp, "summary-ids.jsonl")
            p = beam.Pipeline(options=options)
            events = (p | "Read" >> ReadEventLines(list(globs))
                      | "Parse" >> ParseEvents(until_ms=now_ms + 1))["events"]
            writes = (events | "RouteEvents" >> RouteEvents())["bandit"] | "BanditUpdates" >> BanditUpdates(config)
            (writes
             | "SummaryIds" >> beam.Map(lambda w: json.dumps([w.key, w.summary_id]))
             | "WriteIds" >> beam.io.WriteToText(ids_path, shard_name_template=""))
            (writes
             | "ToStaging" >> beam.Map(_to_staging, run)
             | "WriteStaging" >> WriteFeatures(url, vector_store, config))
            with relaxed_gc():
                result = p.run()
                result.wait_until_finish()
            summary_ids = {}
            if os.path.exists(ids_path):  # no bandit event at all: maybe no file
                with open(ids_path, encoding="utf-8") as f:
                    summary_ids = dict(json.loads(line) for line in f if line.strip())
        read = sum(int(c.committed or c.attempted or 0) for c in result.metrics().query(
            MetricsFilter().with_namespace(NAMESPACE).with_name("events_read"))["counters"])
        segments = sorted(set(before) | {keys.hash_tag(k)[2:] for k in summary_ids})
        fields = sum(deployment.swap_bandit(client, seg, run, config.bandit_tau_ms, summary_ids.get(keys.bandit(seg)))
                     for seg in segments)
        return BanditResult(len(segments), fields, read)
    finally:
        client.close()


def deploy(root: str, version: str | None, globs: Sequence[str] | str, redis_url: str | None = None,
           vector_store: str | None = None, inactive_days: float = 30.0, *, clock: Clock | None = None,
           bandit: bool = True, users_collection: bool = True, bandit_half_life_hours: float | None = None,
           beam_args: Sequence[str] = (), out=sys.stdout,
           idle_days: float | None = retention.DEFAULT_IDLE_DAYS) -> DeployReport:
    """Deploys a registry version (None: production) from the logs `globs`; see the module docstring."""
    if isinstance(globs, str):
        globs = [g for g in globs.split(",") if g]
    if not inactive_days >= 0:
        raise DeployError(f"--inactive-days must be a number of days >= 0, got {inactive_days!r}")
    if idle_days is not None and not idle_days > 0:
        raise DeployError(f"--idle-days must be a number of days > 0, got {idle_days!r}")
    if bandit_half_life_hours is not None and not bandit_half_life_hours > 0:
        raise DeployError(f"--bandit-half-life-hours must be > 0, got {bandit_half_life_hours!r}")
    now = (clock or default_clock()).now_ms()
    url = redis_url or default_redis_url()
    report = DeployReport(version or "production", now)
    with _stage(report, "load model", out):
        models = load_models(root, version)
        report.version = models.name
        report.collections = {kind: keys.vector_collection(kind, models.name)
                              for kind in (keys.ITEMS, keys.CONTENT) + ((keys.USERS,) if users_collection else ())}
    with _stage(report, "read log", out):
        log = read_log(globs, now)
        print(f"  {log.events:,} events as of {format_instant(now)} in {log.files} file(s) ({log.after_clock:,} "
              f"later, {log.duplicates:,} duplicates, {log.bad_lines:,} bad lines); {len(log.item_ids()):,} items, "
              f"{len(log.last_seen):,} users", file=out)
        if log.events == 0:
            raise DeployError(f"--input: no event at or before {format_instant(now)} (pin the clock with --as-of "
                              f"to deploy an old log as of its end)")
    client = get_redis(url)
    try:
        try:
            client.ping()
        except redis.RedisError as exc:
            raise DeployError(f"--redis-url: cannot reach Redis ({exc})") from None
        try:
            store = open_vector_store(vector_store)
        except ValueError as exc:
            raise DeployError(f"--vector-store: {exc}") from None
        try:
            with _stage(report, "items", out):
                deploy_items(models, log, client, store, report)
            with _stage(report, "users", out):
                deploy_users(models, log, client, store if users_collection else None, inactive_days, report,
                             idle_days)
        finally:
            store.close()
        if bandit:
            with _stage(report, "bandit (Beam)", out):
                config = FeatureConfig(bandit_half_life_ms=bandit_half_life_hours * 3_600_000
                                       if bandit_half_life_hours else None)
                result = rederive_bandit(globs, url, config, now, vector_store, beam_args)
                report.bandit_segments, report.bandit_fields = result.segments, result.fields
        deployment.mark_deployed(client, models.name, report.to_record())
    finally:
        client.close()
    print(report.summary(), file=out, flush=True)
    return report


# -- command line --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pulserank deploy", description=__doc__.splitlines()[0],
                                epilog="Unknown flags go to the bandit's Beam pipeline as options.")
    p.add_argument("--registry", required=True, help="model registry root: a directory or gs://...")
    p.add_argument("--version", default=None, help="the version to deploy (default: the production alias)")
    p.add_argument("--input", required=True, help="event-log glob(s), comma-separated (JSONL, .jsonl.gz, Parquet)")
    p.add_argument("--inactive-days", type=float, default=30.0,
                   help="users with no event for this long get a fresh batch embedding on every run (default 30)")
    p.add_argument("--idle-days", type=float, default=retention.DEFAULT_IDLE_DAYS,
                   help="users idle longer get no seen set or batch embedding: the idle-user prune drops them "
                        f"(default {retention.DEFAULT_IDLE_DAYS:g})")
    p.add_argument("--vector-store", default=None, help="embedded:///dir or http://weaviate:8080 "
                                                         "(default: $PULSERANK_VECTOR_STORE, else ./out/vectors)")
    p.add_argument("--redis-url", default=None, help="default: REDIS_URL, else an embedded server")
    p.add_argument("--as-of", default=None, help="pin the clock (RFC 3339 or epoch ms); default: the global clock")
    p.add_argument("--bandit-half-life-hours", type=float, default=None,
                   help="the half-life the streaming path decays bandit counts with (default: exact counts)")
    p.add_argument("--no-bandit", action="store_true", help="skip re-deriving the bandit posteriors")
    p.add_argument("--no-users-collection", action="store_true",
                   help="keep batch user embeddings in Redis only (no users collection)")
    return p


def run(argv: list[str] | None = None) -> int:
    args, beam_args = build_parser().parse_known_args(argv)
    try:
        clock = clock_from(args.as_of) if args.as_of else default_clock()
    except InstantError as exc:
        print(f"pulserank deploy: --as-of: {exc}", file=sys.stderr)
        return 2
    try:
        deploy(args.registry, args.version, args.input, args.redis_url, args.vector_store, args.inactive_days,
               clock=clock, bandit=not args.no_bandit, users_collection=not args.no_users_collection,
               bandit_half_life_hours=args.bandit_half_life_hours, beam_args=beam_args, idle_days=args.idle_days)
    except DeployError as exc:
        print(f"pulserank deploy: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
