"""The vector store contract: one interface, two backends (embedded usearch HNSW, Weaviate).

Pipeline sinks upsert item and user vectors; serving reads them back and runs nearest-neighbour
search with filters. Both sides talk to a ``VectorStore`` and never to a backend directly, so the
single-machine default (``stores.vector_embedded``) and a Weaviate cluster
(``stores.vector_weaviate``) are interchangeable. ``tests/test_vector_store_contract.py`` runs one
suite against both.

**Model versions tag collections.** Vectors from different model versions live in different
spaces and must never be compared, so the caller names collections with the version:
``items_v3``, ``users_v3`` (``versioned("items", 3)``). A retrain writes ``items_v4`` beside
``items_v3``; serving switches when the registry says so, and the old collection is dropped later.

Semantics shared by every backend (the contract):

- ids are caller strings; ``upsert`` writes the whole record (vector and properties), so a second
  upsert of an id moves its vector and replaces its properties; within one call the last
  occurrence of a duplicated id wins;
- ``cos`` collections store unit vectors (Weaviate normalises for cosine, so the embedded store
  does too) and ``get`` returns them normalised;
- ``Hit.score`` is a similarity, higher = closer: cosine similarity (``cos``), dot product
  (``ip``), or minus the squared L2 distance (``l2sq``);
- properties are ``str``, ``int``, ``float``, ``bool`` or ``list[str]``; each property keeps the
  type it was first written with (an ``int`` is accepted into a ``float`` property, and a batch
  mixing ints and floats creates a ``float`` property; anything else raises ``ValueError``),
  because Weaviate's schema is typed;
- filters are a conjunction of the leaves below; a leaf on a property the collection has never
  seen matches nothing (the collection may simply be young), a leaf whose value does not fit the
  property's type raises ``ValueError``;
- a vector of the wrong dimension raises ``ValueError``; so does ``ensure_collection`` with a
  dimension or metric other than the collection's;
- an unknown collection raises ``CollectionNotFoundError`` (a ``KeyError``); ``drop_collection``
  of an unknown name does nothing.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias, runtime_checkable

import numpy as np

PropertyValue: TypeAlias = str | int | float | bool | list[str]
Properties: TypeAlias = Mapping[str, PropertyValue]

METRICS = ("cos", "ip", "l2sq")
"""Supported metrics: cosine, inner product, squared Euclidean."""

PROPERTY_TYPES = ("text", "text[]", "int", "number", "boolean")
"""Property types, named after Weaviate's data types."""

ENV_VECTOR_STORE = "PULSERANK_VECTOR_STORE"
DEFAULT_EMBEDDED_PATH = os.path.join(".", "out", "vectors")

# Lower-case first letter: Weaviate capitalises class names and lower-cases property names, so
# only names that survive that round trip unchanged are accepted anywhere.
_COLLECTION_RE = re.compile(r"^[a-z][a-z0-9_]{0,99}$")
_PROPERTY_RE = re.compile(r"^[a-z_][A-Za-z0-9_]{0,99}$")
RESERVED_PROPERTIES = frozenset({"ext_id", "id", "_id", "_additional", "vector"})


class CollectionNotFoundError(KeyError):
    """The named collection does not exist (call ``ensure_collection`` first)."""


def versioned(base: str, version: int | str) -> str:
    """``versioned("items", 3) == "items_v3"``: the collection for one model version."""
    return check_collection_name(f"{base}_v{version}")


@dataclass(frozen=True)
class Hit:
    """One search result: the caller's id, a similarity (higher = closer) and the properties."""

    id: str
    score: float
    properties: dict[str, PropertyValue] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Filters: a tiny language both backends translate (embedded: numpy masks; Weaviate: Filter).


