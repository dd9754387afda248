"""The embedded vector store: usearch HNSW indexes in a directory, no server.

The single-machine default behind ``open_vector_store()``. Each collection is one directory::

    <root>/<collection>/meta.json              the commit point: dim, metric, property types,
                                               slot -> id and slot -> properties, and the name
                                               of the index file of this generation
    <root>/<collection>/index-<gen>.usearch    the usearch HNSW graph and vectors (key = slot)

Why this layout: ``meta.json`` names its own index file, so replacing ``meta.json`` (one
``os.replace``) switches both at once. A save writes the new index and meta to temp files,
fsyncs them and replaces; a crash at any point leaves the previous generation loadable, and the
next open removes the leftovers. Writes live in memory until ``flush()``/``close()`` (a pipeline
sink flushes per bundle).

Upsert = remove + add under the same usearch key (usearch supports removal; faiss HNSW does
not). Vectors are also kept in a numpy matrix (slot -> vector; rebuilt from the index on open,
not saved twice): exact subset search and ``get`` gather rows from it instead of asking usearch
key by key (~1 µs each), at the cost of holding the vectors twice in memory.

Filters are evaluated as numpy masks over slots from a small inverted index (text, lists,
booleans) and numeric columns (ints, floats). usearch 2.26's Python API has no predicate search,
so a filtered search (1) runs exact numpy search over the matching subset when it is small
(``exact_threshold``), else (2) oversamples the HNSW result, growing ``count`` until ``k``
matches are found, and (3) falls back to the exact subset search if ``max_candidates`` is
reached first — so a filter matching 1 % of the items still returns ``k`` results.

Threads: any number of concurrent readers, one writer at a time (a writer-preferring
readers-writer lock). Processes: one process owns a directory; other processes must not write
to it concurrently (use Weaviate for that).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from usearch.index import Index

from stores.vector_store import (
    AllOf,
    AnyOf,
    CollectionNotFoundError,
    Eq,
    Filter,
    Hit,
    NotIds,
    Properties,
    PropertyValue,
    Range,
    check_collection_name,
    check_filter,
    check_metric,
    check_vectors,
    prepare_upsert,
)

FORMAT = "pulserank-vectors/1"
META = "meta.json"
_INDEX_RE = re.compile(r"^index-(\d+)\.usearch$")


class _RWLock:
    """Many readers or one writer; waiting writers block new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse directory fsync; the rename stays atomic
        _fsync_file(path)


