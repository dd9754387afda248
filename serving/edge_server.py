"""`pulserank edge`: the edge tier — the same `Personalization` API as the origin, close to clients.

An edge holds no connection to the central Redis. It answers repeat requests from its
personalized cache (the origin's ranked pool for a user, context type and segment), re-scored by
the small ONNX edge ranker with the freshest context it has (the user's last 10 interactions,
from the origin's push channel and from events clients sent to this edge) and re-sampled by the
edge bandit (the origin's Thompson sampling over synced counts plus local ones). A cache miss, a
complex request (explain, filters, a caller's candidate list) or a user it knows nothing about
goes to an origin with a deadline; origins are tried in turn (client-side balancing, the next
one on failure). On a miss the origin's own answer is passed back (the origin logged its
impressions) and the exploration pool it drew from (`include_pool`) is cached. When every origin
is down, a stale cached list is served and flagged `degraded`; a user with nothing cached gets
UNAVAILABLE within the deadline.

Events sent to an edge update its view at once (a purchase or a new session invalidates the
user's cached lists) and are forwarded to an origin; the impressions of answers from the cache
carry propensities exactly like the origin's and are forwarded the same way.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from schemas import personalization_pb2 as pb
from schemas import personalization_pb2_grpc as pb_grpc
from schemas.clock import Clock, clock_from
from schemas.events import to_json_line
from serving import edge_bandit
from serving.edge_cache import CachedList, PersonalizedCache, TtlPolicy, cache_key
from serving.edge_scorer import EdgeScorer
from serving.edge_view import EdgeView, SyncClient
from serving.events import DEFAULT_MAX_BATCH, BatchError, intake_response, validate_batch
from serving.gc_pacing import pace_gc
from serving.personalize import has_filters
from serving.server import (
    SERVICE,
    BadRequest,
    Malformed,
    add_to_server,
    session_of,
    until_signalled,
    validate_personalize,
)

log = logging.getLogger("pulserank.edge")

DEFAULT_SEGMENT = "global"
FORWARD_BATCH = DEFAULT_MAX_BATCH  # events (a slate's items counted each) per forwarding call: an origin's cap
ORIGIN_ERRORS = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
                 grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED)


@dataclass
class EdgeConfig:
    origins: Sequence[str]
    registry: str
    listen: str = "127.0.0.1:50061"
    edge_id: str = "edge-1"
    cache_bytes: int = 256 * 1024 * 1024
    ttl: TtlPolicy = field(default_factory=TtlPolicy)
    # None: n0 calibrated to `exploration_share` on the pools this edge re-ranks (until it has
    # `calibrate_after` of them, the default calibrated on a stated distribution); a given policy is kept
    exploration: edge_bandit.EdgeExploration | None = None
    exploration_share: float = edge_bandit.DEFAULT_TARGET_SHARE
    calibrate_after: int = 64
    recalibrate_s: float = 600.0
    origin_deadline_s: float = 0.2
    sync_backoff_s: float = 2.0
    as_of: str | None = None


@dataclass
class EdgeCounters:
    requests: int = 0
    hits: int = 0
    misses: int = 0
    origin_calls: int = 0
    degraded: int = 0
    unavailable: int = 0
    forwarded_events: int = 0
    refused_events: int = 0  # forwarded, refused whole by an origin (INVALID_ARGUMENT): logged, not retried


def _complex(req: pb.PersonalizeRequest) -> bool:
    return bool(req.explain or req.candidate_item_ids or has_filters(req.filters))


class Origins:
    """Client-side balancing over the origins: round robin, the next one on failure."""

    def __init__(self, targets: Sequence[str], deadline_s: float) -> None:
        if not targets:
            raise ValueError("origins: at least one origin address is required")
        self.channels = [grpc.aio.insecure_channel(t) for t in targets]
        self.stubs = [pb_grpc.PersonalizationStub(c) for c in self.channels]
        self.deadline_s = deadline_s
        self._next = itertools.cycle(range(len(self.stubs)))

    async def call(self, method: str, request, deadline_s: float | None = None):
        """The first origin that answers; raises the last error when none does in time."""
        end = time.monotonic() + (deadline_s or self.deadline_s)
        last: grpc.aio.AioRpcError | None = None
        for _ in range(len(self.stubs)):
            left = end - time.monotonic()
            if left <= 0:
                break
            stub = self.stubs[next(self._next)]
            try:
                return await getattr(stub, method)(request, timeout=left)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in ORIGIN_ERRORS:
                    raise
                last = exc
        if last is None:
            raise TimeoutError("origin deadline spent")
        raise last

    async def close(self) -> None:
        for c in self.channels:
            await c.close()


class Edge:
    def __init__(self, config: EdgeConfig, clock: Clock | None = None, seed: int | None = None) -> None:
        self.config = config
        self.clock = clock or clock_from(config.as_of)
        self.cache = PersonalizedCache(config.cache_bytes, config.ttl)
        # a new session or a purchase (synced or local) drops the user's cached lists
        self.view = EdgeView(self.clock, on_material=self.cache.invalidate_user)
        self.sync = SyncClient(list(config.origins), self.view, config.edge_id, max_backoff_s=config.sync_backoff_s)
        self.origins = Origins(config.origins, config.origin_deadline_s)
        self.scorer = EdgeScorer(config.registry)
        self.exploration = config.exploration or edge_bandit.DEFAULT_EXPLORATION
        self.calibrator = edge_bandit.ShareCalibrator(config.exploration_share, config.calibrate_after,
                                                      config.recalibrate_s)
        self.rng = np.random.default_rng(seed)
        self.counters = EdgeCounters()
        self._tasks: list[asyncio.Task] = []
        self._outbox: list[pb.Event] = []  # client events, forwarded as they came
        self._slates: list[pb.Slate] = []  # the shown lists of answers from the cache, one message each

    async def start(self) -> None:
        await asyncio.to_thread(self.scorer.refresh)
        self._tasks = [asyncio.create_task(self.sync.run()), asyncio.create_task(self._background())]

    async def _background(self) -> None:
        # impressions leave every 0.1 s: a second's worth at once (~500 messages to build) would
        # hold the loop for a millisecond or two in front of whichever request came next
        for tick in itertools.count(1):
            await asyncio.sleep(0.1)
            await self.flush_events()
            if tick % 10:
                continue
            try:
                await asyncio.to_thread(self.scorer.refresh)
            except Exception as exc:
                log.warning("edge scorer refresh failed: %s", exc)
            if self._calibration_due():
                await asyncio.to_thread(self.calibrate_exploration)

    @property
    def calibration(self) -> tuple[str, float] | None:
        """(edge ranker version, monotonic time) of the last calibration of n0."""
        return self.calibrator.last

    def _calibration_due(self) -> bool:
        return self.config.exploration is None and self.calibrator.due(self.scorer.version)

    def calibrate_exploration(self) -> edge_bandit.EdgeExploration | None:
        """n0 for the configured share on the pools this edge re-ranked lately (blocking: the server
        runs it in a thread)."""
        def apply(found: edge_bandit.EdgeExploration) -> None:
            log.info("edge bandit: n0 %g → %g, ε %g (a %.0f %% share)", self.exploration.n0, found.n0,
                     found.epsilon, 100 * self.config.exploration_share)
            self.exploration = found

        return self.calibrator.run(self.scorer.version or "", apply)

    async def flush_events(self) -> None:
        """Forwards what is waiting, in batches an origin takes (events and the slates' items within
        its cap); on failure the rest waits for the next flush."""
        while self._outbox or self._slates:
            events, slates, size = self._outbox[:FORWARD_BATCH], [], 0
            for slate in self._slates:
                if size + len(events) + len(slate.item_ids) > FORWARD_BATCH and (slates or events):
                    break
                slates.append(slate)
                size += len(slate.item_ids)
            self._outbox, self._slates = self._outbox[len(events):], self._slates[len(slates):]
            try:
                await self.origins.call("RecordEvents", pb.RecordEventsRequest(events=events, slates=slates), 2.0)
                self.counters.forwarded_events += len(events) + size
            except (grpc.aio.AioRpcError, TimeoutError) as exc:
                if not (isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.INVALID_ARGUMENT):
                    self._outbox, self._slates = events + self._outbox, slates + self._slates
                    return
                log.error("an origin refused %d forwarded events: %s", len(events) + size, exc.details())
                self.counters.refused_events += len(events) + size

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self.sync.stop()
        await self.origins.close()

    # -- serving -----------------------------------------------------------------------------------

    def serve_cached(self, req: pb.PersonalizeRequest, cached: CachedList, segment: str) -> pb.PersonalizeResponse:
        """Re-score with the edge ranker and the freshest context, then the edge bandit."""
        recent = self.view.recent(req.user_id)
        items = list(cached.items)
        origin = np.asarray(cached.scores, np.float32)
        p = self.scorer.score(recent, items, origin) if self.scorer.version else origin
        clicks, non_clicks, g_clicks, g_non = self.view.bandit_counts(segment, items)
        none = (g_clicks == 0) & (g_non == 0)  # no global evidence: the bare prior, as the origin does
        g_clicks, g_non = np.where(none, np.nan, g_clicks), np.where(none, np.nan, g_non)
        n = min(req.n, len(items))
        prob = np.clip(p, 0, 1).astype(np.float64)
        if not req.disable_exploration:
            self.calibrator.observe(prob, n, clicks, non_clicks, g_clicks, g_non)
        slate = edge_bandit.edge_slate(prob, clicks, non_clicks, g_clicks, g_non, n, self.rng, self.exploration,
                                       explore=not req.disable_exploration)
        source = pb.SOURCE_EDGE_SCORER if self.scorer.version else pb.SOURCE_EDGE_CACHE
        resp = pb.PersonalizeResponse(request_id=uuid.uuid4().hex, model_version=cached.model_version,
                                      variant=cached.variant, source=source)
        for pos, i in enumerate(slate.order):
            resp.items.add(item_id=items[int(i)], score=float(p[int(i)]), position=pos,
                           propensity=float(slate.propensity[pos]), explored=bool(slate.explored[pos]))
        return resp

    async def personalize(self, req: pb.PersonalizeRequest) -> pb.PersonalizeResponse:
        c = self.counters
        c.requests += 1
        now = self.clock.now_ms()
        segment = req.context.segment or DEFAULT_SEGMENT
        key = cache_key(req.user_id, req.context.surface, segment)
        complex_request = _complex(req)
        if not complex_request:
            cached = self.cache.get(key, now, self.view.session_key(req.user_id))
            if cached is not None:
                c.hits += 1
                resp = self.serve_cached(req, cached, segment)
                # the push channel is the edge's sign of life from the origins: without it the
                # cached list may be stale, and the answer says so
                resp.degraded = not self.sync.connected
                c.degraded += int(resp.degraded)
                # logged on the loop's next turn, while gRPC sends the answer; still before any
                # later request is handled, so the local counts are never behind a request
                asyncio.get_running_loop().call_soon(self._log_impressions, req, resp, segment)
                return resp
        c.misses += 1
        try:
            c.origin_calls += 1
            if complex_request:
                return await self.origins.call("Personalize", req)
            # the origin answers the request itself (its slate, its impressions) and hands over the
            # pool it drew from, so a miss costs one origin answer plus the hop
            answer = await self.origins.call("Personalize", _with_pool(req))
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            stale = None if complex_request else self.cache.get_stale(key)
            if stale is None:
                c.unavailable += 1
                why = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                raise OriginsDown(f"no origin answered within {self.config.origin_deadline_s:g}s and nothing is "
                                  f"cached for this user ({why})") from None
            c.degraded += 1
            resp = self.serve_cached(req, stale, segment)
            resp.degraded = True
            return resp
        if answer.pool and not answer.degraded:  # a degraded answer is the origin's own fallback
            self.cache.put(key, CachedList(
                tuple(i.item_id for i in answer.pool), tuple(i.score for i in answer.pool), answer.model_version,
                answer.variant, now, now + self.config.ttl.ttl_ms(self.view.last_event_ms(req.user_id), now),
                self.view.session_key(req.user_id)))
        if not req.include_pool:
            answer.ClearField("pool")
        return answer

    def _log_impressions(self, req, resp: pb.PersonalizeResponse, segment: str) -> None:
        """The shown list as one `Slate` (the origin expands and validates its impressions, with the
        event ids it gives its own), and each item counted shown at once for the edge bandit."""
        now = self.clock.now_ms()
        items = [i.item_id for i in resp.items]
        for item in items:
            self.view.add_local_outcome(segment, item, clicked=False, ts_ms=now)
        self._slates.append(pb.Slate(
            request_id=resp.request_id, user_id=req.user_id, ts_ms=now, variant=resp.variant,
            context=pb.Context(segment=segment), item_ids=items, propensities=[i.propensity for i in resp.items]))

    def record(self, events) -> None:
        """Accepted client events: the view at once (the view's hook invalidates cached lists on a
        material change), local click counts for the edge bandit, then forwarded to an origin."""
        for e in events:
            if e.user_id and e.item_id:
                self.view.record_local(e.user_id, e.item_id, e.type.value, e.ts, session_of(e))
                if e.type.value == "click":
                    self.view.add_local_outcome(e.segment, e.item_id, clicked=True, ts_ms=e.ts)
        self._outbox.extend(_to_proto(e) for e in events)


def _with_pool(req: pb.PersonalizeRequest) -> pb.PersonalizeRequest:
    asked = pb.PersonalizeRequest()
    asked.CopyFrom(req)
    asked.include_pool = True
    return asked


class OriginsDown(RuntimeError):
    pass


def _to_proto(event) -> pb.Event:
    """An accepted contract event back to the wire message, to forward it to an origin."""
    d = json.loads(to_json_line(event))
    d.pop("ts")
    attrs = d.get("attributes")
    if attrs:
        if "created_at" in attrs:
            attrs["created_at_rfc3339"] = attrs.pop("created_at")
        if "vectors" in attrs:
            attrs["vectors"] = {k: {"values": v} for k, v in attrs["vectors"].items()}
    msg = json_format.ParseDict(d, pb.Event(), ignore_unknown_fields=True)
    msg.ts_ms = event.ts
    return msg


class EdgeServicer:
    def __init__(self, edge: Edge) -> None:
        self.edge = edge

    async def Personalize(self, req, context):
        if isinstance(req, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: {req.error}")
        try:
            validate_personalize(req, set())
        except BadRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            return await self.edge.personalize(req)
        except OriginsDown as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except grpc.aio.AioRpcError as exc:  # an origin's own refusal (e.g. INVALID_ARGUMENT) passes through
            await context.abort(exc.code(), exc.details() or "")

    async def RecordEvents(self, req, context):
        if isinstance(req, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: {req.error}")
        try:
            intake = validate_batch(req.events, slates=req.slates)
        except BatchError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc.field}: {exc.reason}")
        self.edge.record(intake.accepted)
        asyncio.create_task(self.edge.flush_events())
        return intake_response(intake)

    async def Explain(self, req, context):
        if isinstance(req, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: {req.error}")
        try:
            return await self.edge.origins.call("Explain", req, 1.0)
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else grpc.StatusCode.UNAVAILABLE
            await context.abort(code, "explanations come from an origin: " + (
                exc.details() if isinstance(exc, grpc.aio.AioRpcError) else "no origin answered"))


@dataclass
class RunningEdge:
    server: grpc.aio.Server
    edge: Edge
    port: int
    health: object


async def start_edge(config: EdgeConfig, clock: Clock | None = None, seed: int | None = None) -> RunningEdge:
    edge = Edge(config, clock, seed)
    server = grpc.aio.server()
    add_to_server(EdgeServicer(edge), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE, reflection.SERVICE_NAME, health.SERVICE_NAME), server)
    port = server.add_insecure_port(config.listen)
    await edge.start()
    await server.start()
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningEdge(server, edge, port, health_servicer)


async def stop_edge(running: RunningEdge, grace_s: float = 2.0) -> None:
    for name in ("", SERVICE):
        await running.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await running.server.stop(grace_s)
    await running.edge.flush_events()
    await running.edge.close()


async def serve_edge_forever(origins: Sequence[str], registry: str, listen: str, edge_id: str, cache_mib: int,
                             as_of: str | None = None,
                             exploration_share: float = edge_bandit.DEFAULT_TARGET_SHARE) -> None:
    if not 0.0 < exploration_share < 1.0:
        raise ValueError(f"exploration share: expected a share in (0, 1), got {exploration_share:g}")
    config = EdgeConfig(origins=list(origins), registry=registry, listen=listen, edge_id=edge_id,
                        cache_bytes=cache_mib * 1024 * 1024, as_of=as_of, exploration_share=exploration_share)
    running = await start_edge(config)
    pacing = asyncio.create_task(pace_gc())
    print(f"pulserank edge: listening on {listen} (port {running.port}) in front of {', '.join(origins)}; edge "
          f"ranker {running.edge.scorer.version}", flush=True)
    await until_signalled()
    pacing.cancel()
    await stop_edge(running)
