"""The origin's side of edge sync (`pulserank.v1.EdgeSync`): a push channel to the edges.

`SyncHub` keeps, per user, what an edge needs to re-rank a cached list — the last 10 positive
items, the session key, the latest event time — from the events the origin accepts, plus the
latest bandit counts and model version. Each subscription gets a full snapshot first, then
deltas as users change, then a full snapshot every `full_every_s`, so an edge that missed
messages or reconnects is whole again within one period.

Full snapshots carry the users changed within `active_ms` (30 min by default, twice the longest
edge cache TTL: an edge has no cached list to re-rank for a user idle longer) and at most
`max_users` of them, least recently changed first.

Deltas are coalesced per subscription (a set of changed users, built from the current state when
sent), so a slow edge costs memory bounded by the number of users, never a growing queue, and a
burst of events of one user becomes one update. A full snapshot's body is built once and shared
by every subscription for `full_cache_s`; a subscription drops from its pending deltas only the
users the snapshot already holds at their current version.

Call `observe`, `set_bandits` and `set_model_version` on the event loop that serves the
subscriptions (the origin's grpc.aio loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from schemas import personalization_pb2 as pb
from schemas import personalization_pb2_grpc as pb_grpc
from schemas.clock import Clock
from schemas.events import EventType
from serving.context import POSITIVE

log = logging.getLogger(__name__)

RECENT_K = 10  # the edge ranker's `recent` width
DELTA_BATCH = 1000  # users per delta message
ACTIVE_MS = 30 * 60_000  # users idle longer leave full snapshots: an edge's cached lists expire within 15 min
_USERS_FIELD = pb.SyncMessage.DESCRIPTOR.fields_by_name["users"].number


def push_recent(recent: dict[str, int], item_id: str, ts_ms: int, k: int = RECENT_K) -> dict[str, int]:
    """`recent` (item → latest positive time) with one more positive, trimmed to the newest k."""
    if recent.get(item_id, -1) >= ts_ms:
        return recent
    recent[item_id] = ts_ms
    if len(recent) > k:
        keep = ordered_recent(recent)[:k]
        recent = {i: recent[i] for i in keep}
    return recent


def ordered_recent(recent: dict[str, int]) -> list[str]:
    """Item ids most recent first; ties by item id, descending, so every reader orders alike."""
    return [i for i, _ in sorted(recent.items(), key=lambda e: (e[1], e[0]), reverse=True)]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def _framed(field_number: int, payload: bytes) -> bytes:
    """One length-delimited field as protobuf puts it on the wire (messages concatenate by field)."""
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


@dataclass
class _User:
    recent: dict[str, int] = field(default_factory=dict)
    session_key: str = ""
    last_event_ms: int = 0
    as_of_ms: int = 0
    gen: int = 0  # the hub's generation when this user last changed
    frame: bytes | None = None  # this user's entry of a full snapshot, serialized, until the user changes


@dataclass(eq=False)  # hashed by identity: one per stream
class _Subscription:
    edge_id: str
    pending: dict[str, bool] = field(default_factory=dict)  # changed user → material since last sent
    wake: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _FullBody:
    gen: int
    built_at: float  # loop time
    message: pb.SyncMessage  # seq unset


class SyncHub:
    """Collects per-user context changes and builds full snapshots; fans messages out to subscribers."""

    def __init__(self, clock: Clock, full_every_s: float = 30.0, max_users: int = 100_000,
                 active_ms: int = ACTIVE_MS, full_cache_s: float | None = None) -> None:
        if full_every_s <= 0:
            raise ValueError(f"full_every_s: must be > 0, got {full_every_s}")
        if max_users < 1:
            raise ValueError(f"max_users: must be >= 1, got {max_users}")
        self.clock = clock
        self.full_every_s = float(full_every_s)
        self.max_users = max_users
        self.active_ms = active_ms
        self.full_cache_s = min(1.0, full_every_s / 10) if full_cache_s is None else full_cache_s
        self._users: OrderedDict[str, _User] = OrderedDict()  # least recently changed first
        self._bandits: dict[str, dict[str, tuple[float, float]]] = {}
        self._bandit_bytes: bytes | None = None
        self._model_version = ""
        self._subs: set[_Subscription] = set()
        self._gen = 0
        self._full: _FullBody | None = None
        self._closed = False
        self.sent = {"full": 0, "delta": 0}

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    @property
    def users(self) -> int:
        return len(self._users)

    def observe(self, user_id: str, item_id: str | None, etype: str, ts_ms: int, session_key: str = "") -> None:
        """One accepted event. Material (cached lists should go) = a new session key or a purchase."""
        if not user_id:
            return  # catalog events carry no user
        self._gen += 1
        u = self._users.get(user_id)
        if u is None:
            u = self._users[user_id] = _User()
            while len(self._users) > self.max_users:
                self._forget(next(iter(self._users)))
        else:
            self._users.move_to_end(user_id)
        newest = ts_ms >= u.last_event_ms
        material = etype == EventType.PURCHASE or bool(newest and session_key and session_key != u.session_key)
        if item_id and etype in POSITIVE:
            u.recent = push_recent(u.recent, item_id, ts_ms)
        if newest and session_key:
            u.session_key = session_key
        u.last_event_ms = max(u.last_event_ms, ts_ms)
        u.as_of_ms = self.clock.now_ms()
        u.gen, u.frame = self._gen, None
        for sub in self._subs:
            sub.pending[user_id] = sub.pending.get(user_id, False) or material
            sub.wake.set()

    def set_bandits(self, segments: dict[str, dict[str, tuple[float, float]]]) -> None:
        """The latest bandit counts (segment → item → (clicks, non-clicks)), for full snapshots.
        Refresh them at least once per full period: edges drop their local counts older than a
        snapshot's `as_of_ms`, so counts read long before it would briefly under-count."""
        self._bandits = {s: dict(rows) for s, rows in segments.items()}
        self._bandit_bytes = None
        self._gen += 1
        self._full = None  # never share a snapshot body with stale counts

    def set_model_version(self, version: str) -> None:
        self._model_version = version
        self._gen += 1
        self._full = None

    def close(self) -> None:
        """Ends every subscription's stream (the origin's graceful shutdown); edges reconnect."""
        self._closed = True
        for sub in self._subs:
            sub.wake.set()

    def user_update(self, user_id: str, material: bool = False) -> pb.UserContextUpdate | None:
        u = self._users.get(user_id)
        if u is None:
            return None
        return pb.UserContextUpdate(user_id=user_id, recent_item_ids=ordered_recent(u.recent),
                                    session_key=u.session_key, last_event_ms=u.last_event_ms, material=material,
                                    as_of_ms=u.as_of_ms)

    def _forget(self, user_id: str) -> None:
        del self._users[user_id]
        for sub in self._subs:
            sub.pending.pop(user_id, None)

    def _full_body(self, now: float) -> _FullBody:
        """Built from cached per-user bytes (only users changed since the last build are encoded
        again) and shared by subscriptions for `full_cache_s`."""
        body = self._full
        if body is not None and (body.gen == self._gen or now - body.built_at < self.full_cache_s):
            return body
        now_ms = self.clock.now_ms()
        while self._users and now_ms - next(iter(self._users.values())).as_of_ms > self.active_ms:
            self._forget(next(iter(self._users)))
        frames = []
        for uid, u in self._users.items():
            if u.frame is None:
                u.frame = _framed(_USERS_FIELD, self.user_update(uid).SerializeToString())
            frames.append(u.frame)
        if self._bandit_bytes is None:
            self._bandit_bytes = pb.SyncMessage(bandits=[
                pb.BanditSegment(segment=seg, items=[pb.BanditCounts(item_id=i, clicks=c, non_clicks=n)
                                                     for i, (c, n) in sorted(self._bandits[seg].items())])
                for seg in sorted(self._bandits)]).SerializeToString()
        head = pb.SyncMessage(full=True, as_of_ms=now_ms, model_version=self._model_version).SerializeToString()
        message = pb.SyncMessage.FromString(b"".join([head, self._bandit_bytes, *frames]))
        body = self._full = _FullBody(self._gen, now, message)
        return body

    def _take_full(self, sub: _Subscription, seq: int, now: float) -> pb.SyncMessage:
        body = self._full_body(now)
        for uid in [uid for uid in sub.pending if (u := self._users.get(uid)) is None or u.gen <= body.gen]:
            del sub.pending[uid]  # the snapshot holds this user's current state (or the user is gone)
        msg = pb.SyncMessage()
        msg.CopyFrom(body.message)
        msg.seq = seq
        return msg

    def _take_delta(self, sub: _Subscription, seq: int) -> pb.SyncMessage:
        msg = pb.SyncMessage(seq=seq, full=False, as_of_ms=self.clock.now_ms(), model_version=self._model_version)
        while sub.pending and len(msg.users) < DELTA_BATCH:
            uid = next(iter(sub.pending))
            material = sub.pending.pop(uid)
            if (update := self.user_update(uid, material)) is not None:
                msg.users.append(update)
        return msg

    async def subscribe(self, edge_id: str) -> AsyncIterator[pb.SyncMessage]:
        """First a full snapshot, then deltas as they come, a full snapshot every `full_every_s`;
        `seq` starts at 1 and increases by 1 per message. Ends when the hub closes."""
        loop = asyncio.get_running_loop()
        sub = _Subscription(edge_id)
        self._subs.add(sub)
        log.info("edge sync: %s subscribed (%d subscribers)", edge_id, len(self._subs))
        seq, next_full = 0, loop.time()
        try:
            while not self._closed:
                now = loop.time()
                if now >= next_full:
                    seq += 1
                    msg = self._take_full(sub, seq, now)
                    next_full = now + self.full_every_s
                    self.sent["full"] += 1
                    yield msg
                elif sub.pending:
                    seq += 1
                    msg = self._take_delta(sub, seq)
                    self.sent["delta"] += 1
                    yield msg
                else:
                    sub.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(sub.wake.wait(), next_full - now)
        finally:
            self._subs.discard(sub)
            log.info("edge sync: %s left after %d messages (%d subscribers)", edge_id, seq, len(self._subs))


class EdgeSyncServicer(pb_grpc.EdgeSyncServicer):
    """`EdgeSync.Subscribe` over a `SyncHub`; register with `pb_grpc.add_EdgeSyncServicer_to_server`."""

    def __init__(self, hub: SyncHub) -> None:
        self.hub = hub

    async def Subscribe(self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext
                        ) -> AsyncIterator[pb.SyncMessage]:
        edge_id = request.edge_id.strip()
        if not edge_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "edge_id: required")
        if len(edge_id) > 200:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "edge_id: longer than 200 characters")
        async for msg in self.hub.subscribe(edge_id):
            yield msg