class Filter:
    """A filter on search results. Build with the constructors; combine with ``Filter.all_of``.

    ``matches`` is the reference semantics every backend must agree with.
    """

    @staticmethod
    def eq(prop: str, value: str | int | float | bool) -> Eq:
        """``prop == value``; on a ``list[str]`` property: ``value`` is one of its elements."""
        value = _normalize_value(value)
        if isinstance(value, list):
            raise ValueError(f"eq({prop!r}) compares with one value; use any_of for several")
        return Eq(check_property_name(prop), value)

    @staticmethod
    def any_of(prop: str, values: Iterable[str]) -> AnyOf:
        """At least one of ``values`` is the (text) property or an element of the (list) property."""
        vals = () if isinstance(values, str) else tuple(values)  # a bare string is a mistake
        if not vals or not all(isinstance(v, str) for v in vals):
            raise ValueError(f"any_of({prop!r}) needs a non-empty list of strings, got {vals!r}")
        return AnyOf(check_property_name(prop), vals)

    @staticmethod
    def not_ids(ids: Iterable[str]) -> NotIds:
        """Excludes these ids (e.g. items the user has already seen)."""
        if isinstance(ids, str):
            raise ValueError("not_ids takes a list of ids, not one string")
        vals = tuple(ids)
        if not all(isinstance(v, str) for v in vals):
            raise ValueError("not_ids needs string ids")
        return NotIds(vals)

    @staticmethod
    def range(prop: str, lo: float | None = None, hi: float | None = None) -> Range:
        """``lo <= prop <= hi`` (both inclusive; ``None`` = unbounded) on an int or float property."""
        for bound in (lo, hi):
            if bound is not None and (isinstance(bound, bool) or not _is_finite_number(bound)):
                raise ValueError(f"range({prop!r}) bounds must be finite numbers or None, got {bound!r}")
        if lo is None and hi is None:
            raise ValueError(f"range({prop!r}) needs at least one bound")
        return Range(
            check_property_name(prop),
            None if lo is None else _normalize_value(lo),  # type: ignore[arg-type]
            None if hi is None else _normalize_value(hi),  # type: ignore[arg-type]
        )

    @staticmethod
    def all_of(*filters: Filter) -> AllOf:
        """Every filter matches (an empty ``all_of`` matches everything)."""
        flat: list[Filter] = []
        for f in filters:
            if not isinstance(f, Filter):
                raise TypeError(f"all_of takes Filter objects, got {type(f).__name__}")
            flat.extend(f.filters if isinstance(f, AllOf) else (f,))
        return AllOf(tuple(flat))

    def matches(self, id_: str, properties: Properties) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def leaves(self) -> Iterable[Filter]:
        yield self


@dataclass(frozen=True)
class Eq(Filter):
    prop: str
    value: str | int | float | bool

    def matches(self, id_: str, properties: Properties) -> bool:
        v = properties.get(self.prop)
        if v is None:
            return False
        if isinstance(v, list):
            return self.value in v
        if isinstance(v, bool) or isinstance(self.value, bool):  # True == 1 in Python, not here
            return isinstance(v, bool) and isinstance(self.value, bool) and v == self.value
        return v == self.value


@dataclass(frozen=True)
class AnyOf(Filter):
    prop: str
    values: tuple[str, ...]

    def matches(self, id_: str, properties: Properties) -> bool:
        v = properties.get(self.prop)
        if isinstance(v, list):
            return any(x in self.values for x in v)
        return isinstance(v, str) and v in self.values


@dataclass(frozen=True)
class NotIds(Filter):
    ids: tuple[str, ...]

    def matches(self, id_: str, properties: Properties) -> bool:
        return id_ not in self.ids


@dataclass(frozen=True)
class Range(Filter):
    prop: str
    lo: float | None
    hi: float | None

    def matches(self, id_: str, properties: Properties) -> bool:
        v = properties.get(self.prop)
        if isinstance(v, bool) or not isinstance(v, int | float):
            return False
        return (self.lo is None or v >= self.lo) and (self.hi is None or v <= self.hi)


@dataclass(frozen=True)
class AllOf(Filter):
    filters: tuple[Filter, ...]

    def matches(self, id_: str, properties: Properties) -> bool:
        return all(f.matches(id_, properties) for f in self.filters)

    def leaves(self) -> Iterable[Filter]:
        for f in self.filters:
            yield from f.leaves()