class _Collection:
    """One collection in memory: the HNSW index plus the id map, properties and filter indexes."""

    def __init__(self, name: str, dim: int, metric: str, params: Mapping[str, int]) -> None:
        self.name = name
        self.dim = dim
        self.metric = metric
        self.params = dict(params)
        self.index = Index(ndim=dim, metric=metric, dtype="f32", **params)
        self.churn = 0  # vectors removed from the graph since it was built (upserts of known ids, deletes)
        self.ids: list[str | None] = []  # slot -> id (None = free)
        self.slot_of: dict[str, int] = {}
        self.free: list[int] = []
        self.props: list[dict[str, PropertyValue] | None] = []
        self.schema: dict[str, str] = {}
        self.postings: dict[str, dict[PropertyValue, set[int]]] = {}  # text, text[], boolean
        self.numeric: dict[str, np.ndarray] = {}  # int, number: float64 column, NaN = missing
        self.alive = np.zeros(0, dtype=bool)
        self.matrix = np.zeros((0, dim), dtype=np.float32)  # slot -> vector, for exact search and get
        self.generation = 0
        self.dirty = True

    # -- slots and property indexes

    def _capacity(self, need: int) -> None:
        cap = len(self.alive)
        if need <= cap:
            return
        new = max(need, 2 * cap, 1024)
        self.alive = np.concatenate([self.alive, np.zeros(new - cap, dtype=bool)])
        self.matrix = np.concatenate([self.matrix, np.zeros((new - cap, self.dim), dtype=np.float32)])
        for name, col in self.numeric.items():
            self.numeric[name] = np.concatenate([col, np.full(new - cap, np.nan)])

    def _add_types(self, new_types: Mapping[str, str]) -> None:
        for name, ptype in new_types.items():
            self.schema[name] = ptype
            if ptype in ("int", "number"):
                self.numeric[name] = np.full(len(self.alive), np.nan)
            else:
                self.postings[name] = {}

    def _index_props(self, slot: int, props: Mapping[str, PropertyValue], add: bool) -> None:
        for name, value in props.items():
            if name in self.numeric:
                self.numeric[name][slot] = float(value) if add else np.nan  # type: ignore[arg-type]
                continue
            table = self.postings[name]
            for v in value if isinstance(value, list) else (value,):
                if add:
                    table.setdefault(v, set()).add(slot)
                else:
                    members = table.get(v)
                    if members is not None:
                        members.discard(slot)
                        if not members:
                            del table[v]

    def upsert(self, ids: list[str], vecs: np.ndarray, props: list[dict[str, PropertyValue]], new_types) -> None:
        self._add_types(new_types)
        slots = np.empty(len(ids), dtype=np.uint64)
        replaced = []
        for i, id_ in enumerate(ids):
            slot = self.slot_of.get(id_)
            if slot is None:
                slot = self.free.pop() if self.free else len(self.ids)
                if slot == len(self.ids):
                    self.ids.append(None)
                    self.props.append(None)
                self.slot_of[id_] = slot
                self.ids[slot] = id_
            else:
                replaced.append(slot)
                self._index_props(slot, self.props[slot] or {}, add=False)
            slots[i] = slot
        self._capacity(len(self.ids))
        if replaced:
            self.index.remove(np.asarray(replaced, dtype=np.uint64))
            self.churn += len(replaced)
        self.index.add(slots, vecs)
        self.matrix[slots.astype(np.int64)] = vecs
        for slot, p in zip(slots.tolist(), props, strict=True):
            self.props[slot] = p
            self._index_props(slot, p, add=True)
        self.alive[slots.astype(np.int64)] = True
        self.dirty = True

    def delete(self, ids: Sequence[str]) -> None:
        slots = []
        for id_ in dict.fromkeys(ids):
            slot = self.slot_of.pop(id_, None)
            if slot is None:
                continue
            self._index_props(slot, self.props[slot] or {}, add=False)
            self.ids[slot] = None
            self.props[slot] = None
            self.alive[slot] = False
            self.free.append(slot)
            slots.append(slot)
        if slots:
            self.index.remove(np.asarray(slots, dtype=np.uint64))
            self.churn += len(slots)
            self.dirty = True

    def rebuild(self) -> None:
        """A fresh HNSW graph over the live vectors: removals leave the graph worse connected
        (recall drifted from 0.95 to 0.89 after rewriting every vector a few times), a rebuild
        restores it. Readers may keep using the old graph meanwhile: it holds the same data."""
        live = np.flatnonzero(self.alive)
        index = Index(ndim=self.dim, metric=self.metric, dtype="f32", **self.params)
        if len(live):
            index.add(live.astype(np.uint64), self.matrix[live])
        self.index = index
        self.churn = 0
        self.dirty = True

    # -- reads

    def vectors(self, slots: np.ndarray) -> np.ndarray:
        return self.matrix[np.asarray(slots, dtype=np.int64)]

    def mask(self, flt: Filter) -> np.ndarray:
        """Slots matching ``flt`` (and alive), as a boolean array over the slot capacity."""
        cap = len(self.alive)

        def from_slots(slots: set[int] | Sequence[int]) -> np.ndarray:
            m = np.zeros(cap, dtype=bool)
            if slots:
                m[np.fromiter(slots, dtype=np.int64, count=len(slots))] = True
            return m

        if isinstance(flt, AllOf):
            m = self.alive.copy()
            for sub in flt.filters:
                m &= self.mask(sub)
            return m
        if isinstance(flt, NotIds):
            m = self.alive.copy()
            gone = [self.slot_of[i] for i in flt.ids if i in self.slot_of]
            m[gone] = False
            return m
        prop = flt.prop  # type: ignore[attr-defined]
        if prop not in self.schema:
            return np.zeros(cap, dtype=bool)
        if isinstance(flt, Range):
            col = self.numeric[prop]
            m = ~np.isnan(col)
            if flt.lo is not None:
                m &= col >= flt.lo
            if flt.hi is not None:
                m &= col <= flt.hi
            return m & self.alive
        if isinstance(flt, Eq):
            if prop in self.numeric:
                return (self.numeric[prop] == float(flt.value)) & self.alive
            return from_slots(self.postings[prop].get(flt.value, set()))
        if isinstance(flt, AnyOf):
            table = self.postings[prop]
            union: set[int] = set()
            for v in flt.values:
                union |= table.get(v, set())
            return from_slots(union)
        raise TypeError(f"unknown filter {flt!r}")

    def scores_from_distances(self, d: np.ndarray) -> np.ndarray:
        # usearch: cos = 1 - cos_sim, ip = 1 - dot, l2sq = squared distance.
        return -d if self.metric == "l2sq" else 1.0 - d

    def exact_scores(self, vecs: np.ndarray, q: np.ndarray) -> np.ndarray:
        if self.metric == "l2sq":
            diff = vecs - q
            return -np.einsum("ij,ij->i", diff, diff)
        return vecs @ q  # cos: both unit length

    def hit(self, slot: int, score: float) -> Hit:
        props = self.props[slot] or {}
        return Hit(self.ids[slot], float(score), {k: list(v) if isinstance(v, list) else v for k, v in props.items()})

    # -- persistence

    def meta(self, index_file: str, generation: int) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "dim": self.dim,
            "metric": self.metric,
            "generation": generation,
            "index_file": index_file,
            "count": len(self.slot_of),
            "churn": self.churn,
            "schema": self.schema,
            "ids": self.ids,
            "props": self.props,
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], directory: Path, params: Mapping[str, int]) -> _Collection:
        if meta.get("format") != FORMAT:
            raise ValueError(f"{directory / META}: unknown format {meta.get('format')!r}")
        c = cls(meta["name"], int(meta["dim"]), meta["metric"], params)
        c.index.load(str(directory / meta["index_file"]))
        c.generation = int(meta["generation"])
        c.churn = int(meta.get("churn", 0))
        c._add_types(meta["schema"])
        c.ids = list(meta["ids"])
        c.props = list(meta["props"])
        c._capacity(len(c.ids))
        for slot, (id_, p) in enumerate(zip(c.ids, c.props, strict=True)):
            if id_ is None:
                c.free.append(slot)
                continue
            c.slot_of[id_] = slot
            c.alive[slot] = True
            c._index_props(slot, p or {}, add=True)
        c.free.reverse()  # reuse low slots first
        live = np.flatnonzero(c.alive)
        if len(live):
            got = c.index.get(live.astype(np.uint64))
            c.matrix[live] = np.vstack(got) if isinstance(got, tuple) else np.atleast_2d(got)
        if len(c.index) != len(c.slot_of) or c.dim != c.index.ndim:
            raise ValueError(
                f"{directory}: index holds {len(c.index)} vectors of dim {c.index.ndim}, "
                f"meta {len(c.slot_of)} of dim {c.dim}"
            )
        c.dirty = False
        return c


