"""The Redis side of a model deployment: written by `pipelines/deploy`, read by serving.

Per model version (keys in `schemas/keys.py`):

- `item_model_features(item, version)`: what the ranker needs about a candidate, so serving
  scores a slate with one pipelined read instead of re-running the content tower;
- `user_batch_embedding(user)`: the batch user embedding, field `<version>` → the as-of ms and
  the vector as float16 (`encode_user_embedding`; the design's fallback path). Readers still take
  the earlier field pair `vec:<version>`, `as_of:<version>`, which a rewrite removes;
- `DEPLOYED_MODELS`: version → record of its last completed deploy run (serving switches to a
  promoted version only once it is there, and deploy embeds every user on a version's first run).

Vectors are float32 little-endian bytes: 4 bytes a component, read back with one `frombuffer`;
batch user embeddings float16 (2 bytes), one per user and version, where the bytes add up.

The bandit re-derivation's swap lives here too (`swap_bandit`): it replaces a live posterior
hash with the rebuilt one plus whatever the streaming path merged while the rebuild ran.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis

from schemas import keys
from stores.feature_store import DEFAULT_GUARD_TTL_S, decode_decayed, encode_decayed
from transforms.summaries import decay
from transforms.summaries import seen as seen_set
from transforms.summaries.decay import Decayed

F32 = np.dtype("<f4")
F16 = np.dtype("<f2")
BATCH = 1000  # commands per pipelined round trip
SCRATCH_TTL_S = 86_400  # rebuild debris of a crashed run expires on its own
_REPLACE_SEEN = (Path(__file__).with_name("lua") / "replace_seen.lua").read_text()


def encode_vector(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype=F32).tobytes()


def decode_vector(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype=F32).copy()


def _s(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


@dataclass(frozen=True)
class ItemFeatures:
    item_id: str
    categories: tuple[str, ...]  # padded with "" to the ranker's width
    content: np.ndarray  # float32 [Dc]
    embedding: np.ndarray  # float32 [D], the item tower's
    popularity: int  # positive interactions in the log as of `as_of_ms`
    as_of_ms: int

    def fields(self) -> dict[str, bytes | str]:
        return {"categories": json.dumps(list(self.categories), ensure_ascii=False),
                "content": encode_vector(self.content), "embedding": encode_vector(self.embedding),
                "popularity": str(int(self.popularity)), "as_of": str(int(self.as_of_ms))}

    @classmethod
    def from_fields(cls, item_id: str, raw: Mapping[bytes, bytes]) -> ItemFeatures:
        f = {_s(k): v for k, v in raw.items()}
        return cls(item_id, tuple(json.loads(_s(f["categories"]))), decode_vector(f["content"]),
                   decode_vector(f["embedding"]), int(f["popularity"]), int(f["as_of"]))


def _chunks(seq: Sequence, n: int) -> Iterable[Sequence]:
    for lo in range(0, len(seq), n):
        yield seq[lo:lo + n]


def write_item_features(client: redis.Redis, version: str, rows: Sequence[ItemFeatures], batch: int = BATCH) -> int:
    """HSET each item's features for `version`. Every record has the same fields, so one HSET
    replaces a previous run's record whole (atomically per item: no DEL, no moment without it)."""
    for chunk in _chunks(rows, batch):
        pipe = client.pipeline(transaction=False)
        for row in chunk:
            pipe.hset(keys.item_model_features(row.item_id, version), mapping=row.fields())
        pipe.execute()
    return len(rows)


def read_item_features(client: redis.Redis, version: str, item_ids: Sequence[str]) -> dict[str, ItemFeatures]:
    """The stored features of the items that have them under `version` (one round trip)."""
    pipe = client.pipeline(transaction=False)
    for item_id in item_ids:
        pipe.hgetall(keys.item_model_features(item_id, version))
    return {i: ItemFeatures.from_fields(i, raw) for i, raw in zip(item_ids, pipe.execute(), strict=True) if raw}


def encode_user_embedding(vec: np.ndarray, as_of_ms: int) -> bytes:
    """One field a version: the width of a component (2: float16, 4: float32), the as-of ms (int64),
    then the vector, little-endian. One field, not a `vec:`/`as_of:` pair: the version name in each
    field name was a third of the key. float16 (relative error ≤ 2^-11, well inside serving's
    NDCG parity) halves the vector; one that would overflow float16 stays float32."""
    with np.errstate(over="ignore"):
        half = np.asarray(vec, dtype=F16)
    fits = np.isfinite(half).all() or not np.isfinite(vec).all()
    as_of = int(as_of_ms).to_bytes(8, "little", signed=True)
    return b"\x02" + as_of + half.tobytes() if fits else b"\x04" + as_of + encode_vector(vec)


