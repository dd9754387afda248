"""The embedded usearch store beyond the shared contract: recall at scale, selective filters,
crash-safe persistence, concurrency, the URL factory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from usearch.index import Index

from stores.vector_embedded import EmbeddedVectorStore
from stores.vector_store import Filter, open_vector_store

N, DIM, CLUSTERS, QUERIES, K = 100_000, 64, 100, 200, 10
ROOT = Path(__file__).resolve().parent.parent


def clustered(rng: np.random.Generator, n: int, centers: np.ndarray, spread: float = 0.5):
    labels = rng.integers(0, len(centers), n)
    return (centers[labels] + spread * rng.normal(size=(n, centers.shape[1]))).astype(np.float32), labels


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """100,000 clustered 64-d vectors in one embedded collection, with a 1 % segment property."""
    rng = np.random.default_rng(42)
    centers = rng.normal(size=(CLUSTERS, DIM)).astype(np.float32)
    x, labels = clustered(rng, N, centers)
    queries, qlabels = clustered(rng, QUERIES, centers)
    ids = [f"i{i}" for i in range(N)]
    props = [{"segment": f"seg-{i % 100}", "cluster": int(lab)} for i, lab in enumerate(labels)]
    store = EmbeddedVectorStore(tmp_path_factory.mktemp("big"))
    store.ensure_collection("items_v1", DIM)
    t0 = time.perf_counter()
    store.upsert("items_v1", ids, x, props)
    build = time.perf_counter() - t0
    yield {"store": store, "x": unit_rows(x), "labels": labels, "q": queries, "qlabels": qlabels, "build": build}
    store.close()


def exact_topk(x: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[int]:
    sims = x @ (q / np.linalg.norm(q))
    if mask is not None:
        sims = np.where(mask, sims, -np.inf)
    top = np.argpartition(-sims, k)[:k]
    return [int(i) for i in top[np.argsort(-sims[top], kind="stable")]]


@pytest.mark.slow
def test_recall_at_10_against_exact_search(big) -> None:
    store = big["store"]
    t0 = time.perf_counter()
    got = [store.search("items_v1", q, K) for q in big["q"]]
    hnsw_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = [exact_topk(big["x"], q, K) for q in big["q"]]
    exact_s = time.perf_counter() - t0
    recall = np.mean([len({h.id for h in g} & {f"i{i}" for i in e}) / K for g, e in zip(got, exact, strict=True)])
    print(
        f"\n{N:,} x {DIM}-d: build {big['build']:.1f} s; {QUERIES} queries: HNSW {QUERIES / hnsw_s:,.0f} q/s, "
        f"exact numpy {QUERIES / exact_s:,.0f} q/s; recall@{K} = {recall:.4f}"
    )
    assert recall >= 0.95
    assert all(len(g) == K for g in got)


@pytest.mark.slow
def test_a_filter_matching_one_percent_still_returns_k(big) -> None:
    store, x = big["store"], big["x"]
    segment = np.arange(N) % 100 == 7
    for q in big["q"][:20]:
        hits = store.search("items_v1", q, K, Filter.eq("segment", "seg-7"))
        assert len(hits) == K
        assert all(h.properties["segment"] == "seg-7" for h in hits)
        assert [h.id for h in hits] == [f"i{i}" for i in exact_topk(x, q, K, segment)]
    assert store.search_paths["exact_subset"] >= 20


@pytest.mark.slow
def test_oversampling_path_keeps_k_and_recall(big, monkeypatch) -> None:
    """Forced past the exact-subset shortcut, the HNSW oversampling answers the same 1 % filter."""
    store, x = big["store"], big["x"]
    monkeypatch.setattr(store, "exact_threshold", 0)
    before = store.search_paths["oversampled"]
    flt = Filter.all_of(Filter.eq("segment", "seg-3"), Filter.not_ids([f"i{i}" for i in range(3, 50_000, 100)]))
    mask = (np.arange(N) % 100 == 3) & (np.arange(N) >= 50_000)
    recalls = []
    for q in big["q"][:20]:
        hits = store.search("items_v1", q, K, flt)
        assert len(hits) == K and all(flt.matches(h.id, h.properties) for h in hits)
        recalls.append(len({h.id for h in hits} & {f"i{i}" for i in exact_topk(x, q, K, mask)}) / K)
    assert store.search_paths["oversampled"] - before == 20
    assert np.mean(recalls) >= 0.9


@pytest.mark.slow
def test_exact_fallback_when_oversampling_finds_too_few(big, monkeypatch) -> None:
    """Matches in a far cluster: HNSW around the query never reaches them; the fallback does."""
    store, x, labels = big["store"], big["x"], big["labels"]
    monkeypatch.setattr(store, "exact_threshold", 0)
    monkeypatch.setattr(store, "max_candidates", 1000)
    before = store.search_paths["exact_fallback"]
    q, qlabel = big["q"][0], int(big["qlabels"][0])
    means = unit_rows(np.stack([x[labels == c].mean(0) for c in range(CLUSTERS)]))
    far = int(np.argmin(means @ (q / np.linalg.norm(q))))
    assert far != qlabel
    hits = store.search("items_v1", q, K, Filter.eq("cluster", far))
    assert store.search_paths["exact_fallback"] == before + 1
    assert [h.id for h in hits] == [f"i{i}" for i in exact_topk(x, q, K, labels == far)]


# -- persistence


def _small_store(path: Path) -> EmbeddedVectorStore:
    s = EmbeddedVectorStore(path)
    s.ensure_collection("items_v1", 4)
    s.upsert("items_v1", ["a", "b"], np.eye(4, dtype=np.float32)[:2], [{"v": 1}, {"v": 1}])
    s.flush()
    return s


def _state(path: Path) -> dict[str, list[float]]:
    with EmbeddedVectorStore(path) as s:
        if "items_v1" not in s.collections():
            return {}
        ids = [f"{c}" for c in "abcdef"]
        return {k: v.round(4).tolist() for k, v in s.get("items_v1", ids).items()}


def test_interrupted_save_before_the_commit_leaves_the_previous_state(tmp_path, monkeypatch) -> None:
    s = _small_store(tmp_path)
    before = _state(tmp_path)
    s.upsert("items_v1", ["c"], np.array([[0, 0, 1, 0]], dtype=np.float32))
    s.delete("items_v1", ["a"])

    real_replace = os.replace

    def crash_at_commit(src, dst):
        if str(dst).endswith("meta.json"):
            raise OSError("simulated crash between temp write and replace")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_at_commit)
    with pytest.raises(OSError, match="simulated crash"):
        s.flush()
    monkeypatch.setattr(os, "replace", real_replace)
    leftovers = sorted(p.name for p in (tmp_path / "items_v1").iterdir())
    assert "meta.json.tmp" in leftovers and "index-00000002.usearch" in leftovers  # the half-done save

    assert _state(tmp_path) == before  # reopening sees generation 1 and removes the leftovers
    assert sorted(p.name for p in (tmp_path / "items_v1").iterdir()) == ["index-00000001.usearch", "meta.json"]

    s.flush()  # the store still holds its writes; a later flush commits them
    s.close()
    assert set(_state(tmp_path)) == {"b", "c"}


def test_a_failed_index_write_leaves_the_previous_state(tmp_path, monkeypatch) -> None:
    s = _small_store(tmp_path)
    before = _state(tmp_path)
    s.upsert("items_v1", ["d"], np.array([[0, 1, 1, 0]], dtype=np.float32))

    def torn_save(self, path_or_buffer=None, progress=None):
        Path(path_or_buffer).write_bytes(b"\x00" * 100)  # half a file, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(Index, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        s.flush()
    monkeypatch.undo()
    assert _state(tmp_path) == before


_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from stores.vector_embedded import EmbeddedVectorStore

    s = EmbeddedVectorStore(sys.argv[1])
    s.ensure_collection("items_v1", 16)
    rng = np.random.default_rng(0)
    for batch in range(10_000):
        ids = [f"{batch}-{j}" for j in range(500)]
        s.upsert("items_v1", ids, rng.normal(size=(500, 16)).astype(np.float32))
        s.delete("items_v1", [f"{batch - 1}-{j}" for j in range(100)])
        s.flush()
        print(batch, flush=True)
    """
)


