"""Vector upserts from pipeline workers.

A server backend (Weaviate) takes upserts from every worker directly. The embedded index is a
single-writer directory, so workers queue upserts in a Redis list and the driver process
drains them into the index (`drain`) at the end of a replay or micro-batch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import redis

from schemas import keys
from stores.vector_store import ENV_VECTOR_STORE, VectorStore, open_vector_store


@dataclass(frozen=True, slots=True)
class VectorUpsert:
    collection: str
    id: str
    vector: tuple[float, ...]
    properties: dict


def is_embedded(url: str | None) -> bool:
    """Whether `url` (None: $PULSERANK_VECTOR_STORE, else the default) names the embedded store."""
    url = url or os.environ.get(ENV_VECTOR_STORE)
    return url is None or url.startswith("embedded://")


def enqueue(client: redis.Redis, upserts: Sequence[VectorUpsert]) -> None:
    if upserts:
        client.rpush(keys.VECTOR_QUEUE, *(json.dumps([u.collection, u.id, list(u.vector), u.properties])
                                          for u in upserts))


def write(store: VectorStore, upserts: Sequence[VectorUpsert]) -> None:
    """Upserts grouped by collection; the last upsert of an id wins."""
    by_collection: dict[str, dict[str, VectorUpsert]] = {}
    for u in upserts:
        by_collection.setdefault(u.collection, {})[u.id] = u
    for name, items in by_collection.items():
        ids = list(items)
        vectors = np.array([items[i].vector for i in ids], dtype=np.float32)
        store.ensure_collection(name, vectors.shape[1])
        store.upsert(name, ids, vectors, [items[i].properties for i in ids])


def drain(client: redis.Redis, url: str | None, batch: int = 5000) -> int:
    """Moves queued upserts into the embedded store at `url`; returns how many.

    Entries leave the queue only after the store has persisted them (one drainer at a time).
    """
    store = open_vector_store(url)
    total = 0
    try:
        while raw := client.lrange(keys.VECTOR_QUEUE, 0, batch - 1):
            upserts = [VectorUpsert(c, i, tuple(v), p) for c, i, v, p in (json.loads(r) for r in raw)]
            write(store, upserts)
            store.flush()
            client.ltrim(keys.VECTOR_QUEUE, len(raw), -1)
            total += len(upserts)
    finally:
        store.close()
    return total