def as_stored(vectors: np.ndarray) -> np.ndarray:
    """Batch user embeddings (rows) as serving reads them back from `encode_user_embedding`: each
    row rounded to float16 unless that overflows. The offline evaluation scores these, so the
    NDCG it reports is the one served, not float32's."""
    rows = [decode_user_embedding([encode_user_embedding(v, 0), None, None])[0] for v in vectors]
    return np.stack(rows) if rows else np.asarray(vectors, dtype=np.float32)


def user_embedding_fields(version: str) -> list[str]:
    """The fields to HMGET for `version`'s batch embedding: this layout's, then the earlier pair."""
    return [version, f"vec:{version}", f"as_of:{version}"]


def decode_user_embedding(fields: Sequence[bytes | None]) -> tuple[np.ndarray, int] | None:
    """(vector, as-of ms) from the HMGET of `user_embedding_fields`, or None: no embedding."""
    packed, vec, as_of = fields
    if packed is not None:
        dtype = F16 if packed[0] == 2 else F32
        return (np.frombuffer(packed, dtype=dtype, offset=9).astype(np.float32),
                int.from_bytes(packed[1:9], "little", signed=True))
    if vec is not None and as_of is not None:
        return decode_vector(vec), int(as_of)
    return None


def write_user_embeddings(client: redis.Redis, version: str, user_ids: Sequence[str], vectors: np.ndarray,
                          as_of_ms: int, batch: int = BATCH) -> int:
    """The batch embedding of each user under `version`, with the clock it was computed at."""
    if len(user_ids) != len(vectors):
        raise ValueError(f"{len(vectors)} vectors for {len(user_ids)} users")
    _, *legacy = user_embedding_fields(version)
    for lo in range(0, len(user_ids), batch):
        pipe = client.pipeline(transaction=False)
        for user_id, vec in zip(user_ids[lo:lo + batch], vectors[lo:lo + batch], strict=True):
            key = keys.user_batch_embedding(user_id)
            pipe.hset(key, version, encode_user_embedding(vec, as_of_ms))
            pipe.hdel(key, *legacy)  # after the HSET: a reader in between still finds one
        pipe.execute()
    return len(user_ids)


def read_user_embeddings(client: redis.Redis, version: str,
                         user_ids: Sequence[str]) -> dict[str, tuple[np.ndarray, int]]:
    """user → (batch embedding, as-of ms) under `version`, for the users that have one."""
    pipe = client.pipeline(transaction=False)
    for user_id in user_ids:
        pipe.hmget(keys.user_batch_embedding(user_id), user_embedding_fields(version))
    return {user_id: got for user_id, fields in zip(user_ids, pipe.execute(), strict=True)
            if (got := decode_user_embedding(fields)) is not None}


def write_seen(client: redis.Redis, seen: Mapping[str, Mapping[str, int]], batch: int = BATCH) -> int:
    """Merges each user's positive items (item → last event time) into their seen set, keeping the
    newest `keys.SEEN_MAX` (`transforms.summaries.seen`: one compact string a user). Only adds: an
    item once seen stays seen, so a re-run or a concurrent reader never sees the set shrink (no
    delete-and-rewrite window). Read, merge, then compare-and-set (`lua/replace_seen.lua`), pipelined
    `batch` users a round trip; a user whose key changed in between is read and merged again, so
    concurrent writers converge. A sorted set of the earlier layout is read and replaced."""
    users = [u for u in seen if seen[u]]
    cluster = isinstance(client, redis.RedisCluster)
    sha = client.script_load(_REPLACE_SEEN)  # on a cluster: loaded on every master
    for lo in range(0, len(users), batch):
        pending = users[lo:lo + batch]
        while pending:
            current = _read_seen(client, pending)
            pipe, queued = client.pipeline(transaction=False), []
            for user_id in pending:
                read, stored = current[user_id]
                merged = seen_set.merge(stored, seen[user_id])
                if merged == stored and read != "zset":
                    continue  # nothing new: a re-run writes nothing
                key = keys.user_seen(user_id)
                where = {"target_nodes": client.get_node_from_key(key)} if cluster else {}
                pipe.execute_command("EVALSHA", sha, 1, key, read, seen_set.encode(merged), **where)
                queued.append(user_id)
            pending = [u for u, ok in zip(queued, pipe.execute() if queued else [], strict=True) if not ok]
    return len(users)


def _read_seen(client: redis.Redis, user_ids: Sequence[str]) -> dict[str, tuple[str, dict[str, int]]]:
    """user → (what `replace_seen.lua` compares: SHA-1 of the value, 'none' or 'zset'; the set)."""
    pipe = client.pipeline(transaction=False)
    for user_id in user_ids:
        pipe.get(keys.user_seen(user_id))
    out, legacy = {}, []
    for user_id, raw in zip(user_ids, pipe.execute(raise_on_error=False), strict=True):
        if isinstance(raw, redis.ResponseError):
            if not str(raw).startswith("WRONGTYPE"):
                raise raw
            legacy.append(user_id)  # a sorted set of the earlier layout
        else:
            out[user_id] = ("none", {}) if raw is None else (hashlib.sha1(raw).hexdigest(), seen_set.decode(raw))
    if legacy:
        pipe = client.pipeline(transaction=False)
        for user_id in legacy:
            pipe.zrange(keys.user_seen(user_id), 0, -1, withscores=True)
        for user_id, rows in zip(legacy, pipe.execute(), strict=True):
            out[user_id] = ("zset", {m.decode(): int(s) for m, s in rows})
    return out


