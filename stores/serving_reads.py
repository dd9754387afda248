"""Serving's reads from Redis, async (the server is grpc.aio): each a single pipelined round trip.

`fetch_context` reads everything about one user (per-user keys share a hash tag, so on a
cluster it is one slot); `fetch_items` reads what ranking, filters and Thompson sampling need
about the candidates — the model version's item features, the catalogue attributes and the
bandit rows of the segment and the global row. On a Redis Cluster the same pipelines work:
redis-py's cluster pipeline sends each node its slots' commands, all nodes at once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import redis.asyncio as aioredis

from schemas import keys
from schemas.clock import default_clock
from schemas.features import FeatureConfig
from serving.context import UserContext, mood_of
from stores.deployment import ItemFeatures, decode_user_embedding, user_embedding_fields
from stores.feature_store import decode_decayed
from transforms.summaries import decay, sessions
from transforms.summaries import recent as recent_summary
from transforms.summaries import seen as seen_set

TRENDING_N = 200


async def fetch_context(client: aioredis.Redis, user_id: str, version: str | None, segment: str, now_ms: int,
                        trending_n: int = TRENDING_N) -> UserContext:
    """One pipelined round trip (no transaction: reads only, and per-user keys share a slot)."""
    pipe = client.pipeline(transaction=False)
    if version:
        pipe.hmget(keys.user_batch_embedding(user_id), user_embedding_fields(version))
    pipe.get(keys.user_seen(user_id))
    pipe.zrevrange(keys.user_recent(user_id), 0, -1, withscores=True)
    pipe.hgetall(keys.user_sessions(user_id))
    pipe.hgetall(keys.user_emotion(user_id))
    for seg in (segment, keys.GLOBAL_SEGMENT):
        pipe.get(keys.trending_landmark(seg))
        pipe.zrevrange(keys.trending(seg), 0, trending_n - 1, withscores=True)
    replies = await pipe.execute()
    batch = decode_user_embedding(replies.pop(0)) if version else None
    seen_raw, rec, sess, emo, seg_landmark, seg_top, glob_landmark, glob_top = replies
    session = None
    if sess:
        live = {k.decode(): sessions.Session(*json.loads(v)) for k, v in sess.items()}
        live = {k: s for k, s in live.items() if s.end > now_ms - sessions.KEEP_MS}
        cur = sessions.current(live, now_ms)
        session = None if cur is None else {"key": cur[0], "start": cur[1].start, "end": cur[1].end}
    trending = _trending(seg_landmark, seg_top, now_ms) or _trending(glob_landmark, glob_top, now_ms)
    return UserContext(
        user_id=user_id, segment=segment, now_ms=now_ms,
        embedding=batch[0] if batch else None,
        embedding_as_of=batch[1] if batch else None,
        seen=seen_set.decode(seen_raw),
        recent=recent_summary.decode((int(s), m.decode()) for m, s in rec),
        session=session, mood=mood_of(emo), trending=trending,
    )


def _trending(landmark, top, now_ms: int, tau_ms: float = FeatureConfig.trending_tau_ms) -> list[tuple[str, float]]:
    if landmark is None or not top:
        return []
    tau = tau_ms
    factor = float(np.exp((int(landmark) - now_ms) / tau))
    return [(m.decode(), float(s) * factor) for m, s in top]


@dataclass
class ItemData:
    features: dict[str, ItemFeatures]  # the model version's, for the items that have them
    attributes: dict[str, dict[str, str]]  # catalogue hash (title, price, created_at, …)
    bandit: dict[str, tuple[float, float]]  # item → (clicks, non-clicks) in the segment
    bandit_global: dict[str, tuple[float, float]]  # item → (clicks, non-clicks) over all segments


def _counts(raw, now_ms: int, tau_ms: float | None) -> tuple[float, float] | None:
    if raw is None:
        return None
    sums = decay.at(decode_decayed(raw), now_ms, tau_ms)
    return float(sums[0]), float(sums[1])


async def fetch_items(client: aioredis.Redis, version: str | None, item_ids: Sequence[str], segment: str,
                      now_ms: int, bandit_tau_ms: float | None = None, *, features_for: Sequence[str] | None = None,
                      attributes_for: Sequence[str] | None = None) -> ItemData:
    """Bandit counts for `item_ids`, the version's features of `features_for` and the catalogue
    attributes of `attributes_for` (both default to `item_ids`), in one round trip."""
    ids = list(item_ids)
    f_ids = ids if features_for is None else list(features_for)
    a_ids = ids if attributes_for is None else list(attributes_for)
    if not version:
        f_ids = []
    pipe = client.pipeline(transaction=False)
    for item_id in f_ids:
        pipe.hgetall(keys.item_model_features(item_id, version))
    for item_id in a_ids:
        pipe.hgetall(keys.item_attributes(item_id))
    if ids:  # nothing else to queue: a cluster pipeline refuses keyless commands (PING)
        pipe.hmget(keys.bandit(segment), ids)
        pipe.hmget(keys.bandit(keys.GLOBAL_SEGMENT), ids)
    replies = await pipe.execute() if f_ids or a_ids or ids else []
    nf, na = len(f_ids), len(a_ids)
    feats = {i: ItemFeatures.from_fields(i, raw) for i, raw in zip(f_ids, replies[:nf], strict=True) if raw}
    attrs = {i: {k.decode(): v.decode() for k, v in raw.items()}
             for i, raw in zip(a_ids, replies[nf:nf + na], strict=True) if raw}
    seg_rows, glob_rows = replies[nf + na:] if ids else ([], [])
    bandit = {i: c for i, raw in zip(ids, seg_rows, strict=True) if (c := _counts(raw, now_ms, bandit_tau_ms))}
    bandit_global = {i: c for i, raw in zip(ids, glob_rows, strict=True)
                     if (c := _counts(raw, now_ms, bandit_tau_ms))}
    return ItemData(feats, attrs, bandit, bandit_global)


async def read_bandit_counts(client: aioredis.Redis, segments: Sequence[str] | None = None, now_ms: int | None = None,
                             tau_ms: float | None = None) -> dict[str, dict[str, tuple[float, float]]]:
    """Every stored bandit segment's (clicks, non-clicks) per item as of `now_ms` (default: the
    process clock), or only `segments`: the rows the origin pushes to edges in full snapshots.
    One SCAN for the segment names (when not given), then one pipelined HGETALL per segment."""
    now = default_clock().now_ms() if now_ms is None else now_ms
    if segments is None:
        found = [k.decode() async for k in client.scan_iter(match=keys.bandit("*"), count=1000)]
        # keep exact round trips only: the glob could also match other keys of an odd segment name
        segments = sorted({s for k in found if keys.bandit(s := keys.hash_tag(k)[2:]) == k})
    segments = list(segments)
    if not segments:
        return {}
    pipe = client.pipeline(transaction=False)
    for seg in segments:
        pipe.hgetall(keys.bandit(seg))
    replies = await pipe.execute()
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for seg, raw in zip(segments, replies, strict=True):
        if raw:
            out[seg] = {k.decode(): c for k, v in raw.items() if (c := _counts(v, now, tau_ms))}
    return out