def check_filter(flt: Filter | None, schema: Mapping[str, str]) -> bool:
    """Validates ``flt`` against a collection's property types; returns False if it cannot match.

    A leaf on an unknown property makes the (conjunctive) filter unsatisfiable rather than an
    error: the property may just not have been written yet. A value of the wrong type is a bug in
    the caller and raises ``ValueError``, as Weaviate would.
    """
    if flt is None:
        return True
    satisfiable = True
    for leaf in flt.leaves():
        if isinstance(leaf, NotIds):
            continue
        prop = leaf.prop  # type: ignore[attr-defined]
        ptype = schema.get(prop)
        if ptype is None:
            satisfiable = False
            continue
        if isinstance(leaf, Range) and ptype not in ("int", "number"):
            raise ValueError(f"range on {prop!r} needs an int or float property, it is {ptype}")
        if isinstance(leaf, AnyOf) and ptype not in ("text", "text[]"):
            raise ValueError(f"any_of on {prop!r} needs a text or list property, it is {ptype}")
        if isinstance(leaf, Eq):
            want = "text" if ptype == "text[]" else ptype
            got = infer_type(leaf.value)
            if not (got == want or (got == "int" and want == "number")):
                raise ValueError(f"eq on {prop!r} ({ptype}) with a {got} value {leaf.value!r}")
    return satisfiable


# --------------------------------------------------------------------------------------------
# Validation shared by the backends, so both refuse the same inputs.


def check_collection_name(name: str) -> str:
    if not isinstance(name, str) or not _COLLECTION_RE.match(name):
        raise ValueError(
            f"collection name {name!r} must match {_COLLECTION_RE.pattern} (lower-case, e.g. 'items_v3')"
        )
    return name


def check_property_name(name: str) -> str:
    if not isinstance(name, str) or not _PROPERTY_RE.match(name) or name in RESERVED_PROPERTIES:
        raise ValueError(
            f"property name {name!r} must match {_PROPERTY_RE.pattern} and not be one of {sorted(RESERVED_PROPERTIES)}"
        )
    return name


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {METRICS}")
    return metric


def _is_finite_number(v: object) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and math.isfinite(float(v))


def _normalize_value(value: object) -> PropertyValue:
    """Plain Python values (numpy scalars from pipelines become int/float/bool)."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        if not math.isfinite(float(value)):
            raise ValueError(f"property values must be finite, got {value!r}")
        return float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        if not all(isinstance(x, str) for x in value):
            raise ValueError(f"list properties must hold strings only, got {value!r}")
        return list(value)
    raise ValueError(f"unsupported property value {value!r} ({type(value).__name__})")


def infer_type(value: PropertyValue) -> str:
    """The property type a (normalised) value implies: text, text[], int, number, boolean."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "text[]"
    raise ValueError(f"unsupported property value {value!r}")


def prepare_properties(
    props: Properties, schema: Mapping[str, str], new_types: dict[str, str]
) -> dict[str, PropertyValue]:
    """Normalises one record's properties against ``schema``; records new properties in ``new_types``.

    Raises ``ValueError`` when a value does not fit the property's type (an int is widened into a
    float property; nothing else is converted).
    """
    out: dict[str, PropertyValue] = {}
    for name, raw in props.items():
        check_property_name(name)
        value = _normalize_value(raw)
        got = infer_type(value)
        want = schema.get(name) or new_types.get(name)
        if want is None:
            new_types[name] = got
        elif name not in schema and want == "int" and got == "number":
            new_types[name] = "number"  # widened within the batch; prepare_upsert converts the ints
        elif want == "number" and got == "int":
            value = float(value)
        elif want != got:
            raise ValueError(f"property {name!r} is {want}, got a {got} value {raw!r}")
        out[name] = value
    return out


def prepare_upsert(
    ids: Sequence[str],
    vectors: np.ndarray,
    properties: Sequence[Properties] | None,
    dim: int,
    metric: str,
    schema: Mapping[str, str],
) -> tuple[list[str], np.ndarray, list[dict[str, PropertyValue]], dict[str, str]]:
    """Validates an upsert batch: returns ids (deduplicated, last wins), float32 vectors (unit
    length for ``cos``), normalised properties and the types of properties new to the schema."""
    ids = list(ids)
    if not all(isinstance(i, str) and i for i in ids):
        raise ValueError("ids must be non-empty strings")
    vecs = check_vectors(vectors, dim, metric, len(ids))
    if properties is None:
        properties = [{}] * len(ids)
    elif len(properties) != len(ids):
        raise ValueError(f"{len(properties)} property records for {len(ids)} ids")
    last = {id_: i for i, id_ in enumerate(ids)}
    keep = sorted(last.values())
    new_types: dict[str, str] = {}
    props = [prepare_properties(properties[i], schema, new_types) for i in keep]
    widened = [name for name, t in new_types.items() if t == "number"]
    for p in props:
        for name in widened:
            if isinstance(p.get(name), int):
                p[name] = float(p[name])
    return [ids[i] for i in keep], vecs[keep], props, new_types


