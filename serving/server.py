"""`pulserank serve`: the origin's async gRPC server (`pulserank.v1.Personalization`).

Assembly: the servicer below, the gateway interceptors (API keys and scopes, the Redis token
bucket), the standard health service and server reflection, a Prometheus endpoint, optional TLS
and a graceful shutdown (SIGTERM/SIGINT: health turns NOT_SERVING, in-flight calls get a grace
period). Background tasks follow the registry alias (hot swap: the new version's ONNX sessions
are built beside the old ones, then swapped in one assignment; a version that fails to verify or
to load is refused and the old one keeps serving) and keep a snapshot of trending items for
degraded answers while Redis is unreachable.

Bad requests get INVALID_ARGUMENT naming the field, including requests that are not valid
protobuf for the method (wrong wire types), which gRPC would otherwise report as INTERNAL.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import redis
import redis.asyncio as aioredis
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

from schemas import keys
from schemas import personalization_pb2 as pb
from schemas import personalization_pb2_grpc as pb_grpc
from schemas.clock import Clock, clock_from
from schemas.features import context_features
from serving import ab, explain, gateway, llm
from serving.active_model import ActiveModel
from serving.config import ServeConfig
from serving.edge_sync import EdgeSyncServicer, SyncHub
from serving.events import BatchError, impression_events, intake_response, validate_batch
from serving.gc_pacing import pace_gc
from serving.metrics import ServingMetrics
from serving.personalize import DEFAULT_SEGMENT, NoModelError, Outcome, Personalizer, Shown, Variant
from stores import deployment
from stores.publishers import Publisher, publisher_from_config
from stores.rate_limit import TokenBucket
from stores.serving_reads import fetch_context, fetch_items, read_bandit_counts

log = logging.getLogger("pulserank.serve")

SERVICE = "pulserank.v1.Personalization"
MAX_N = 1000
MAX_LIST = 1000
MAX_ID = 128
REDIS_TIMEOUT_S = 0.25  # a dead Redis is noticed within this, and the answer turns degraded
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, asyncio.TimeoutError)
_NOT_READY = "the server has no deployed model yet"


class BadRequest(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


@dataclass(frozen=True)
class Malformed:
    """A request body that did not parse as the method's message."""

    error: str


def _check_id(value: str, field: str) -> None:
    if not value:
        raise BadRequest(field, "required (a non-empty string)")
    if len(value) > MAX_ID:
        raise BadRequest(field, f"longer than {MAX_ID} characters")


def _check_list(values: Sequence[str], field: str) -> None:
    if len(values) > MAX_LIST:
        raise BadRequest(field, f"at most {MAX_LIST} entries, got {len(values)}")
    for i, v in enumerate(values):
        if not v:
            raise BadRequest(f"{field}[{i}]", "empty")


def validate_personalize(req: pb.PersonalizeRequest, categories: set[str]) -> None:
    """Raises BadRequest naming the first bad field."""
    _check_id(req.user_id, "user_id")
    if not 1 <= req.n <= MAX_N:
        raise BadRequest("n", f"must be 1..{MAX_N}, got {req.n}")
    _check_list(req.candidate_item_ids, "candidate_item_ids")
    f = req.filters
    _check_list(f.exclude_item_ids, "filters.exclude_item_ids")
    for name in ("include_categories", "exclude_categories"):
        values = getattr(f, name)
        _check_list(values, f"filters.{name}")
        unknown = [c for c in values if categories and c not in categories]
        if unknown:
            raise BadRequest(f"filters.{name}", f"unknown category {unknown[0]!r}")
    if f.HasField("price_range"):
        lo = f.price_range.min_price if f.price_range.HasField("min_price") else None
        hi = f.price_range.max_price if f.price_range.HasField("max_price") else None
        for name, v in (("min_price", lo), ("max_price", hi)):
            if v is not None and not (np.isfinite(v) and v >= 0):
                raise BadRequest(f"filters.price_range.{name}", f"must be a finite number ≥ 0, got {v}")
        if lo is not None and hi is not None and lo > hi:
            raise BadRequest("filters.price_range", f"min_price {lo} > max_price {hi}")
    if f.HasField("new_within_days") and f.new_within_days <= 0:
        raise BadRequest("filters.new_within_days", f"must be > 0, got {f.new_within_days}")