class EmbeddedVectorStore:
    """``VectorStore`` on usearch HNSW, persisted under ``path`` (see the module docstring).

    ``connectivity``/``expansion_add``/``expansion_search`` are usearch's HNSW M, efConstruction
    and ef; ``exact_threshold`` is the filtered-match count up to which search is exact over the
    subset; ``max_candidates`` caps oversampling before the exact fallback; ``rebuild_churn`` is
    the share of a collection removed from its graph (re-upserts, deletes) after which ``flush``
    rebuilds the graph.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        connectivity: int = 16,
        expansion_add: int = 128,
        expansion_search: int = 64,
        exact_threshold: int = 2048,
        max_candidates: int = 8192,
        rebuild_churn: float = 0.5,
    ) -> None:
        self.path = Path(path)
        self.params = {
            "connectivity": connectivity,
            "expansion_add": expansion_add,
            "expansion_search": expansion_search,
        }
        self.exact_threshold = exact_threshold
        self.max_candidates = max_candidates
        self.rebuild_churn = rebuild_churn
        self.search_paths: Counter[str] = Counter()  # how filtered searches were answered
        self._lock = _RWLock()
        self._flush_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._closed = False
        self._collections: dict[str, _Collection] = {}
        self.path.mkdir(parents=True, exist_ok=True)
        self._load()

    # -- opening

    def _load(self) -> None:
        for leftover in self.path.glob(".dropped-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for directory in sorted(p for p in self.path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            meta_path = directory / META
            if not meta_path.exists():
                continue  # created but never flushed
            meta = json.loads(meta_path.read_text())
            c = _Collection.from_meta(meta, directory, self.params)
            self._collections[c.name] = c
            self._remove_stale(directory, keep=meta["index_file"])

    @staticmethod
    def _remove_stale(directory: Path, keep: str) -> None:
        """Temp files and index generations the current meta does not name (an interrupted save)."""
        for p in directory.iterdir():
            if p.name.endswith(".tmp") or (_INDEX_RE.match(p.name) and p.name != keep):
                p.unlink(missing_ok=True)

    # -- helpers

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the vector store is closed")

    def _get(self, name: str) -> _Collection:
        self._check_open()
        c = self._collections.get(name)
        if c is None:
            raise CollectionNotFoundError(name)
        return c

    def _count_path(self, path: str) -> None:
        with self._stats_lock:
            self.search_paths[path] += 1

    # -- the VectorStore interface

    def ensure_collection(self, name: str, dim: int, metric: str = "cos") -> None:
        check_collection_name(name)
        check_metric(metric)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        with self._lock.write():
            self._check_open()
            c = self._collections.get(name)
            if c is None:
                self._collections[name] = _Collection(name, dim, metric, self.params)
            elif (c.dim, c.metric) != (dim, metric):
                raise ValueError(f"collection {name!r} is dim={c.dim} metric={c.metric}, not dim={dim} metric={metric}")

    def upsert(
        self,
        collection: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        properties: Sequence[Properties] | None = None,
    ) -> None:
        with self._lock.write():
            c = self._get(collection)
            ids_, vecs, props, new_types = prepare_upsert(ids, vectors, properties, c.dim, c.metric, c.schema)
            if ids_:
                c.upsert(ids_, vecs, props, new_types)

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        with self._lock.write():
            self._get(collection).delete(ids)

    def get(self, collection: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        with self._lock.read():
            c = self._get(collection)
            found = [(i, c.slot_of[i]) for i in dict.fromkeys(ids) if i in c.slot_of]
            vecs = c.vectors(np.array([s for _, s in found], dtype=np.uint64))
            return {id_: vecs[j].copy() for j, (id_, _) in enumerate(found)}

    def search(self, collection: str, vector: np.ndarray, k: int, filter: Filter | None = None) -> list[Hit]:
        with self._lock.read():
            c = self._get(collection)
            q = check_vectors(vector, c.dim, c.metric, 1)[0]
            n = len(c.slot_of)
            if k <= 0 or n == 0:
                return []
            unfiltered = filter is None or (isinstance(filter, AllOf) and not filter.filters)
            if unfiltered and n > self.exact_threshold:  # small collections rank exactly, as small subsets do
                res = c.index.search(q, min(k, n))
                if len(res.keys) >= min(k, n):
                    scores = c.scores_from_distances(res.distances)
                    return [c.hit(int(s), sc) for s, sc in zip(res.keys, scores, strict=True)]
                # HNSW may return fewer than asked (seen when asking for the whole collection): rank exactly
            elif not unfiltered and not check_filter(filter, c.schema):
                return []
            mask = c.alive.copy() if unfiltered else c.mask(filter)
            matching = int(mask.sum())
            want = min(k, matching)
            if want == 0:
                return []
            if matching > self.exact_threshold:
                count = min(n, max(4 * k, min(self.max_candidates, math.ceil(2 * k * n / matching))))
                while True:
                    res = c.index.search(q, count)
                    keys = res.keys.astype(np.int64)
                    ok = mask[keys]
                    if int(ok.sum()) >= want:
                        self._count_path("oversampled")
                        scores = c.scores_from_distances(res.distances[ok][:want])
                        return [c.hit(int(s), sc) for s, sc in zip(keys[ok][:want], scores, strict=True)]
                    if count >= n or count >= self.max_candidates:
                        break
                    count = min(n, self.max_candidates, count * 4)
                self._count_path("exact_fallback")
            else:
                self._count_path("exact_subset")
            slots = np.flatnonzero(mask)
            scores = c.exact_scores(c.vectors(slots), q)
            top = np.argpartition(-scores, want - 1)[:want] if want < len(scores) else np.arange(len(scores))
            top = top[np.argsort(-scores[top], kind="stable")]
            return [c.hit(int(slots[i]), scores[i]) for i in top]

    def count(self, collection: str) -> int:
        with self._lock.read():
            return len(self._get(collection).slot_of)

    def collections(self) -> list[str]:
        with self._lock.read():
            self._check_open()
            return sorted(self._collections)

    def drop_collection(self, name: str) -> None:
        check_collection_name(name)
        with self._flush_lock, self._lock.write():
            self._check_open()
            self._collections.pop(name, None)
            directory = self.path / name
            if directory.exists():
                trash = self.path / f".dropped-{name}-{uuid.uuid4().hex[:8]}"
                os.replace(directory, trash)  # one rename: the collection is gone even if rmtree is cut short
                _fsync_dir(self.path)
                shutil.rmtree(trash, ignore_errors=True)

    def flush(self) -> None:
        """Saves every changed collection (new index generation, then the meta that names it).

        A collection whose graph has lost more than ``rebuild_churn`` × its size to removals is
        rebuilt first. Flush holds the read lock: searches go on, writers wait.
        """
        with self._flush_lock, self._lock.read():
            self._check_open()
            for c in self._collections.values():
                if c.churn and c.churn >= self.rebuild_churn * len(c.slot_of):
                    c.rebuild()
                if c.dirty:
                    self._save(c)

    def compact(self, collection: str) -> None:
        """Rebuilds the collection's HNSW graph now (saved at the next flush)."""
        with self._flush_lock, self._lock.read():
            self._get(collection).rebuild()

    def _save(self, c: _Collection) -> None:
        directory = self.path / c.name
        directory.mkdir(exist_ok=True)
        generation = c.generation + 1
        index_file = f"index-{generation:08d}.usearch"
        tmp_index = directory / (index_file + ".tmp")
        c.index.save(str(tmp_index))
        _fsync_file(tmp_index)
        os.replace(tmp_index, directory / index_file)
        tmp_meta = directory / (META + ".tmp")
        with open(tmp_meta, "w") as f:
            json.dump(c.meta(index_file, generation), f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_meta, directory / META)  # the commit point
        _fsync_dir(directory)
        c.generation = generation
        c.dirty = False
        self._remove_stale(directory, keep=index_file)

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        with self._lock.write():
            self._closed = True
            self._collections.clear()

    def __enter__(self) -> EmbeddedVectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EmbeddedVectorStore({str(self.path)!r})"
