"""One contract, every backend: the embedded usearch store always, Weaviate when ``WEAVIATE_URL`` is set.

On a shared Weaviate server each test works in collections with a unique prefix and drops them
afterwards; the embedded store gets a fresh directory per test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from stores.vector_store import CollectionNotFoundError, Filter, VectorStore, versioned

WEAVIATE_SKIP = "WEAVIATE_URL not set: no Weaviate server can run here; the embedded backend runs the same contract"


@dataclass
class Backend:
    name: str
    open: Callable[[], VectorStore]  # opens the same store again (a restart)
    prefix: str  # prepended to collection names (isolation on a shared server)

    def c(self, base: str) -> str:
        return self.prefix + base


@pytest.fixture(params=["embedded", "weaviate"])
def backend(request: pytest.FixtureRequest, tmp_path) -> Iterator[Backend]:
    if request.param == "embedded":
        from stores.vector_embedded import EmbeddedVectorStore

        yield Backend("embedded", lambda: EmbeddedVectorStore(tmp_path / "vectors"), "")
        return
    url = os.environ.get("WEAVIATE_URL")
    if not url:
        pytest.skip(WEAVIATE_SKIP)
    from stores.vector_weaviate import WeaviateVectorStore

    prefix = f"t{uuid.uuid4().hex[:10]}_"
    yield Backend("weaviate", lambda: WeaviateVectorStore(url), prefix)
    with WeaviateVectorStore(url) as cleanup:
        for name in cleanup.collections():
            if name.startswith(prefix):
                cleanup.drop_collection(name)


@pytest.fixture
def store(backend: Backend) -> Iterator[VectorStore]:
    s = backend.open()
    yield s
    s.close()


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def e(i: int, dim: int = 8) -> np.ndarray:
    v = np.full(dim, 0.01, dtype=np.float32)
    v[i] = 1.0
    return v


def test_is_a_vector_store(store: VectorStore) -> None:
    assert isinstance(store, VectorStore)


def test_upsert_then_get(store: VectorStore, backend: Backend) -> None:
    c = backend.c("items_v1")
    store.ensure_collection(c, 8)
    store.ensure_collection(c, 8)  # idempotent
    vecs = np.stack([e(0), e(1), 3 * e(2)])
    store.upsert(c, ["a", "b", "c"], vecs)
    got = store.get(c, ["a", "c", "missing"])
    assert set(got) == {"a", "c"}
    np.testing.assert_allclose(got["c"], unit(e(2)), atol=1e-6)  # cos stores unit vectors
    assert got["a"].dtype == np.float32 and got["a"].shape == (8,)
    assert store.count(c) == 3
    hits = store.search(c, e(1), 1)
    assert [h.id for h in hits] == ["b"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_duplicate_ids_in_one_upsert_last_wins(store: VectorStore, backend: Backend) -> None:
    c = backend.c("items_v1")
    store.ensure_collection(c, 8)
    store.upsert(c, ["a", "a"], np.stack([e(0), e(5)]), [{"n": 1}, {"n": 2}])
    assert store.count(c) == 1
    np.testing.assert_allclose(store.get(c, ["a"])["a"], unit(e(5)), atol=1e-6)
    assert store.search(c, e(5), 1)[0].properties == {"n": 2}


def test_upsert_moves_the_vector_and_replaces_properties(store: VectorStore, backend: Backend) -> None:
    c = backend.c("items_v1")
    store.ensure_collection(c, 8)
    store.upsert(c, ["a", "b", "c"], np.stack([e(0), e(1), e(2)]), [{"segment": "s1", "tags": ["x"]}, {}, {}])
    assert store.search(c, e(0), 1)[0].id == "a"
    store.upsert(c, ["a"], e(3)[None, :], [{"segment": "s2"}])
    assert store.count(c) == 3
    top = store.search(c, e(3), 1)[0]
    assert (top.id, top.properties) == ("a", {"segment": "s2"})
    assert top.score == pytest.approx(1.0, abs=1e-5)
    moved_away = {h.id: h.score for h in store.search(c, e(0), 3)}
    assert moved_away["a"] < 0.1  # no longer near its old place
    assert store.search(c, e(3), 3, Filter.eq("segment", "s1")) == []
    assert store.search(c, e(3), 3, Filter.any_of("tags", ["x"])) == []
    np.testing.assert_allclose(store.get(c, ["a"])["a"], unit(e(3)), atol=1e-6)


def test_delete_removes(store: VectorStore, backend: Backend) -> None:
    c = backend.c("items_v1")
    store.ensure_collection(c, 8)
    store.upsert(c, ["a", "b", "c"], np.stack([e(0), e(1), e(2)]))
    store.delete(c, ["b", "never-there"])
    assert store.count(c) == 2
    assert store.get(c, ["b"]) == {}
    assert "b" not in [h.id for h in store.search(c, e(1), 3)]
    store.delete(c, [])
    store.upsert(c, ["b"], e(1)[None, :])  # an id can come back
    assert store.search(c, e(1), 1)[0].id == "b"


# -- properties and filters: each backend must return exactly what Filter.matches says.


def _catalog(rng: np.random.Generator, n: int = 60, dim: int = 8):
    cats = ["Comedy", "Drama", "Horror", "Action"]
    ids = [f"item-{i}" for i in range(n)]
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    props = [
        {
            "segment": f"seg-{i % 3}",
            "categories": sorted({cats[i % 4], cats[(i * 7) % 4]}),
            "price": float(i) + 0.5,
            "year": 1990 + i % 20,
            "fresh": i % 2 == 0,
        }
        for i in range(n)
    ]
    return ids, vecs, props


FILTERS = {
    "eq_text": Filter.eq("segment", "seg-1"),
    "eq_int": Filter.eq("year", 1995),
    "eq_bool": Filter.eq("fresh", True),
    "eq_list_element": Filter.eq("categories", "Horror"),
    "any_of": Filter.any_of("categories", ["Comedy", "Drama"]),
    "any_of_on_text": Filter.any_of("segment", ["seg-0", "seg-2"]),
    "not_ids": Filter.not_ids([f"item-{i}" for i in range(0, 60, 2)]),
    "range": Filter.range("price", 10, 20.5),
    "range_int_float_bounds": Filter.range("year", 1994.5, 1997),
    "range_open_hi": Filter.range("price", lo=50),
    "range_open_lo": Filter.range("year", hi=1992),
    "all_of": Filter.all_of(
        Filter.eq("segment", "seg-0"),
        Filter.any_of("categories", ["Drama"]),
        Filter.range("price", 5, 55),
        Filter.not_ids(["item-12"]),
    ),
    "all_of_empty": Filter.all_of(),
}


@pytest.mark.parametrize("name", FILTERS)
def test_filters_return_exactly_the_matching_items(store: VectorStore, backend: Backend, name: str) -> None:
    rng = np.random.default_rng(7)
    ids, vecs, props = _catalog(rng)
    c = backend.c("items_v1")
    store.ensure_collection(c, vecs.shape[1])
    store.upsert(c, ids, vecs, props)
    flt = FILTERS[name]
    expected = {i for i, p in zip(ids, props, strict=True) if flt.matches(i, p)}
    assert expected, "a filter that matches nothing proves little"
    q = rng.normal(size=vecs.shape[1]).astype(np.float32)

    hits = store.search(c, q, len(ids), flt)
    assert {h.id for h in hits} == expected
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    for h in hits:
        assert flt.matches(h.id, h.properties)

    # the top 5 are the exact top 5 among the matching items, with cosine scores
    sims = {i: float(unit(v) @ unit(q)) for i, v in zip(ids, vecs, strict=True) if i in expected}
    top5 = sorted(sims, key=sims.get, reverse=True)[:5]
    hits5 = store.search(c, q, 5, flt)
    assert [h.id for h in hits5] == top5
    for h in hits5:
        assert h.score == pytest.approx(sims[h.id], abs=1e-5)


def test_properties_round_trip(store: VectorStore, backend: Backend) -> None:
    c = backend.c("items_v1")
    store.ensure_collection(c, 8)
    props = {"title": "Toy Story", "categories": ["Animation", "Comedy"], "year": 1995, "price": 2.5, "fresh": False}
    store.upsert(c, ["a"], e(0)[None, :], [props])
    assert store.search(c, e(0), 1)[0].properties == props


def test_property_types_are_fixed_by_first_write(store: VectorStore, backend: Backend) -> None:
    c = backend.c("items_v1")
    store.ensure_collection(c, 8)
    store.upsert(c, ["a"], e(0)[None, :], [{"year": 1995, "price": 2.5}])
    store.upsert(c, ["b"], e(1)[None, :], [{"price": 3}])  # an int widens into a float property
    assert store.search(c, e(1), 1)[0].properties == {"price": 3.0}
    with pytest.raises(ValueError):
        store.upsert(c, ["c"], e(2)[None, :], [{"year": "nineteen"}])
    with pytest.raises(ValueError):
        store.upsert(c, ["c"], e(2)[None, :], [{"year": 1995.5}])
    with pytest.raises(ValueError):
        store.search(c, e(0), 3, Filter.eq("year", "1995"))
    with pytest.raises(ValueError):
        store.search(c, e(0), 3, Filter.any_of("year", ["1995"]))
    assert store.count(c) == 2


def test_filter_on_an_unknown_property_matches_nothing(store: VectorStore, backend: Backend) -> None:
    c = backend.c("items_v1")
    store.ensure_collection(c, 8)
    store.upsert(c, ["a"], e(0)[None, :], [{"segment": "s1"}])
    assert store.search(c, e(0), 3, Filter.eq("genre", "x")) == []
    assert store.search(c, e(0), 3, Filter.all_of(Filter.eq("segment", "s1"), Filter.range("price", 1))) == []


def test_k_larger_than_the_collection(store: VectorStore, backend: Backend) -> None:
    c = backend.c("items_v1")
    store.ensure_collection(c, 8)
    assert store.search(c, e(0), 5) == []
    store.upsert(c, ["a", "b"], np.stack([e(0), e(1)]))
    assert [h.id for h in store.search(c, e(0), 10)] == ["a", "b"]
    assert store.search(c, e(0), 0) == []


@pytest.mark.parametrize(
    ("metric", "score"),
    [
        ("cos", lambda x, q: float(unit(x) @ unit(q))),
        ("ip", lambda x, q: float(x @ q)),
        ("l2sq", lambda x, q: -float(((x - q) ** 2).sum())),
    ],
)
def test_scores_are_similarities(store: VectorStore, backend: Backend, metric: str, score) -> None:
    c = backend.c(f"m_{metric}_v1")
    store.ensure_collection(c, 4, metric)
    x = np.array([[1.0, 2.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.5], [-1.0, 0.0, 0.0, 3.0]], dtype=np.float32)
    store.upsert(c, ["a", "b", "c"], x)
    q = np.array([0.5, 1.0, 0.2, 0.0], dtype=np.float32)
    hits = store.search(c, q, 3)
    expected = {i: score(v, q) for i, v in zip("abc", x, strict=True)}
    assert [h.id for h in hits] == sorted(expected, key=expected.get, reverse=True)
    for h in hits:
        assert h.score == pytest.approx(expected[h.id], rel=1e-4, abs=1e-4)


def test_dimension_and_metric_mismatch_raise(store: VectorStore, backend: Backend) -> None:
    c = backend.c("items_v1")
    store.ensure_collection(c, 8)
    with pytest.raises(ValueError):
        store.ensure_collection(c, 16)
    with pytest.raises(ValueError):
        store.ensure_collection(c, 8, "l2sq")
    with pytest.raises(ValueError):
        store.upsert(c, ["a"], np.ones((1, 5), dtype=np.float32))
    with pytest.raises(ValueError):
        store.upsert(c, ["a", "b"], np.ones((1, 8), dtype=np.float32))
    with pytest.raises(ValueError):
        store.upsert(c, ["a"], np.full((1, 8), np.nan, dtype=np.float32))
    with pytest.raises(ValueError):
        store.upsert(c, ["a"], np.zeros((1, 8), dtype=np.float32))  # no direction under cosine
    store.upsert(c, ["a"], np.ones((1, 8), dtype=np.float32))
    with pytest.raises(ValueError):
        store.search(c, np.ones(3, dtype=np.float32), 1)
    assert store.count(c) == 1


def test_unknown_collections_and_bad_names(store: VectorStore, backend: Backend) -> None:
    with pytest.raises(CollectionNotFoundError):
        store.upsert(backend.c("nothing_v1"), ["a"], e(0)[None, :])
    with pytest.raises(KeyError):
        store.search(backend.c("nothing_v1"), e(0), 1)
    with pytest.raises(ValueError):
        store.ensure_collection("Items-v1", 8)
    with pytest.raises(ValueError):
        store.ensure_collection(backend.c("items_v1"), 8, "hamming")
    store.drop_collection(backend.c("nothing_v1"))  # no-op


def test_versioned_collections_are_independent(store: VectorStore, backend: Backend) -> None:
    v3, v4, users = backend.c(versioned("items", 3)), backend.c(versioned("items", 4)), backend.c("users_v3")
    assert v3.endswith("items_v3")
    store.ensure_collection(v3, 8)
    store.ensure_collection(v4, 4)
    store.ensure_collection(users, 8)
    store.upsert(v3, ["a", "b"], np.stack([e(0), e(1)]), [{"v": 3}, {"v": 3}])
    store.upsert(v4, ["a"], np.ones((1, 4), dtype=np.float32), [{"v": 4}])
    store.upsert(users, ["a"], e(7)[None, :])
    assert (store.count(v3), store.count(v4), store.count(users)) == (2, 1, 1)
    assert store.search(v4, np.ones(4), 1)[0].properties == {"v": 4}
    store.delete(v3, ["a"])
    assert store.get(v4, ["a"]).keys() == {"a"} and store.get(users, ["a"]).keys() == {"a"}
    assert {v3, v4, users} <= set(store.collections())
    store.drop_collection(v3)
    assert v3 not in store.collections()
    assert store.count(v4) == 1
    with pytest.raises(CollectionNotFoundError):
        store.count(v3)
    store.ensure_collection(v3, 16)  # a dropped name starts afresh
    assert store.count(v3) == 0


def test_reload_after_restart_keeps_upserts_and_deletes(backend: Backend) -> None:
    c, other = backend.c("items_v2"), backend.c("users_v2")
    s = backend.open()
    s.ensure_collection(c, 8)
    s.ensure_collection(other, 8)
    s.upsert(c, ["a", "b", "c"], np.stack([e(0), e(1), e(2)]), [{"segment": "s1"}, {"segment": "s2"}, {}])
    s.flush()
    s.delete(c, ["b"])
    s.upsert(c, ["a"], e(4)[None, :], [{"segment": "s3", "tags": ["x"]}])
    s.upsert(c, ["d"], e(5)[None, :], [{"segment": "s1"}])
    s.close()

    s = backend.open()
    try:
        assert {c, other} <= set(s.collections())
        assert s.count(c) == 3
        assert s.get(c, ["b"]) == {}
        np.testing.assert_allclose(s.get(c, ["a"])["a"], unit(e(4)), atol=1e-6)
        top = s.search(c, e(4), 1)[0]
        assert (top.id, top.properties) == ("a", {"segment": "s3", "tags": ["x"]})
        assert [h.id for h in s.search(c, e(5), 5, Filter.eq("segment", "s1"))] == ["d"]
        with pytest.raises(ValueError):
            s.ensure_collection(c, 4)
        s.upsert(c, ["e"], e(6)[None, :])  # writable after reopening
        assert s.count(c) == 4
    finally:
        s.close()