class Snapshot:
    """Trending items held in memory, refreshed while Redis is up: the degraded answer's source."""

    def __init__(self, size: int = 500) -> None:
        self.size = size
        self.items: list[tuple[str, float]] = []
        self.as_of_ms = 0

    async def refresh(self, client: aioredis.Redis, now_ms: int) -> None:
        ctx = await fetch_context(client, "-", None, keys.GLOBAL_SEGMENT, now_ms, self.size)
        if ctx.trending:
            self.items, self.as_of_ms = ctx.trending, now_ms

    def answer(self, req: pb.PersonalizeRequest) -> list[Shown]:
        excluded = set(req.filters.exclude_item_ids)
        pool = list(req.candidate_item_ids) or [i for i, _ in self.items]
        scores = dict(self.items)
        top = max((s for _, s in self.items), default=1.0) or 1.0
        picked = [i for i in pool if i not in excluded][: req.n]
        return [Shown(i, float(scores.get(i, 0.0)) / top, pos, 1.0, False, ("snapshot",))
                for pos, i in enumerate(picked)]


class Origin:
    """Everything one origin server holds: stores, models per A/B variant, publisher, reasoner."""

    def __init__(self, config: ServeConfig, clock: Clock | None = None, store=None, seed: int | None = None) -> None:
        from stores.redis_client import get_async_redis, get_redis, redis_url
        from stores.vector_store import open_vector_store

        self.config = config
        self.clock = clock or clock_from(config.as_of)
        url = config.redis_url or redis_url()
        # Maintenance notifications off: redis-py 8 turns them on ("auto") for RESP3 over TCP, and
        # then hands out pooled connections the server closed (redis/redis-py#4252), so after a
        # Redis restart requests would keep failing on stale connections instead of reconnecting.
        common = {"socket_timeout": REDIS_TIMEOUT_S, "socket_connect_timeout": REDIS_TIMEOUT_S,
                  "maint_notifications_config": MaintNotificationsConfig(enabled=False)}
        self.redis = get_async_redis(url, retry=Retry(NoBackoff(), 0), **common)  # a cluster URL too
        self.redis_sync = get_redis(url, **common)
        self.store = store if store is not None else open_vector_store(config.vector_store)
        self.experiment = ab.load_experiment(config.experiment)
        self.metrics = ServingMetrics()
        self.publisher: Publisher = publisher_from_config(config.events, self.redis)
        self.reasoner = llm.LlmReasoner(llm.llm_config(config.llm))
        self.keys = gateway.load_api_keys(config.api_keys)
        self.snapshot = Snapshot()
        self.hub = SyncHub(self.clock, full_every_s=config.sync_full_every_s)  # the edges' push channel
        self.categories: set[str] = set()
        if not config.registry:
            raise ValueError("registry: required (the model registry root serving follows)")
        self.models: dict[str, Personalizer] = {}
        for alias in sorted({v.model for v in self.experiment.variants}):
            active = ActiveModel(config.registry, alias, ready=self._deployed, poll_secs=1.0)
            self.models[alias] = Personalizer(self.redis, self.store, active, self.clock, config.sizes,
                                              config.sources, n_sim=config.n_sim, seed=seed,
                                              exploration_share=config.exploration_share)
        self._pending: list = []  # impressions waiting for the event stream (Redis down)
        self._tasks: list[asyncio.Task] = []

    def _deployed(self, version: str) -> bool:
        record = deployment.deployed(self.redis_sync).get(version)
        if record is not None:
            self.categories |= set(record.get("categories") or ())
        return record is not None

    # -- background -------------------------------------------------------------------------------

    async def start(self) -> None:
        for p in self.models.values():
            await asyncio.to_thread(p.refresh)
        try:
            await self.snapshot.refresh(self.redis, self.clock.now_ms())
        except REDIS_ERRORS as exc:
            log.warning("snapshot: Redis unreachable at start (%s)", exc)
        self._tasks = [asyncio.create_task(self._follow_alias()), asyncio.create_task(self._keep_snapshot())]

    async def _follow_alias(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for p in self.models.values():
                try:
                    await asyncio.to_thread(p.refresh)
                except Exception as exc:  # never kill the loop: the old version keeps serving
                    log.warning("model refresh failed: %s", exc)
            for v in {p.version for p in self.models.values() if p.version}:
                self.metrics.model.labels(v).set(1)
            for p in self.models.values():
                if p.calibration_due():
                    await asyncio.to_thread(p.calibrate_exploration)

    async def _keep_snapshot(self) -> None:
        bandits_at = 0.0
        while True:
            await asyncio.sleep(2.0)
            try:
                await self.snapshot.refresh(self.redis, self.clock.now_ms())
                if time.monotonic() - bandits_at >= self.hub.full_every_s / 2 and self.hub.subscribers:
                    self.hub.set_bandits(await read_bandit_counts(self.redis, now_ms=self.clock.now_ms()))
                    bandits_at = time.monotonic()
                await self._flush_pending()
            except REDIS_ERRORS:
                pass
            for p in self.models.values():
                if p.version:
                    self.hub.set_model_version(p.version)
                    break

    async def _flush_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:1000], self._pending[1000:]
            try:
                await self.publisher.publish(batch)
                self.metrics.impressions.labels("published_late").inc(len(batch))
            except Exception:
                self._pending = batch + self._pending
                raise

    async def publish_impressions(self, events: list) -> None:
        try:
            await self.publisher.publish(events)
            self.metrics.impressions.labels("published").inc(len(events))
        except Exception as exc:
            log.warning("impressions: publish failed (%s); %d kept in memory", exc, len(events))
            self._pending = (self._pending + events)[-100_000:]
            self.metrics.impressions.labels("buffered").inc(len(events))

    async def close(self) -> None:
        self.hub.close()
        for t in self._tasks:
            t.cancel()
        await self.reasoner.aclose()
        await self.publisher.aclose()
        await self.redis.aclose()
        self.redis_sync.close()