def check_vectors(vectors: np.ndarray, dim: int, metric: str, n: int | None = None) -> np.ndarray:
    """A (n, dim) finite float32 array; rows normalised to unit length for ``cos``."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"vectors of shape {np.shape(vectors)} do not fit dimension {dim}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{arr.shape[0]} vectors for {n} ids")
    if not np.isfinite(arr).all():
        raise ValueError("vectors must be finite")
    if metric == "cos":
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError("a zero vector has no direction: cosine is undefined")
        arr = arr / norms
    return np.ascontiguousarray(arr, dtype=np.float32)


# --------------------------------------------------------------------------------------------


@runtime_checkable
class VectorStore(Protocol):
    """Named collections of (id, vector, properties) with filtered nearest-neighbour search.

    Writes are upserts by id (idempotent, so a retried bundle writes the same state). Name
    collections by model version (``items_v3``): see the module docstring.
    """

    def ensure_collection(self, name: str, dim: int, metric: str = "cos") -> None:
        """Creates the collection if missing; ``ValueError`` if it exists with another dim/metric."""
        ...

    def upsert(
        self,
        collection: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        properties: Sequence[Properties] | None = None,
    ) -> None:
        """Writes each id's vector and properties, replacing any previous record of that id."""
        ...

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        """Removes these ids; unknown ids are ignored."""
        ...

    def get(self, collection: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of the ids that exist (missing ids are absent from the result)."""
        ...

    def search(self, collection: str, vector: np.ndarray, k: int, filter: Filter | None = None) -> list[Hit]:
        """The ``k`` nearest records passing ``filter``, closest first (fewer only if fewer match)."""
        ...

    def count(self, collection: str) -> int:
        """The number of records in the collection."""
        ...

    def collections(self) -> list[str]:
        """Names of the collections this store holds, sorted."""
        ...

    def drop_collection(self, name: str) -> None:
        """Deletes the collection and its records (no-op if missing)."""
        ...

    def flush(self) -> None:
        """Makes every write so far durable."""
        ...

    def close(self) -> None:
        """Flushes and releases the store; it cannot be used afterwards."""
        ...

    def __enter__(self) -> VectorStore: ...

    def __exit__(self, *exc: object) -> None:
        """Closes the store."""
        ...


def open_vector_store(url: str | None = None) -> VectorStore:
    """Opens the vector store named by ``url``.

    - ``None`` → ``$PULSERANK_VECTOR_STORE`` if set, else an embedded store under
      ``./out/vectors`` (relative to the working directory), the single-machine default;
    - ``embedded:///abs/dir`` or ``embedded://rel/dir`` → the embedded usearch store in that
      directory (created if missing, reloaded if present);
    - ``http://host:port`` / ``https://host:port`` → Weaviate (gRPC port from ``?grpc_port=`` or
      ``$WEAVIATE_GRPC_PORT``, API key from ``$WEAVIATE_API_KEY``; see ``stores.vector_weaviate``).
    """
    if url is None:
        url = os.environ.get(ENV_VECTOR_STORE) or None
    if url is None:
        from stores.vector_embedded import EmbeddedVectorStore

        return EmbeddedVectorStore(DEFAULT_EMBEDDED_PATH)
    if url.startswith("embedded://"):
        path = url[len("embedded://") :]
        if not path:
            raise ValueError(f"{url!r} names no directory: use embedded:///abs/dir or embedded://rel/dir")
        from stores.vector_embedded import EmbeddedVectorStore

        return EmbeddedVectorStore(path)
    if url.startswith(("http://", "https://")):
        from stores.vector_weaviate import WeaviateVectorStore

        return WeaviateVectorStore(url)
    raise ValueError(f"unknown vector store URL {url!r}: use embedded:///dir or http(s)://host:port (Weaviate)")
