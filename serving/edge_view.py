"""The edge's side of edge sync: what one edge knows, and the client that keeps it current.

`EdgeView` holds, per user, the last 10 positive items, the session key and the latest event
time, plus the bandit counts per (segment, item), from two sources:

- the origin's `SyncMessage`s: a full snapshot replaces everything; a delta upserts users, the
  newest `as_of_ms` winning; a `seq` gap is noticed (`gaps`, `stale`) and healed by the next full;
- local events (`record_local`, `add_local_outcome`) that clients sent to this edge, which count
  at once — the edge does not wait for the origin to echo them back.

Local events stay as an overlay on the origin's view of the user until the origin's
`last_event_ms` for the user reaches their time (by then the origin has seen them, since the
edge forwards them); each overlay event is newer than everything the origin sent, so it goes in
front of the synced items. (An event the origin got elsewhere, later than a forwarded one still
in flight, can hide the forwarded one until its own delta arrives: a moment.)

Local bandit outcomes carry their time, bucketed by `local_bucket_ms`. A full snapshot's counts
were read by the origin at or before its `as_of_ms`, so a bucket is kept only when it starts
after that instant: an outcome is never counted twice (in the snapshot and locally); at most one
bucket's worth, plus what the origin's pipeline had not merged yet when it read, is briefly
missing until the next snapshot. Edge and origin clocks must roughly agree (NTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
from collections.abc import Callable, Sequence
from typing import NamedTuple

import grpc
import numpy as np

from schemas import keys
from schemas import personalization_pb2 as pb
from schemas import personalization_pb2_grpc as pb_grpc
from schemas.clock import WALL, Clock
from schemas.events import EventType
from serving.context import POSITIVE
from serving.edge_sync import RECENT_K

log = logging.getLogger(__name__)

LOCAL_PER_USER = 2 * RECENT_K  # overlay events kept per user (the newest)
THREAD_MIN_USERS = 2000  # full snapshots at least this large are prepared off the event loop


class _Synced(NamedTuple):
    recent: tuple[str, ...]
    session_key: str
    last_event_ms: int
    as_of_ms: int


class UserView(NamedTuple):
    recent: tuple[str, ...]  # most recent first, at most 10
    session_key: str
    last_event_ms: int | None


class _Local(NamedTuple):
    ts_ms: int
    item_id: str
    etype: str
    session_key: str


class CountTable:
    """(clicks, non_clicks) per (segment, item) in dense arrays, one row per item.

    A cache hit reads ~100 items in two segments; one index lookup and two fancy-index reads
    replace 400 dict reads and tuple-to-array conversions (~0.2 ms a hit)."""

    def __init__(self, capacity: int = 1024) -> None:
        self.cols: dict[str, int] = {}  # item → row; row 0 stays zero (an item without counts)
        self.rows: dict[str, np.ndarray] = {}  # segment → (capacity, 2)
        self.capacity = capacity

    @classmethod
    def of(cls, bandits: dict[str, dict[str, tuple[float, float]]]) -> CountTable:
        items = {i for counts in bandits.values() for i in counts}
        table = cls(max(1024, 2 * (len(items) + 1)))
        table.cols = {item: c for c, item in enumerate(sorted(items), start=1)}
        for seg, counts in bandits.items():
            arr = table.rows[seg] = np.zeros((table.capacity, 2))
            if counts:
                arr[[table.cols[i] for i in counts]] = list(counts.values())
        return table

    def add(self, segment: str, item: str, clicks: float, non_clicks: float) -> None:
        col = self.cols.get(item)
        if col is None:
            col = self.cols[item] = len(self.cols) + 1
            if col >= self.capacity:
                self.capacity *= 2
                for seg, arr in self.rows.items():
                    self.rows[seg] = np.zeros((self.capacity, 2))
                    self.rows[seg][: len(arr)] = arr
        arr = self.rows.get(segment)
        if arr is None:
            arr = self.rows[segment] = np.zeros((self.capacity, 2))
        arr[col, 0] += clicks
        arr[col, 1] += non_clicks

    def lookup(self, segments: Sequence[str], items: Sequence[str]) -> list[np.ndarray]:
        """Per segment, (len(items), 2) counts, each at least 0."""
        idx = np.array([self.cols.get(i, 0) for i in items], dtype=np.intp)
        none = np.zeros((len(idx), 2))
        return [np.maximum(self.rows[s][idx], 0.0) if s in self.rows else none for s in segments]


class PreparedFull(NamedTuple):
    """A full snapshot decoded (the costly part, safe in a worker thread), ready to swap in."""

    msg: pb.SyncMessage
    synced: dict[str, _Synced]
    bandits: dict[str, dict[str, tuple[float, float]]]
    table: CountTable
    material: set[str]


def _overlay(synced: _Synced | None, local: Sequence[_Local]) -> UserView:
    """The origin's view of a user with the edge's newer local events applied, oldest first."""
    recent = list(synced.recent) if synced else []
    session = synced.session_key if synced else ""
    last = synced.last_event_ms if synced else None
    for e in sorted(local, key=lambda e: (e.ts_ms, e.item_id)):
        if e.item_id and e.etype in POSITIVE:
            if e.item_id in recent:
                recent.remove(e.item_id)
            recent.insert(0, e.item_id)
        if e.session_key and (last is None or e.ts_ms >= last):
            session = e.session_key
        last = e.ts_ms if last is None else max(last, e.ts_ms)
    return UserView(tuple(recent[:RECENT_K]), session, last)


def _synced(u: pb.UserContextUpdate) -> _Synced:
    return _Synced(tuple(u.recent_item_ids[:RECENT_K]), u.session_key, u.last_event_ms, u.as_of_ms)


class EdgeView:
    """What one edge knows: per-user recent items and session, bandit counts; applied from
    SyncMessages and local events."""

    def __init__(self, clock: Clock = WALL, max_users: int = 100_000, local_bucket_ms: int = 100,
                 on_material: Callable[[str], None] | None = None) -> None:
        if local_bucket_ms < 1:
            raise ValueError(f"local_bucket_ms: must be >= 1, got {local_bucket_ms}")
        self.clock = clock
        self.max_users = max_users
        self.local_bucket_ms = local_bucket_ms
        self.on_material = on_material  # e.g. the personalized cache's invalidation
        self._synced: dict[str, _Synced] = {}  # the origin's view, least recently updated first
        self._local: dict[str, list[_Local]] = {}  # local events newer than the origin's view
        self._overlaid: dict[str, UserView] = {}  # the effective view of the users in `_local`
        self._bandits: dict[str, dict[str, tuple[float, float]]] = {}
        self._local_buckets: dict[tuple[str, str], list[list[float]]] = {}  # [bucket start, Δclicks, Δnon-clicks]
        self._local_totals: dict[tuple[str, str], tuple[float, float]] = {}
        self._table = CountTable()  # snapshot + local totals, as the hit path reads them
        self.model_version = ""
        self.seq: int | None = None
        self.gaps = 0  # times a seq gap was noticed
        self.stale = False  # a gap since the last full snapshot
        self.last_full_ms: int | None = None  # edge clock when the last full snapshot was applied
        self.snapshot_as_of_ms: int | None = None  # origin clock of that snapshot
        self.applied = {"full": 0, "delta": 0}

    # -- from the origin -------------------------------------------------------------------------

    def apply(self, msg: pb.SyncMessage) -> None:
        """Full: replace users and bandits; delta: upsert users (newest as_of wins); remember seq, notice gaps."""
        self._note_seq(msg)
        if msg.full:
            self.commit_full(self.prepare_full(msg))
        else:
            self._apply_delta(msg)

    async def apply_async(self, msg: pb.SyncMessage) -> None:
        """`apply`, decoding a large full snapshot in a worker thread so the event loop keeps
        serving meanwhile (local events recorded during it are kept)."""
        if not (msg.full and len(msg.users) >= THREAD_MIN_USERS):
            self.apply(msg)
            return
        self._note_seq(msg)
        self.commit_full(await asyncio.to_thread(self.prepare_full, msg))

    def _note_seq(self, msg: pb.SyncMessage) -> None:
        if self.seq is not None and msg.seq != 1 and msg.seq != self.seq + 1:
            self.gaps += 1
            self.stale = True
            log.warning("edge sync: seq %d after %d: missed messages until the next full snapshot", msg.seq, self.seq)
        self.seq = msg.seq

    def prepare_full(self, msg: pb.SyncMessage) -> PreparedFull:
        users = msg.users
        if len(users) > self.max_users:
            users = users[len(users) - self.max_users:]  # the hub sends the least recently changed first
        synced = {u.user_id: _synced(u) for u in users}
        bandits = {seg.segment: {c.item_id: (c.clicks, c.non_clicks) for c in seg.items} for seg in msg.bandits}
        material = {u.user_id for u in users if u.material}
        for uid, s in synced.items():  # a session change missed with the deltas is still material
            old = self._view(uid)
            if old is not None and old.session_key and old.session_key != s.session_key:
                material.add(uid)
        return PreparedFull(msg, synced, bandits, CountTable.of(bandits), material)

    def commit_full(self, p: PreparedFull) -> None:
        self._synced, self._bandits = p.synced, p.bandits
        if p.msg.model_version:
            self.model_version = p.msg.model_version
        self._drop_local_counts(p.msg.as_of_ms)
        self._table = p.table
        for (seg, item), (c, n) in self._local_totals.items():
            self._table.add(seg, item, c, n)
        for uid in list(self._local):
            self._refresh(uid)
        self.stale = False
        self.snapshot_as_of_ms = p.msg.as_of_ms
        self.last_full_ms = self.clock.now_ms()
        self.applied["full"] += 1
        for uid in p.material:
            self._material(uid)

    def _apply_delta(self, msg: pb.SyncMessage) -> None:
        if msg.model_version:
            self.model_version = msg.model_version
        for u in msg.users:
            old = self._synced.get(u.user_id)
            if old is not None and old.as_of_ms > u.as_of_ms:
                continue  # an older view than the one held
            before = self._view(u.user_id)
            self._synced.pop(u.user_id, None)
            self._synced[u.user_id] = _synced(u)
            view = self._refresh(u.user_id) if u.user_id in self._local else self._synced[u.user_id]
            if u.material or (before is not None and before.session_key and before.session_key != view.session_key):
                self._material(u.user_id)
        self._bound()
        self.applied["delta"] += 1

    # -- from clients of this edge ---------------------------------------------------------------

    def record_local(self, user_id: str, item_id: str, etype: str, ts_ms: int, session_key: str = "") -> bool:
        """An event a client sent to this edge: the user's view moves at once. True when material
        (a purchase, or a session key newer than the one known)."""
        if not user_id:
            raise ValueError("user_id: required")
        before = self._view(user_id)
        events = self._local.pop(user_id, [])
        self._local[user_id] = events  # most recently touched last
        events.append(_Local(int(ts_ms), item_id or "", etype, session_key))
        if len(events) > LOCAL_PER_USER:
            events.sort(key=lambda e: e.ts_ms)
            del events[:-LOCAL_PER_USER]
        view = self._refresh(user_id)
        self._bound()
        material = etype == EventType.PURCHASE or bool(
            session_key and view.session_key == session_key and (before is None or before.session_key != session_key))
        if material:
            self._material(user_id)
        return material

    def add_local_outcome(self, segment: str, item_id: str, clicked: bool, ts_ms: int | None = None) -> None:
        """An outcome this edge saw, counted at once in `segment` and the global row, as the origin's
        bandit counts them (transforms/observe.py): clicked=False is an impression (a non-click until
        a click converts it); clicked=True converts one (+1 click, −1 non-click)."""
        ts = self.clock.now_ms() if ts_ms is None else int(ts_ms)
        delta = (1.0, -1.0) if clicked else (0.0, 1.0)
        start = ts - ts % self.local_bucket_ms
        for seg in {segment, keys.GLOBAL_SEGMENT}:
            key = (seg, item_id)
            buckets = self._local_buckets.setdefault(key, [])
            if buckets and buckets[-1][0] == start:
                buckets[-1][1] += delta[0]
                buckets[-1][2] += delta[1]
            else:
                buckets.append([start, *delta])
            c, n = self._local_totals.get(key, (0.0, 0.0))
            self._local_totals[key] = (c + delta[0], n + delta[1])
            self._table.add(seg, item_id, *delta)

    # -- reads -----------------------------------------------------------------------------------

    def recent(self, user_id: str) -> list[str]:
        view = self._view(user_id)
        return list(view.recent) if view else []

    def session_key(self, user_id: str) -> str:
        view = self._view(user_id)
        return view.session_key if view else ""

    def last_event_ms(self, user_id: str) -> int | None:
        view = self._view(user_id)
        return view.last_event_ms if view else None

    def knows(self, user_id: str) -> bool:
        return user_id in self._synced or user_id in self._overlaid

    @property
    def users(self) -> int:
        return len(self._synced) + sum(1 for u in self._overlaid if u not in self._synced)

    def counts(self, segment: str, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(clicks, non_clicks) per item: the last snapshot plus this edge's outcomes since it."""
        (c,) = self._table.lookup([segment], item_ids)
        return c[:, 0].copy(), c[:, 1].copy()

    def bandit_counts(self, segment: str, item_ids: Sequence[str]) -> tuple[np.ndarray, ...]:
        """`counts` in `segment` and in the global row at once: (clicks, non_clicks, global
        clicks, global non_clicks)."""
        seg, glob = self._table.lookup([segment, keys.GLOBAL_SEGMENT], item_ids)
        return seg[:, 0], seg[:, 1], glob[:, 0], glob[:, 1]

    def digest(self) -> str:
        """A hash of the effective view (users, bandit counts with local outcomes, model version),
        independent of when and how it was received: two edges fed the same events agree."""
        rows = {(s, i) for s, items in self._bandits.items() for i in items} | set(self._local_totals)
        by_seg: dict[str, list[str]] = {}
        for s, i in rows:
            by_seg.setdefault(s, []).append(i)
        bandits = {}
        for s, items in sorted(by_seg.items()):
            items.sort()
            c, n = self.counts(s, items)
            bandits[s] = [[i, round(float(a), 9), round(float(b), 9)] for i, a, b in zip(items, c, n, strict=True)]
        users = []
        for uid in sorted(set(self._synced) | set(self._overlaid)):
            v = self._view(uid)
            users.append([uid, list(v.recent), v.session_key, v.last_event_ms])
        doc = json.dumps({"users": users, "bandits": bandits, "model": self.model_version}, separators=(",", ":"))
        return hashlib.sha256(doc.encode()).hexdigest()

    # -- internals -------------------------------------------------------------------------------

    def _view(self, user_id: str) -> UserView | _Synced | None:
        view = self._overlaid.get(user_id)
        return view if view is not None else self._synced.get(user_id)

    def _refresh(self, user_id: str) -> UserView | _Synced | None:
        """Re-applies the user's local events still newer than the origin's view of the user."""
        synced = self._synced.get(user_id)
        local = self._local.get(user_id, [])
        if synced is not None:
            local = [e for e in local if e.ts_ms > synced.last_event_ms]  # the origin has the rest by now
        if local:
            self._local[user_id] = local
            view = self._overlaid[user_id] = _overlay(synced, local)
            return view
        self._local.pop(user_id, None)
        self._overlaid.pop(user_id, None)
        return synced

    def _bound(self) -> None:
        while len(self._synced) > self.max_users:
            self._synced.pop(next(iter(self._synced)))
        while len(self._local) > self.max_users:
            uid = next(iter(self._local))
            del self._local[uid]
            self._overlaid.pop(uid, None)

    def _drop_local_counts(self, as_of_ms: int) -> None:
        """Keeps only local outcomes in buckets that start after the snapshot's instant."""
        for key in list(self._local_buckets):
            kept = [b for b in self._local_buckets[key] if b[0] > as_of_ms]
            if kept:
                self._local_buckets[key] = kept
                self._local_totals[key] = (sum(b[1] for b in kept), sum(b[2] for b in kept))
            else:
                del self._local_buckets[key]
                self._local_totals.pop(key, None)

    def _material(self, user_id: str) -> None:
        if self.on_material is not None:
            self.on_material(user_id)