def session_of(event) -> str:
    """The session a client names in the event's context (`extra.session_id`, the key the feature
    pipelines read), if any."""
    extra = event.context.extra if event.context is not None else None
    return str(extra.get("session_id", "")) if extra else ""


def _variant(v: ab.Variant) -> Variant:
    return Variant(v.name, v.n0, v.epsilon)


class Servicer:
    """The three RPCs; registered by `add_to_server` with tolerant deserializers."""

    def __init__(self, origin: Origin) -> None:
        self.o = origin

    async def _abort(self, context, method: str, code: grpc.StatusCode, message: str) -> None:
        self.o.metrics.requests.labels(method, code.name).inc()
        await context.abort(code, message)

    async def Personalize(self, req, context) -> pb.PersonalizeResponse:
        started = time.perf_counter()
        o = self.o
        if isinstance(req, Malformed):
            await self._abort(context, "Personalize", grpc.StatusCode.INVALID_ARGUMENT, f"request: {req.error}")
        try:
            validate_personalize(req, o.categories)
        except BadRequest as exc:
            await self._abort(context, "Personalize", grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        variant = ab.allocate(req.user_id, o.experiment)
        personalizer = o.models[variant.model]
        request_id = uuid.uuid4().hex
        outcome: Outcome | None = None
        degraded_reason = None
        try:
            outcome = await personalizer.personalize(req, _variant(variant), request_id)
        except REDIS_ERRORS:
            degraded_reason = "redis_unreachable"
        except NoModelError:
            degraded_reason = "no_model"
        if outcome is None:
            items = o.snapshot.answer(req)
            if not items:
                await self._abort(context, "Personalize", grpc.StatusCode.UNAVAILABLE,
                                  f"{degraded_reason}: and no snapshot of trending items to fall back on")
            o.metrics.degraded.labels(degraded_reason).inc()
            outcome = Outcome(request_id, personalizer.version or "", items, None, None, degraded=True)
        resp = pb.PersonalizeResponse(request_id=request_id, model_version=outcome.version, variant=variant.name,
                                      degraded=outcome.degraded, source=pb.SOURCE_ORIGIN)
        explained = await self._explanations(req, outcome) if req.explain and outcome.context is not None else {}
        if req.include_pool and outcome.pool_scores is not None:
            resp.pool.extend(pb.PoolItem(item_id=i, score=float(p)) for i, p in zip(outcome.pool, outcome.pool_scores,
                                                                                       strict=True))
        for s in outcome.items:
            item = resp.items.add(item_id=s.item_id, score=s.score, position=s.position, propensity=s.propensity,
                                  explored=s.explored)
            if s.item_id in explained:
                rs, text = explained[s.item_id]
                item.reasons.extend(pb.Reason(code=r.code, text=r.text, weight=r.weight) for r in rs)
                item.explanation = text
        m = o.metrics
        for stage, ms in outcome.stages_ms.items():
            m.stage.labels(stage).observe(ms)
        for source, count in outcome.candidates_per_source.items():
            m.candidates.labels(source).observe(count)
        for reason, count in outcome.dropped.items():
            m.dropped.labels(reason).inc(count)
        m.cache.labels("item_features", "hit").inc(outcome.feature_cache[0])
        m.cache.labels("item_features", "miss").inc(outcome.feature_cache[1])
        m.shown.labels(variant.name).inc(len(outcome.items))
        m.explored.labels(variant.name).inc(sum(s.explored for s in outcome.items))
        context.set_trailing_metadata((("x-candidates", ",".join(f"{k}={v}" for k, v in
                                                                  sorted(outcome.candidates_per_source.items()))),))
        if outcome.items and not outcome.degraded:
            events = impression_events(request_id, req.user_id,
                                       [(s.item_id, s.position, s.propensity) for s in outcome.items],
                                       variant.name, o.clock.now_ms(),
                                       {"segment": req.context.segment or DEFAULT_SEGMENT,
                                        "experiment": o.experiment.name})
            asyncio.create_task(o.publish_impressions(events))
        m.requests.labels("Personalize", "OK").inc()
        m.latency.labels("Personalize").observe((time.perf_counter() - started) * 1000)
        return resp

    async def _explanations(self, req, outcome: Outcome) -> dict[str, tuple[list, str]]:
        """Grounded reasons for every shown item; the LLM (by its policy) for the first only."""
        out = {}
        ctx, data = outcome.context, outcome.data
        budget_end = time.perf_counter() + llm.LLM_PATH_BUDGET_MS / 1000
        for s in outcome.items:
            signals = await self._signals(ctx, data, s, outcome.version)
            rs = explain.reasons(signals)
            text = explain.template(signals, rs)
            if s.position == 0:
                policy = self._policy(ctx, signals, user_asked=True,
                                      budget_left_ms=(budget_end - time.perf_counter()) * 1000)
                e = await self.o.reasoner.explain(self._user_doc(ctx, data), signals, rs, policy)
                self.o.metrics.llm.labels(e.decision, str(e.used_llm).lower()).inc()
                text = e.text
            out[s.item_id] = (rs, text)
        return out

    @staticmethod
    def _policy(ctx, s: explain.ItemSignals, user_asked: bool, budget_left_ms: float) -> llm.PolicyInput:
        return llm.PolicyInput(user_asked=user_asked, cold_start=ctx.is_cold, bandit_trials=s.bandit_trials,
                               high_value=False, cross_domain=False, cache_hit_high_confidence=False,
                               returning_strong_signals=len(ctx.seen) >= 20 and not user_asked,
                               budget_left_ms=budget_left_ms, rate_available=True)

    @staticmethod
    def _user_doc(ctx, data) -> dict[str, str]:
        titles = [data.attributes.get(i, {}).get("title", i) for i in ctx.recent_items()] if data else []
        doc = {"recent": "; ".join(titles[:5]), "segment": ctx.segment}
        if ctx.mood:
            doc["mood"] = ctx.mood[0]
        return doc

    async def _signals(self, ctx, data, s: Shown, version: str) -> explain.ItemSignals:
        recent = ctx.recent_items()
        missing = [i for i in [s.item_id, *recent] if i not in data.features or i not in data.attributes]
        if missing:
            more = await fetch_items(self.o.redis, version, missing, ctx.segment, ctx.now_ms)
            data.features.update(more.features)
            data.attributes.update(more.attributes)
        f = data.features.get(s.item_id)
        similar = []
        if f is not None:
            v = f.content / (np.linalg.norm(f.content) or 1.0)
            for r in recent:
                g = data.features.get(r)
                if g is not None:
                    sim = float(v @ (g.content / (np.linalg.norm(g.content) or 1.0)))
                    similar.append((r, data.attributes.get(r, {}).get("title", r), sim))
            similar = sorted(similar, key=lambda x: -x[2])[:3]
        trending = {i: k for k, (i, _) in enumerate(ctx.trending)}
        attrs = data.attributes.get(s.item_id, {})
        created = attrs.get("created_at")
        seg, glob = data.bandit.get(s.item_id, (0.0, 0.0)), data.bandit_global.get(s.item_id, (0.0, 0.0))
        return explain.ItemSignals(
            item_id=s.item_id, title=attrs.get("title", ""), categories=tuple(c for c in (f.categories if f else ())
                                                                                 if c),
            score=s.score, similar_to=tuple(similar), trending_rank=trending.get(s.item_id), segment=ctx.segment,
            explored=s.explored, is_new=created is not None and int(created) > ctx.now_ms - 30 * 86_400_000,
            bandit_trials=sum(seg) + sum(glob) + 2.0,
            mood_match=(ctx.mood[0], ctx.mood[1]) if ctx.mood else None, source=",".join(s.sources))

    async def RecordEvents(self, req, context) -> pb.RecordEventsResponse:
        o = self.o
        if isinstance(req, Malformed):
            await self._abort(context, "RecordEvents", grpc.StatusCode.INVALID_ARGUMENT, f"request: {req.error}")
        try:
            intake = validate_batch(req.events, slates=req.slates)
        except BatchError as exc:
            await self._abort(context, "RecordEvents", grpc.StatusCode.INVALID_ARGUMENT, f"{exc.field}: {exc.reason}")
        if intake.accepted:
            try:
                await o.publisher.publish(intake.accepted)
            except Exception as exc:
                await self._abort(context, "RecordEvents", grpc.StatusCode.UNAVAILABLE,
                                  f"event stream unreachable ({type(exc).__name__}); nothing was accepted, retry")
            for e in intake.accepted:  # the edges' view of the user changes at once
                if e.user_id and e.item_id and e.type.value != "impression":  # an edge's own impressions
                    o.hub.observe(e.user_id, e.item_id, e.type.value, e.ts, session_of(e))
        o.metrics.requests.labels("RecordEvents", "OK").inc()
        return intake_response(intake)

    async def Explain(self, req, context) -> pb.ExplainResponse:
        o = self.o
        if isinstance(req, Malformed):
            await self._abort(context, "Explain", grpc.StatusCode.INVALID_ARGUMENT, f"request: {req.error}")
        try:
            _check_id(req.user_id, "user_id")
            _check_id(req.item_id, "item_id")
        except BadRequest as exc:
            await self._abort(context, "Explain", grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        variant = ab.allocate(req.user_id, o.experiment)
        personalizer = o.models[variant.model]
        scorer = personalizer.scorer()
        segment = req.context.segment or DEFAULT_SEGMENT
        now = o.clock.now_ms()
        started = time.perf_counter()
        try:
            ctx = await fetch_context(o.redis, req.user_id, scorer.version if scorer else None, segment, now)
            data = await fetch_items(o.redis, scorer.version if scorer else None, [req.item_id, *ctx.recent_items()],
                                     segment, now)
        except REDIS_ERRORS:
            await self._abort(context, "Explain", grpc.StatusCode.UNAVAILABLE, "feature store unreachable")
        if scorer is not None and req.item_id not in data.features:
            await self._abort(context, "Explain", grpc.StatusCode.NOT_FOUND,
                              f"item_id: {req.item_id!r} is not in the served catalogue")
        p = 0.0
        if scorer is not None:
            f = data.features[req.item_id]
            vec, _ = personalizer.user_embedding(scorer, ctx)
            p = float(scorer.rank(vec, [req.item_id], [f.categories], f.content[None, :],
                                  context_features(ctx.activity, now))[0])
        shown = Shown(req.item_id, p, 0, 1.0, False, ())
        signals = await self._signals(ctx, data, shown, scorer.version if scorer else "")
        rs = explain.reasons(signals)
        budget = llm.LLM_PATH_BUDGET_MS - (time.perf_counter() - started) * 1000
        e = await o.reasoner.explain(self._user_doc(ctx, data), signals, rs,
                                     self._policy(ctx, signals, user_asked=True, budget_left_ms=budget))
        o.metrics.llm.labels(e.decision, str(e.used_llm).lower()).inc()
        o.metrics.requests.labels("Explain", "OK").inc()
        return pb.ExplainResponse(reasons=[pb.Reason(code=r.code, text=r.text, weight=r.weight) for r in rs],
                                  explanation=e.text, used_llm=e.used_llm)


def _tolerant(message_cls):
    def parse(data: bytes):
        try:
            return message_cls.FromString(data)
        except DecodeError as exc:
            return Malformed(f"not a valid {message_cls.DESCRIPTOR.full_name} ({exc})")
    return parse


def add_to_server(servicer: Servicer, server: grpc.aio.Server) -> None:
    handlers = {
        "Personalize": grpc.unary_unary_rpc_method_handler(
            servicer.Personalize, request_deserializer=_tolerant(pb.PersonalizeRequest),
            response_serializer=pb.PersonalizeResponse.SerializeToString),
        "RecordEvents": grpc.unary_unary_rpc_method_handler(
            servicer.RecordEvents, request_deserializer=_tolerant(pb.RecordEventsRequest),
            response_serializer=pb.RecordEventsResponse.SerializeToString),
        "Explain": grpc.unary_unary_rpc_method_handler(
            servicer.Explain, request_deserializer=_tolerant(pb.ExplainRequest),
            response_serializer=pb.ExplainResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@dataclass
class Running:
    server: grpc.aio.Server
    origin: Origin
    port: int
    health: health.aio.HealthServicer


async def start_server(config: ServeConfig, clock: Clock | None = None, store=None, seed: int | None = None
                       ) -> Running:
    origin = Origin(config, clock, store, seed)
    if not origin.keys and not config.loopback:
        raise ValueError(f"listen {config.listen}: no api_keys configured; an open server may only listen on loopback")
    interceptors = [gateway.AuthInterceptor(origin.keys, open=not origin.keys)]
    if any(k.per_second for k in origin.keys.values()):
        interceptors.append(gateway.RateLimitInterceptor(TokenBucket(origin.redis), origin.keys))
    if not origin.keys:
        log.warning("serve: no api_keys configured: running OPEN on loopback %s", config.listen)
    server = grpc.aio.server(interceptors=interceptors)
    add_to_server(Servicer(origin), server)
    pb_grpc.add_EdgeSyncServicer_to_server(EdgeSyncServicer(origin.hub), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (pb.DESCRIPTOR.services_by_name["Personalization"].full_name,
             pb.DESCRIPTOR.services_by_name["EdgeSync"].full_name, reflection.SERVICE_NAME, health.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    if config.tls_cert:
        with open(config.tls_key, "rb") as k, open(config.tls_cert, "rb") as c:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        port = server.add_secure_port(config.listen, creds)
    else:
        port = server.add_insecure_port(config.listen)
    await origin.start()
    await server.start()
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if config.metrics_port:
        origin.metrics.serve(config.metrics_port)
    return Running(server, origin, port, health_servicer)


async def stop_server(running: Running, grace_s: float = 5.0) -> None:
    for name in ("", SERVICE):
        await running.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    running.origin.hub.close()  # open sync streams would hold the shutdown for the whole grace period
    await running.server.stop(grace_s)
    await running.origin.close()


async def until_signalled() -> None:
    """Freezes the startup objects out of the GC, then waits for SIGTERM or SIGINT.

    Startup leaves ~250k long-lived objects (modules, protobuf, ONNX, grpc); every full cycle
    collection walked them all, a ~140 ms stop of every request in flight about once per 200
    requests. Frozen, they are skipped: full collections take ~1 ms (benchmarks/serve_load.py)."""
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_forever(config: ServeConfig) -> None:
    running = await start_server(config)
    pacing = asyncio.create_task(pace_gc())  # the process's collector: not in ServerThread, which shares one
    print(f"pulserank serve: listening on {config.listen} (port {running.port}), model "
          f"{', '.join(f'{a}={p.version}' for a, p in running.origin.models.items())}, clock "
          f"{running.origin.clock.describe()}", flush=True)
    await until_signalled()
    print("pulserank serve: shutting down (grace 5 s)", flush=True)
    pacing.cancel()
    await stop_server(running)


class ServerThread:
    """An origin on its own event loop in a thread, for callers with plain blocking stubs (tests,
    benchmarks, the demo)."""

    def __init__(self, config: ServeConfig, clock: Clock | None = None, seed: int | None = 0) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running = self.call(start_server(config, clock, seed=seed))
        self.address = f"127.0.0.1:{self.running.port}"

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.call(stop_server(self.running, grace_s=1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

