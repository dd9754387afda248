"""The online feature store in Redis: idempotent merges of summaries, and the readers.

Every write is one summary merged into one key by a Lua script (`stores/lua/`), guarded by the
summary's id: a retried bundle or a re-run replay finds the guard and changes nothing. Guards
expire after `guard_ttl_s` (wall time: they protect against retries, not history), which
bounds their memory; `guard_stats` reports it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis

from schemas import keys
from schemas.clock import Clock, default_clock
from schemas.features import FeatureConfig
from stores.redis_client import is_cluster
from transforms.summaries import decay, recent, sessions, windows
from transforms.summaries.decay import Decayed

_LUA = Path(__file__).with_name("lua")
DEFAULT_GUARD_TTL_S = 7 * 86_400


@dataclass(frozen=True, slots=True)
class Write:
    """One summary to merge into one key. `kind` names the merge (and its Lua script)."""

    kind: str  # counts | recent | decayed | trending | sessions | item
    key: str
    summary_id: str
    payload: Any


@dataclass
class ApplyResult:
    merged: int = 0
    skipped: int = 0  # guarded: this summary was merged before
    # (key, field) → its value now: after the merge, or as stored when the guard skipped it (so a
    # re-run after a crash between merge and vector upsert still upserts).
    decayed: dict[tuple[str, str], Decayed] | None = None


def _fmt(x: float) -> str:
    return repr(float(x))


def encode_decayed(d: Decayed) -> str:
    return f"{d.landmark_ms};" + ",".join(map(repr, d.sums.tolist()))  # tolist: Python floats, as _fmt gives


def decode_decayed(raw: bytes | str) -> Decayed:
    text = raw.decode() if isinstance(raw, bytes) else raw
    landmark, _, sums = text.partition(";")
    return Decayed(int(landmark), np.array([float(x) for x in sums.split(",")], dtype=np.float64))


def _session_json(s: sessions.Session) -> str:
    return json.dumps([s.start, s.end, s.count, s.last_ts, s.last_event, s.surface, s.device],
                      separators=(",", ":"), ensure_ascii=False)


def _session(raw: bytes | str) -> sessions.Session:
    return sessions.Session(*json.loads(raw))


class FeatureStore:
    """Merges and reads features in one Redis; every write path goes through `apply`."""

    def __init__(self, client: redis.Redis, clock: Clock | None = None, guard_ttl_s: int = DEFAULT_GUARD_TTL_S):
        self.client = client
        self.clock = clock or default_clock()
        self.guard_ttl_s = guard_ttl_s
        self._scripts = {
            name: client.register_script((_LUA / f"{name}.lua").read_text())
            for name in ("merge_counts", "merge_recent", "merge_decayed", "merge_trending", "merge_sessions",
                         "upsert_item")
        }
        self._cluster = is_cluster(client)

    # -- writes ---------------------------------------------------------------------------------

    def apply(self, writes: Sequence[Write]) -> ApplyResult:
        """Merges a batch in one pipelined round trip."""
        pipe = self.client.pipeline(transaction=False)
        for w in writes:
            self._queue(pipe, w)
        result = ApplyResult(decayed={})
        for w, reply in zip(writes, self._execute(pipe, writes), strict=True):
            if w.kind == "decayed":
                merged, pairs = reply[0], reply[1:]
                if merged:
                    result.merged += 1
                else:
                    result.skipped += 1
                for field, value in zip(pairs[::2], pairs[1::2], strict=True):
                    result.decayed[(w.key, field.decode())] = decode_decayed(value)
            elif reply:
                result.merged += 1
            else:
                result.skipped += 1
        return result

    def _execute(self, pipe: Any, writes: Sequence[Write]) -> list[Any]:
        """`pipe.execute()`; on a cluster, first loads the scripts on a master that lacks them (a new
        or restarted one) and re-sends just the calls it refused. NOSCRIPT means the call did not run."""
        if not self._cluster:
            return pipe.execute()
        replies = pipe.execute(raise_on_error=False)
        missing = [i for i, r in enumerate(replies) if isinstance(r, redis.exceptions.NoScriptError)]
        if missing:
            for script in self._scripts.values():
                self.client.script_load(script.script)  # SCRIPT LOAD goes to every master
            again = self.client.pipeline(transaction=False)
            for i in missing:
                self._queue(again, writes[i])
            for i, reply in zip(missing, again.execute(raise_on_error=False), strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _run(self, pipe: Any, name: str, keys_: list[str], args: list[Any]) -> None:
        """Queues script `name`. On a cluster EVALSHA goes straight to the master of its keys' slot
        (one slot: hash tags): redis-py's cluster pipeline refuses `Script` calls, and would ask a
        server for the keys of every EVALSHA (COMMAND GETKEYS) to route it."""
        script = self._scripts[name]
        if self._cluster:
            node = self.client.get_node_from_key(keys_[0])
            pipe.execute_command("EVALSHA", script.sha, len(keys_), *keys_, *args, target_nodes=node)
        else:
            script(keys=keys_, args=args, client=pipe)

    def _queue(self, pipe: redis.client.Pipeline, w: Write) -> None:
        guard = keys.guard(w.key, w.summary_id)
        ttl = self.guard_ttl_s
        run = self._run
        if w.kind == "counts":
            now = self.clock.now_ms()
            keep = {code: (now - span) // width for code, (width, span, _) in windows.GRANULARITIES.items()}
            args: list[Any] = [ttl, len(keep), *(x for rule in keep.items() for x in rule)]
            for field, n in sorted(w.payload.items()):
                if not _pruned_on_merge(field, keep):
                    args += [field, int(n)]
            run(pipe, "merge_counts", [guard, w.key], args)
        elif w.kind == "recent":
            args = [ttl, recent.K]
            for ts, member in w.payload:
                args += [ts, member]
            run(pipe, "merge_recent", [guard, w.key], args)
        elif w.kind == "decayed":
            tau, fields = w.payload
            args = [ttl, int(tau or 0)]
            for field, d in sorted(fields.items()):
                args += [field, encode_decayed(d)]
            run(pipe, "merge_decayed", [guard, w.key], args)
        elif w.kind == "trending":
            tau, items = w.payload
            landmark = max(d.landmark_ms for d in items.values())
            args = [ttl, int(tau), landmark]
            for item_id, d in sorted(items.items()):
                args += [item_id, _fmt(decay.rescale(d, landmark, tau)[0])]
            run(pipe, "merge_trending", [guard, w.key, keys.landmark_of(w.key)], args)
        elif w.kind == "sessions":
            prune_before = self.clock.now_ms() - sessions.KEEP_MS - sessions.GAP_MS
            args = [ttl, sessions.GAP_MS, prune_before]
            for field, s in sorted(w.payload.items()):
                args += [field, _session_json(s)]
            run(pipe, "merge_sessions", [guard, w.key], args)
        elif w.kind == "item":
            ts, event_id, fields = w.payload
            args = [ts, event_id]
            for field, value in sorted(fields.items()):
                args += [field, value]
            run(pipe, "upsert_item", [w.key], args)
        else:
            raise ValueError(f"unknown write kind {w.kind!r}")

    # -- reads ----------------------------------------------------------------------------------

    def user_features(self, user_id: str, now_ms: int | None = None) -> dict[str, Any]:
        """Everything stored for one user, read in one round trip, decoded as of `now_ms`."""
        now = self.clock.now_ms() if now_ms is None else now_ms
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(keys.user_windows(user_id))
        pipe.zrevrange(keys.user_recent(user_id), 0, -1, withscores=True)
        pipe.hgetall(keys.user_sessions(user_id))
        pipe.hgetall(keys.user_emotion(user_id))
        pipe.hgetall(keys.user_vectors(user_id))
        win, rec, sess, emo, vec = pipe.execute()
        session_map = {k.decode(): _session(v) for k, v in sess.items()}
        live = {k: s for k, s in session_map.items() if s.end > now - sessions.KEEP_MS}
        cur = sessions.current(live, now)
        return {
            "user_id": user_id,
            "as_of": now,
            "windows": windows.read({k.decode(): int(v) for k, v in win.items()}, now),
            "session": None if cur is None else {"key": cur[0], **_session_dict(cur[1])},
            "recent": recent.decode((int(score), m.decode()) for m, score in rec),
            "emotion": {k.decode(): decode_decayed(v) for k, v in emo.items()},
            "vectors": {k.decode(): decode_decayed(v) for k, v in vec.items()},
        }

    def item_attributes(self, item_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        ids = list(item_ids)
        for item_id in ids:
            pipe.hgetall(keys.item_attributes(item_id))
        return {
            i: {k.decode(): v.decode() for k, v in attrs.items()}
            for i, attrs in zip(ids, pipe.execute(), strict=True)
            if attrs
        }

    def item_emotion(self, item_id: str) -> dict[str, Decayed]:
        return {k.decode(): decode_decayed(v) for k, v in self.client.hgetall(keys.item_emotion(item_id)).items()}

    def bandit(self, segment: str, item_ids: Sequence[str] | None = None) -> dict[str, Decayed]:
        key = keys.bandit(segment)
        if item_ids is None:
            raw = self.client.hgetall(key)
            return {k.decode(): decode_decayed(v) for k, v in raw.items()}
        values = self.client.hmget(key, list(item_ids))
        return {i: decode_decayed(v) for i, v in zip(item_ids, values, strict=True) if v is not None}

    def bandit_segments(self) -> list[str]:
        pattern = keys.segment("*", "bandit")
        return sorted(keys.hash_tag(k.decode())[2:] for k in self.client.scan_iter(match=pattern, count=1000))

    def trending(self, segment: str, n: int, now_ms: int | None = None,
                 tau_ms: float = FeatureConfig.trending_tau_ms) -> list[tuple[str, float]]:
        """Top-n items by decayed count as of now (scores re-expressed at `now_ms`), one round trip."""
        now = self.clock.now_ms() if now_ms is None else now_ms
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.trending_landmark(segment))
        pipe.zrevrange(keys.trending(segment), 0, n - 1, withscores=True)
        landmark, top = pipe.execute()
        if landmark is None:
            return []
        factor = np.exp((int(landmark) - now) / tau_ms)
        return [(m.decode(), float(s) * factor) for m, s in top]

    def guard_stats(self, sample: int = 50) -> dict[str, int]:
        """How many idempotency guards exist and roughly how many bytes they take."""
        count, sizes = 0, []
        for k in self.client.scan_iter(match=keys.guard_pattern(), count=1000):
            count += 1
            if len(sizes) < sample:
                sizes.append(self.client.memory_usage(k) or 0)
        per_key = int(sum(sizes) / len(sizes)) if sizes else 0
        return {"guards": count, "bytes_per_guard": per_key, "approx_bytes": per_key * count,
                "ttl_s": self.guard_ttl_s}


def _pruned_on_merge(field: str, keep: Mapping[str, int]) -> bool:
    """merge_counts.lua's pruning rule: a bucket it would add and delete in the same call is
    not sent at all (the stored state is the same; a replay as of its end sends a fraction)."""
    code = field.split("|", 1)[0]
    bucket = field.rsplit("|", 1)[-1]
    return code in keep and bucket.lstrip("-").isdigit() and int(bucket) < keep[code]


def _session_dict(s: sessions.Session) -> dict[str, Any]:
    return {"start": s.start, "end": s.end, "length": s.count, "duration_ms": s.end - s.start,
            "last_ts": s.last_ts, "surface": s.surface or None, "device": s.device or None}