class SyncClient:
    """Keeps an EdgeView in sync over gRPC: subscribes, applies messages, reconnects with backoff when the stream drops.

    Targets are tried in turn (a drop moves to the next origin). Each attempt opens a fresh
    channel, so recovery is bounded by this client's backoff (`max_backoff_s`; keep it below the
    full-snapshot period) rather than gRPC's own reconnect backoff; the first message of every
    subscription is a full snapshot, so the view is whole again as soon as the stream is back.
    A stream silent for `idle_timeout_s` (several snapshot periods) is treated as dropped: a
    half-open TCP connection never ends a stream by itself.
    """

    def __init__(self, targets: Sequence[str], view: EdgeView, edge_id: str, *, backoff_s: float = 0.05,
                 max_backoff_s: float = 2.0, idle_timeout_s: float = 100.0,
                 max_message_bytes: int = 256 * 1024 * 1024) -> None:
        if not targets:
            raise ValueError("targets: at least one origin address required")
        if not edge_id:
            raise ValueError("edge_id: required")
        self.targets = list(targets)
        self.view = view
        self.edge_id = edge_id
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.idle_timeout_s = idle_timeout_s
        # a private subchannel pool: a fresh channel must not inherit a shared subchannel's reconnect backoff
        self.options = [("grpc.max_receive_message_length", max_message_bytes), ("grpc.enable_retries", 0),
                        ("grpc.use_local_subchannel_pool", 1)]
        self.connected = False
        self.target: str | None = None
        self.connects = 0  # streams that delivered at least one message
        self.drops = 0
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._rng = random.Random()

    @property
    def last_full_ms(self) -> int | None:
        return self.view.last_full_ms

    async def run(self) -> None:
        """Runs until `stop`: subscribe, apply, and on any drop back off and try the next target."""
        self._task = asyncio.current_task()
        attempt, index = 0, 0
        while not self._stopping:
            self.target = self.targets[index % len(self.targets)]
            channel = grpc.aio.insecure_channel(self.target, options=self.options)
            try:
                call = pb_grpc.EdgeSyncStub(channel).Subscribe(pb.SubscribeRequest(edge_id=self.edge_id))
                while True:
                    msg = await asyncio.wait_for(call.read(), self.idle_timeout_s)
                    if msg is grpc.aio.EOF:
                        log.info("edge sync: %s ended the stream", self.target)
                        break
                    await self.view.apply_async(msg)
                    if not self.connected:
                        self.connected, attempt = True, 0
                        self.connects += 1
                        log.info("edge sync: %s subscribed to %s", self.edge_id, self.target)
            except grpc.aio.AioRpcError as exc:
                log.info("edge sync: %s: %s %s", self.target, exc.code().name, exc.details())
            except TimeoutError:
                log.warning("edge sync: %s silent for %.0f s; reconnecting", self.target, self.idle_timeout_s)
            except Exception:  # a message the view could not apply: resubscribe, the first full heals it
                log.exception("edge sync: %s: applying a message failed; resubscribing", self.target)
            finally:
                if self.connected:
                    self.drops += 1
                self.connected = False
                await channel.close()
            index += 1
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * self._rng.uniform(0.5, 1.0)
            attempt += 1
            await asyncio.sleep(delay)

    async def stop(self) -> None:
        self._stopping = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