def prefer_batch_embedding(batch_as_of_ms: int | None, last_interaction_ms: int | None) -> bool:
    """Serving's choice of user vector for the active version: the batch embedding unless the user
    interacted after it was computed, when the streaming path's incremental embedding is fresher
    (and the batch one says nothing about the new session). No batch embedding: streaming only."""
    if batch_as_of_ms is None:
        return False
    return last_interaction_ms is None or last_interaction_ms <= batch_as_of_ms


def mark_deployed(client: redis.Redis, version: str, record: Mapping) -> None:
    client.hset(keys.DEPLOYED_MODELS, version, json.dumps(dict(record), sort_keys=True))


def deployed(client: redis.Redis) -> dict[str, dict]:
    """version → record of its last completed deploy run."""
    return {_s(k): json.loads(v) for k, v in client.hgetall(keys.DEPLOYED_MODELS).items()}


def is_deployed(client: redis.Redis, version: str) -> bool:
    return bool(client.hexists(keys.DEPLOYED_MODELS, version))


# -- bandit re-derivation ------------------------------------------------------------------------


def bandit_segments(client: redis.Redis) -> list[str]:
    """Segments with a live bandit hash (scratch keys of rebuild runs excluded)."""
    live = keys.segment("*", "bandit")
    return sorted({keys.hash_tag(_s(k))[2:] for k in client.scan_iter(match=live, count=1000)})


def snapshot_bandit(client: redis.Redis, run: str, segments: Iterable[str]) -> None:
    """Copies each live bandit hash to the run's snapshot key (same slot), before the rebuild."""
    pipe = client.pipeline(transaction=False)
    for seg in segments:
        snap = keys.bandit_rebuild(seg, run, "snapshot")
        pipe.copy(keys.bandit(seg), snap, replace=True)
        pipe.expire(snap, SCRATCH_TTL_S)
    pipe.execute()


def staging_summary_id(summary_id: str, run: str) -> str:
    """The id a rebuild merges a summary into its staging key under. Guards are per hash tag and
    summary id, so the live key's own id would find a replay's guard and skip the staging merge."""
    return f"{summary_id}-{run}"


def _minus(a: Decayed, b: Decayed, tau_ms: float | None) -> Decayed:
    return decay.merge(a, Decayed(b.landmark_ms, -b.sums), tau_ms)


def rebuilt_fields(live: Mapping[bytes, bytes], staged: Mapping[bytes, bytes], snapshot: Mapping[bytes, bytes],
                   tau_ms: float | None) -> dict[bytes, bytes]:
    """staged + (live − snapshot), field by field: the log's posterior plus what was merged into the
    live hash after its snapshot. A field the stream did not touch keeps the staged bytes exactly."""
    out = dict(staged)
    for field, now in live.items():
        before = snapshot.get(field)
        if before == now:
            continue
        delta = decode_decayed(now) if before is None else _minus(decode_decayed(now), decode_decayed(before), tau_ms)
        if field in out:
            delta = decay.merge(decode_decayed(out[field]), delta, tau_ms)
        out[field] = encode_decayed(delta).encode()
    return out


def swap_bandit(client: redis.Redis, segment: str, run: str, tau_ms: float | None, summary_id: str | None = None,
                guard_ttl_s: int = DEFAULT_GUARD_TTL_S) -> int:
    """Replaces the live bandit hash of `segment` with the run's rebuilt one (see `rebuilt_fields`)
    in one MULTI, retried while a concurrent merge changes the live hash (WATCH). `summary_id`,
    the live key's summary of the same events, gets its guard set, so a later replay of this very
    log is skipped as already merged. Returns the fields now live."""
    live_key = keys.bandit(segment)
    staging, snapshot = keys.bandit_rebuild(segment, run, "staging"), keys.bandit_rebuild(segment, run, "snapshot")
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(live_key)
                live, staged, snap = pipe.hgetall(live_key), pipe.hgetall(staging), pipe.hgetall(snapshot)
                new = rebuilt_fields(live, staged, snap, tau_ms)
                pipe.multi()
                pipe.delete(live_key)
                if new:
                    pipe.hset(live_key, mapping=new)
                if summary_id is not None:
                    pipe.set(keys.guard(live_key, summary_id), "1", ex=guard_ttl_s)
                    pipe.delete(keys.guard(staging, staging_summary_id(summary_id, run)))
                pipe.delete(staging, snapshot)
                pipe.execute()
                return len(new)
            except redis.WatchError:
                continue