def test_sigkill_during_writes_never_leaves_an_unloadable_store(tmp_path) -> None:
    """A real crash: a writer process flushing in a loop is SIGKILLed at random moments."""
    rng = np.random.default_rng(1)
    for attempt in range(3):
        path = tmp_path / f"store{attempt}"
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        flushed = -1
        target = int(rng.integers(2, 6))
        while flushed < target:
            line = proc.stdout.readline()
            assert line, "the writer died on its own"
            flushed = int(line)
        time.sleep(float(rng.uniform(0, 0.05)))  # somewhere inside a later upsert/flush
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with EmbeddedVectorStore(path) as s:
            n = s.count("items_v1")
            batches = (n - 100) // 400  # each committed batch adds 500 and deletes 100 of the last
            assert n == 400 * batches + 100 and batches - 1 >= flushed
            assert len(s.get("items_v1", [f"{batches - 1}-{j}" for j in range(500)])) == 500
            assert len(s.search("items_v1", np.ones(16, dtype=np.float32), 5)) == 5


# -- concurrency


def test_concurrent_readers_with_one_writer(tmp_path) -> None:
    rng = np.random.default_rng(3)
    s = EmbeddedVectorStore(tmp_path)
    s.ensure_collection("items_v1", 16)
    groups = [{"g": f"g{i % 5}"} for i in range(2000)]
    s.upsert("items_v1", [f"i{i}" for i in range(2000)], rng.normal(size=(2000, 16)), groups)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        r = np.random.default_rng(threading.get_ident() % 2**32)
        try:
            while not stop.is_set():
                hits = s.search("items_v1", r.normal(size=16), 10, Filter.eq("g", "g2"))
                assert len(hits) == 10 and all(h.properties["g"] == "g2" for h in hits)
                assert len(s.get("items_v1", ["i1", "i2"])) == 2
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for t in readers:
        t.start()
    for round_ in range(30):  # one writer: moves, re-labels, adds and deletes
        ids = [f"i{i}" for i in range(round_ * 50, round_ * 50 + 200)]
        s.upsert("items_v1", ids, rng.normal(size=(200, 16)), [{"g": f"g{i % 5}"} for i in range(200)])
        s.delete("items_v1", [f"x{round_ - 1}"])
        s.upsert("items_v1", [f"x{round_}"], rng.normal(size=(1, 16)))
        if round_ % 10 == 0:
            s.flush()
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors[0]
    assert s.count("items_v1") == 2001
    s.close()


