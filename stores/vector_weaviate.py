"""The Weaviate backend of ``VectorStore`` (weaviate-client v4, REST + gRPC).

For deployments where several processes (Beam workers on Flink/Dataflow, many serving
replicas) share one vector store. Mapping of the contract onto Weaviate:

- collection ``items_v3`` → Weaviate collection ``Items_v3`` (Weaviate capitalises class names;
  names are lower-case-first so the mapping is reversible). Its description records
  ``dim``/``metric`` — Weaviate itself only learns the dimension from the first vector — and
  marks it as ours, so ``collections()`` lists only Pulserank collections;
- vectors are ours (``Configure.Vectors.self_provided``, no vectorizer), HNSW with the metric's
  distance (``cos`` → cosine, ``ip`` → dot, ``l2sq`` → l2-squared);
- our string id is the ``ext_id`` text property; the object uuid is ``generate_uuid5(id)``, so an
  upsert is a batch write that replaces the object with that uuid;
- properties are declared on first use with their type (``field`` tokenization for text, so
  ``eq`` is exact equality rather than word matching), never left to auto-schema;
- ``Filter`` → ``weaviate.classes.query.Filter`` (``to_weaviate_filter``).

The pure helpers (``connection_params``, ``collection_config``, ``property_config``,
``to_weaviate_filter``, ``batch_objects``) build exactly what is sent, so they are tested without
a server; the store itself is exercised by the shared contract suite when ``WEAVIATE_URL`` is set.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import weaviate
from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances
from weaviate.classes.data import DataObject
from weaviate.classes.init import AdditionalConfig, Auth, Timeout
from weaviate.classes.query import Filter as WFilter
from weaviate.classes.query import MetadataQuery
from weaviate.exceptions import UnexpectedStatusCodeError
from weaviate.util import generate_uuid5

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

EXT_ID = "ext_id"
DEFAULT_HTTP_PORT = 8080
DEFAULT_GRPC_PORT = 50051
DISTANCES = {"cos": VectorDistances.COSINE, "ip": VectorDistances.DOT, "l2sq": VectorDistances.L2_SQUARED}
_DESCRIPTION = "pulserank vector collection dim={dim} metric={metric}"
_DESCRIPTION_RE = re.compile(r"^pulserank vector collection dim=(\d+) metric=(\w+)$")
_REFRESH_S = 5.0  # how stale the cached schema may be when a filter names an unknown property
_CHUNK = 500  # ids per fetch/delete request (each becomes one filter operand)


# --------------------------------------------------------------------------------------------
# Pure helpers: what would be sent to Weaviate.


def weaviate_name(name: str) -> str:
    """``items_v3`` → ``Items_v3`` (Weaviate's class-name rule)."""
    check_collection_name(name)
    return name[0].upper() + name[1:]


def our_name(wname: str) -> str:
    return wname[0].lower() + wname[1:]


def object_uuid(id_: str) -> str:
    """The deterministic Weaviate uuid of one of our ids (so retries and upserts hit one object)."""
    return generate_uuid5(id_)


def connection_params(url: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``weaviate.connect_to_custom`` from a URL like
    ``http://host:8080?grpc_port=50051``.

    gRPC: ``?grpc_port=``/``?grpc_host=`` or ``$WEAVIATE_GRPC_PORT``/``$WEAVIATE_GRPC_HOST``;
    defaults are the HTTP host and 50051 (443 for ``https``, as Weaviate Cloud serves it). An API
    key comes from ``$WEAVIATE_API_KEY`` when set.
    """
    env = os.environ if env is None else env
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Weaviate URL {url!r} must be http(s)://host[:port]")
    secure = parts.scheme == "https"
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    grpc_port = query.get("grpc_port") or env.get("WEAVIATE_GRPC_PORT") or (443 if secure else DEFAULT_GRPC_PORT)
    params: dict[str, Any] = {
        "http_host": parts.hostname,
        "http_port": parts.port or (443 if secure else DEFAULT_HTTP_PORT),
        "http_secure": secure,
        "grpc_host": query.get("grpc_host") or env.get("WEAVIATE_GRPC_HOST") or parts.hostname,
        "grpc_port": int(grpc_port),
        "grpc_secure": query.get("grpc_secure", str(secure)).lower() in ("1", "true", "yes"),
    }
    api_key = env.get("WEAVIATE_API_KEY")
    if api_key:
        params["auth_credentials"] = Auth.api_key(api_key)
    return params


def property_config(name: str, ptype: str) -> Property:
    """The declaration of one property; text is ``field``-tokenised so equality is exact."""
    text = ptype in ("text", "text[]")
    return Property(
        name=name,
        data_type=DataType(ptype),
        tokenization=Tokenization.FIELD if text else None,
        index_filterable=True,
        index_searchable=False if text else None,
    )


def collection_config(
    name: str, dim: int, metric: str = "cos", *, ef_construction: int = 128, max_connections: int = 16
) -> dict[str, Any]:
    """Keyword arguments for ``client.collections.create``: our vectors, HNSW, the ``ext_id`` property."""
    check_metric(metric)
    return {
        "name": weaviate_name(name),
        "description": _DESCRIPTION.format(dim=dim, metric=metric),
        "properties": [property_config(EXT_ID, "text")],
        "vector_config": Configure.Vectors.self_provided(
            vector_index_config=Configure.VectorIndex.hnsw(
                distance_metric=DISTANCES[metric], ef_construction=ef_construction, max_connections=max_connections
            )
        ),
    }


def parse_description(description: str | None) -> tuple[int, str] | None:
    """``(dim, metric)`` of a Pulserank collection, or None for anyone else's."""
    m = _DESCRIPTION_RE.match(description or "")
    return (int(m.group(1)), m.group(2)) if m else None


def schema_from_properties(properties: Sequence[Any]) -> dict[str, str]:
    """Our property types from a collection config's properties (``ext_id`` excluded)."""
    return {p.name: p.data_type.value for p in properties if p.name != EXT_ID}


def to_weaviate_filter(flt: Filter | None, schema: Mapping[str, str] | None = None) -> Any:
    """Translates our ``Filter`` to a Weaviate filter (None = no filter).

    With the collection's ``schema``, values are converted to the property's type (an int bound
    on an int property is rounded inward; an int compared with a float property becomes a float),
    since Weaviate compares typed values.
    """
    schema = schema or {}
    if flt is None:
        return None
    if isinstance(flt, AllOf):
        parts = [w for w in (to_weaviate_filter(f, schema) for f in flt.filters) if w is not None]
        return None if not parts else WFilter.all_of(parts)
    if isinstance(flt, NotIds):
        if not flt.ids:
            return None
        # NotEqual on the id works on every server; ContainsNone needs Weaviate >= 1.33.
        return WFilter.all_of([WFilter.by_id().not_equal(object_uuid(i)) for i in dict.fromkeys(flt.ids)])
    ptype = schema.get(flt.prop)  # type: ignore[attr-defined]
    prop = WFilter.by_property(flt.prop)  # type: ignore[attr-defined]
    if isinstance(flt, Eq):
        if ptype == "text[]":
            return prop.contains_any([flt.value])
        value = float(flt.value) if ptype == "number" else flt.value
        return prop.equal(value)
    if isinstance(flt, AnyOf):
        return prop.contains_any(list(flt.values))
    if isinstance(flt, Range):
        lo, hi = flt.lo, flt.hi
        if ptype == "int":
            lo = None if lo is None else math.ceil(lo)
            hi = None if hi is None else math.floor(hi)
        elif ptype == "number":
            lo = None if lo is None else float(lo)
            hi = None if hi is None else float(hi)
        bounds = []
        if lo is not None:
            bounds.append(WFilter.by_property(flt.prop).greater_or_equal(lo))
        if hi is not None:
            bounds.append(WFilter.by_property(flt.prop).less_or_equal(hi))
        return WFilter.all_of(bounds)
    raise TypeError(f"unknown filter {flt!r}")


def batch_objects(
    ids: Sequence[str], vectors: np.ndarray, properties: Sequence[Mapping[str, PropertyValue]]
) -> list[DataObject]:
    """The objects an upsert sends: ``ext_id`` plus properties, the uuid5 of the id, the vector."""
    return [
        DataObject(properties={EXT_ID: id_, **props}, uuid=object_uuid(id_), vector=[float(x) for x in vec])
        for id_, vec, props in zip(ids, np.asarray(vectors, dtype=np.float32), properties, strict=True)
    ]


def score_from_distance(metric: str, distance: float) -> float:
    """Weaviate distances → our similarity: cosine 1 - d, dot -d (d = -dot), l2-squared -d."""
    return 1.0 - distance if metric == "cos" else -distance


# --------------------------------------------------------------------------------------------


class WeaviateVectorStore:
    """``VectorStore`` on a Weaviate server. Pass ``url`` or an already connected ``client``."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: weaviate.WeaviateClient | None = None,
        batch_size: int = 200,
        timeout_s: float = 60.0,
    ) -> None:
        if client is None:
            if url is None:
                raise ValueError("WeaviateVectorStore needs a url or a client")
            client = weaviate.connect_to_custom(
                **connection_params(url),
                additional_config=AdditionalConfig(timeout=Timeout(init=10, query=timeout_s, insert=timeout_s)),
            )
        self.client = client
        self.batch_size = batch_size
        self._info: dict[str, tuple[int, str, dict[str, str]]] = {}  # name -> dim, metric, schema
        self._handles: dict[str, Any] = {}  # name -> weaviate Collection
        self._refreshed: dict[str, float] = {}  # name -> monotonic time of the last schema refresh
        self._lock = threading.Lock()
        self._closed = False

    # -- collection metadata (cached; refreshed when another process may have changed it)

    def _load_info(self, name: str) -> tuple[int, str, dict[str, str]]:
        wname = weaviate_name(name)
        if not self.client.collections.exists(wname):
            raise CollectionNotFoundError(name)
        config = self.client.collections.use(wname).config.get()
        parsed = parse_description(config.description)
        if parsed is None:
            raise ValueError(
                f"Weaviate collection {wname!r} was not created by Pulserank (description {config.description!r})"
            )
        info = (parsed[0], parsed[1], schema_from_properties(config.properties))
        with self._lock:
            self._info[name] = info
        return info

    def _collection(self, name: str, refresh: bool = False) -> tuple[Any, int, str, dict[str, str]]:
        if self._closed:
            raise RuntimeError("the vector store is closed")
        info = None if refresh else self._info.get(name)
        if info is None:
            info = self._load_info(name)
        handle = self._handles.get(name)
        if handle is None:  # one handle per collection: each carries its own batch executor
            handle = self._handles.setdefault(name, self.client.collections.use(weaviate_name(name)))
        return (handle, *info)

    def _add_properties(self, coll: Any, new_types: Mapping[str, str]) -> bool:
        """Declares new properties; False if one already exists (another writer got there first)."""
        for prop, ptype in new_types.items():
            try:
                coll.config.add_property(property_config(prop, ptype))
            except UnexpectedStatusCodeError:
                return False
        return True

    # -- the VectorStore interface

    def ensure_collection(self, name: str, dim: int, metric: str = "cos") -> None:
        check_metric(metric)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        try:
            _, have_dim, have_metric, _ = self._collection(name, refresh=True)
        except CollectionNotFoundError:
            try:
                self.client.collections.create(**collection_config(name, dim, metric))
            except UnexpectedStatusCodeError:
                if not self.client.collections.exists(weaviate_name(name)):
                    raise  # not a lost creation race
            _, have_dim, have_metric, _ = self._collection(name, refresh=True)
        if (have_dim, have_metric) != (dim, metric):
            raise ValueError(
                f"collection {name!r} is dim={have_dim} metric={have_metric}, not dim={dim} metric={metric}"
            )

    def upsert(
        self,
        collection: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        properties: Sequence[Properties] | None = None,
    ) -> None:
        for attempt in range(2):
            # A retry re-validates against the server's schema: another writer may have declared
            # one of our new properties meanwhile (with its type, which then governs).
            coll, dim, metric, schema = self._collection(collection, refresh=attempt > 0)
            ids_, vecs, props, new_types = prepare_upsert(ids, vectors, properties, dim, metric, schema)
            if not ids_:
                return
            if not new_types or self._add_properties(coll, new_types):
                break
        else:
            raise RuntimeError(f"could not declare properties {sorted(new_types)} on {collection!r}")
        if new_types:
            self._load_info(collection)
        with coll.batch.fixed_size(batch_size=self.batch_size) as batch:
            for obj in batch_objects(ids_, vecs, props):
                batch.add_object(properties=obj.properties, uuid=obj.uuid, vector=obj.vector)
        failed = coll.batch.failed_objects
        if failed:
            raise RuntimeError(f"Weaviate refused {len(failed)} of {len(ids_)} objects; first: {failed[0].message}")

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        coll, *_ = self._collection(collection)
        uuids = [object_uuid(i) for i in dict.fromkeys(ids)]
        for start in range(0, len(uuids), _CHUNK):
            coll.data.delete_many(where=WFilter.by_id().contains_any(uuids[start : start + _CHUNK]))

    def get(self, collection: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        coll, *_ = self._collection(collection)
        wanted = list(dict.fromkeys(ids))
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            res = coll.query.fetch_objects_by_ids(
                [object_uuid(i) for i in chunk], limit=len(chunk), include_vector=True, return_properties=[EXT_ID]
            )
            for obj in res.objects:
                out[obj.properties[EXT_ID]] = np.asarray(obj.vector["default"], dtype=np.float32)
        return out

    def search(self, collection: str, vector: np.ndarray, k: int, filter: Filter | None = None) -> list[Hit]:
        coll, dim, metric, schema = self._collection(collection)
        q = check_vectors(vector, dim, metric, 1)[0]
        if k <= 0:
            return []
        if not check_filter(filter, schema):
            # A property unknown here may have been added by another writer since we cached;
            # ask the server again, at most every few seconds per collection.
            now = time.monotonic()
            if now - self._refreshed.get(collection, 0.0) < _REFRESH_S:
                return []
            self._refreshed[collection] = now
            coll, dim, metric, schema = self._collection(collection, refresh=True)
            if not check_filter(filter, schema):
                return []
        res = coll.query.near_vector(
            near_vector=[float(x) for x in q],
            limit=k,
            filters=to_weaviate_filter(filter, schema),
            return_metadata=MetadataQuery(distance=True),
        )
        hits = []
        for obj in res.objects:
            props = {key: v for key, v in obj.properties.items() if v is not None}
            id_ = props.pop(EXT_ID)
            hits.append(Hit(id_, score_from_distance(metric, obj.metadata.distance), props))
        return hits

    def count(self, collection: str) -> int:
        coll, *_ = self._collection(collection)
        return int(coll.aggregate.over_all(total_count=True).total_count or 0)

    def collections(self) -> list[str]:
        if self._closed:
            raise RuntimeError("the vector store is closed")
        configs = self.client.collections.list_all(simple=True)
        return sorted(our_name(wname) for wname, c in configs.items() if parse_description(c.description))

    def drop_collection(self, name: str) -> None:
        wname = weaviate_name(name)
        with self._lock:
            self._info.pop(name, None)
            self._handles.pop(name, None)
        if not self.client.collections.exists(wname):
            return
        description = self.client.collections.use(wname).config.get(simple=True).description
        if parse_description(description) is None:
            raise ValueError(f"refusing to drop Weaviate collection {wname!r}: not created by Pulserank")
        self.client.collections.delete(wname)

    def flush(self) -> None:
        """Nothing to do: each upsert's batch is sent (and checked) before it returns."""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.close()

    def __enter__(self) -> WeaviateVectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