# -- filter semantics: numpy masks agree with the reference Filter.matches

_props = st.fixed_dictionaries(
    {},
    optional={
        "seg": st.sampled_from(["a", "b", "c"]),
        "tags": st.lists(st.sampled_from(["x", "y", "z"]), max_size=3),
        "n": st.integers(0, 5),
        "f": st.booleans(),
    },
)
_leaf = st.one_of(
    st.builds(Filter.eq, st.just("seg"), st.sampled_from(["a", "b", "zz"])),
    st.builds(Filter.eq, st.just("tags"), st.sampled_from(["x", "z"])),
    st.builds(Filter.eq, st.just("n"), st.integers(0, 5)),
    st.builds(Filter.eq, st.just("f"), st.booleans()),
    st.builds(Filter.any_of, st.sampled_from(["seg", "tags"]), st.lists(st.sampled_from("abxyz"), min_size=1)),
    st.builds(Filter.range, st.just("n"), st.integers(0, 5), st.one_of(st.none(), st.integers(0, 5))),
    st.builds(Filter.not_ids, st.lists(st.sampled_from([f"i{i}" for i in range(30)]), max_size=10)),
)
_filter = st.one_of(_leaf, st.lists(_leaf, max_size=3).map(lambda fs: Filter.all_of(*fs)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(props=st.lists(_props, min_size=1, max_size=30), flt=_filter, threshold=st.sampled_from([0, 2048]))
def test_filter_masks_agree_with_the_reference(props, flt, threshold) -> None:
    with tempfile.TemporaryDirectory() as d:
        s = EmbeddedVectorStore(d, exact_threshold=threshold)
        s.ensure_collection("t_v1", 4)
        ids = [f"i{i}" for i in range(len(props))]
        vecs = np.random.default_rng(len(props)).normal(size=(len(props), 4)) + 0.1
        s.upsert("t_v1", ids, vecs, props)
        s.delete("t_v1", ids[::7])  # deleted items must never come back through a filter
        live = {i: p for j, (i, p) in enumerate(zip(ids, props, strict=True)) if j % 7}
        schema_props = {k for p in props for k in p}
        known = all(getattr(leaf, "prop", None) in (None, *schema_props) for leaf in flt.leaves())
        expected = {i for i, p in live.items() if flt.matches(i, p)} if known else set()
        hits = s.search("t_v1", np.ones(4), len(props), flt)
        assert {h.id for h in hits} == expected


# -- the URL factory


def test_open_vector_store_urls(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("PULSERANK_VECTOR_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    with open_vector_store() as s:
        assert isinstance(s, EmbeddedVectorStore) and s.path == Path("out/vectors")
        assert (tmp_path / "out" / "vectors").is_dir()
    with open_vector_store(f"embedded://{tmp_path}/abs") as s:
        assert s.path == tmp_path / "abs"
    with open_vector_store("embedded://rel/dir") as s:
        assert s.path == Path("rel/dir")
    monkeypatch.setenv("PULSERANK_VECTOR_STORE", f"embedded://{tmp_path}/from-env")
    with open_vector_store() as s:
        assert s.path == tmp_path / "from-env"
    for bad in ("redis://localhost", "/just/a/path", "embedded://"):
        with pytest.raises(ValueError):
            open_vector_store(bad)


def test_versioned_names() -> None:
    from stores.vector_store import versioned

    assert versioned("items", 3) == "items_v3"
    assert versioned("users_collab", "hash_v0") == "users_collab_vhash_v0"
    with pytest.raises(ValueError):
        versioned("Items", 1)


def test_flush_rebuilds_a_graph_worn_by_churn(tmp_path) -> None:
    """Rewriting every vector a few times wears the HNSW graph down; flush rebuilds it."""
    rng = np.random.default_rng(5)
    n, dim = 5_000, 32
    ids = [f"i{i}" for i in range(n)]
    queries = rng.normal(size=(100, dim)).astype(np.float32)

    def recall(store: EmbeddedVectorStore, x: np.ndarray) -> float:
        xn = unit_rows(x)
        found = [{h.id for h in store.search("items_v1", q, K)} for q in queries]
        exact = [{ids[i] for i in exact_topk(xn, q, K)} for q in queries]
        return float(np.mean([len(f & e) / K for f, e in zip(found, exact, strict=True)]))

    s = EmbeddedVectorStore(tmp_path)
    s.ensure_collection("items_v1", dim)
    for _ in range(4):
        x = rng.normal(size=(n, dim)).astype(np.float32)
        s.upsert("items_v1", ids, x)
    worn = recall(s, x)
    s.flush()
    rebuilt = recall(s, x)
    s.close()
    with EmbeddedVectorStore(tmp_path) as reopened:
        again = recall(reopened, x)
    print(f"\nrecall@{K}: after 3 full rewrites {worn:.3f}, rebuilt by flush {rebuilt:.3f}, reopened {again:.3f}")
    assert rebuilt > worn
    assert rebuilt >= 0.93 and again == rebuilt
