"""The edge's ONNX scorer: loads the registry's edge ranker, re-ranks with the last 10 interactions, hot-swaps.

Pools are realistic: the suite's cached `trained_registry`, whose origin ranker scores every
catalogue item for each synthetic user (as deploy and the origin compute its inputs), and each
user's last 10 distinct positives, most recent first (what the edge ranker was trained on).
Registries that a test changes are copies: the shared cached fixture is never written.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from models import registry
from serving.edge_scorer import EDGE_RANKER, EdgeScorer, NoEdgeModelError

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Pool:
    user: str
    item_ids: list[str]
    origin: np.ndarray  # the origin ranker's probability per item
    recent: list[str]  # the user's last 10 distinct positives, most recent first


@functools.lru_cache(maxsize=2)
def fixture_pools(root: str, data_dir: str) -> tuple[Pool, ...]:
    """Per synthetic user: every catalogue item scored by the version's origin ranker, and the user's
    recent items. Uses deploy's own input builders, so the ranker sees what the origin feeds it."""
    import onnxruntime as ort

    from models.examples import recent_unique
    from pipelines import deploy

    models = deploy.load_models(root, None)
    log = deploy.read_log([f"{data_dir}/*.jsonl"], 10**14)
    ids = log.item_ids()
    content = deploy.run_model(models.content, deploy.catalog_inputs(ids, log.catalog, models.contract), "content")
    users = sorted(log.positives)
    embeddings = deploy.user_embeddings(models, log, users)
    ranker = ort.InferenceSession(models.version.file_path("ranker.onnx"), providers=["CPUExecutionProvider"])
    cats = deploy._strings([deploy.padded(list(log.catalog[i].attributes.categories), models.categories_len)
                            for i in ids])
    n, pools = len(ids), []
    for user, embedding in zip(users, embeddings, strict=True):
        context = deploy.serving_row(user, log.history(user), log.now_ms)["context"]
        feed = {"user_embedding": np.repeat(embedding[None], n, 0), "item_id": deploy._strings(ids),
                "item_categories": cats, "content": content,
                "context": np.repeat(np.array([context], np.float32), n, 0)}
        p = ranker.run(["probability"], feed)[0][:, 0]
        pools.append(Pool(user, list(ids), p, recent_unique(log.history(user), 10)))
    return tuple(pools)


@pytest.fixture(scope="module")
def pools(trained_registry) -> tuple[Pool, ...]:
    return fixture_pools(trained_registry.root, str(trained_registry.data_dir))


@pytest.fixture(scope="module")
def scorer(trained_registry) -> EdgeScorer:
    return EdgeScorer(trained_registry.root)


@pytest.fixture
def own_registry(trained_registry, tmp_path) -> str:
    root = tmp_path / "registry"
    shutil.copytree(trained_registry.root, root)
    return str(root)


def _copy_version(root: str, version: str, name: str, replace: dict[str, bytes] | None = None,
                  tmp: Path | None = None) -> str:
    """Publishes `version`'s files under `name` (some replaced by the given bytes) and promotes it."""
    old = registry.load_version(root, version)
    files = {f: old.file_path(f) for f in old.files}
    for f, data in (replace or {}).items():
        files[f] = str(tmp / f)
        Path(files[f]).write_bytes(data)
    meta = {k: v for k, v in old.metadata.items() if k not in ("version", "files")}
    registry.publish(root, name, files, meta)
    registry.promote(root, name)
    return name


def _order(p: np.ndarray, k: int = 20) -> list[int]:
    return list(np.argsort(-p, kind="stable")[:k])


def test_scorer_loads_the_production_edge_ranker_and_scores(scorer, trained_registry, pools) -> None:
    assert scorer.version == trained_registry.version
    pool = pools[0]
    p = scorer.score(pool.recent, pool.item_ids, pool.origin)
    assert p.shape == (len(pool.item_ids),) and p.dtype == np.float32
    assert np.all((p > 0) & (p < 1))
    # the edge ranker re-ranks the origin's list: it follows the origin's score, it does not ignore it
    assert np.corrcoef(p, pool.origin)[0, 1] > 0.5
    assert scorer.score(pool.recent, [], np.zeros(0)).shape == (0,)


def test_changing_the_last_10_interactions_changes_the_order(scorer, pools) -> None:
    pool = pools[0]
    mine = scorer.score(pool.recent, pool.item_ids, pool.origin)
    np.testing.assert_array_equal(mine, scorer.score(pool.recent, pool.item_ids, pool.origin))  # deterministic
    others = [q.recent for q in pools[1:] if q.recent != pool.recent]
    changed = [r for r in others if _order(scorer.score(r, pool.item_ids, pool.origin)) != _order(mine)]
    assert changed, "no other user's last 10 interactions changed the top-20 order of this pool"
    # the same pool, the same origin scores: only `recent` differs, and the order moved
    other = scorer.score(changed[0], pool.item_ids, pool.origin)
    assert _order(other) != _order(mine)
    assert not np.array_equal(other, mine)
    # the 11th and older interactions are not read
    full = next(q for q in pools if len(q.recent) == 10)
    np.testing.assert_array_equal(scorer.score(full.recent + ["item-00000"], full.item_ids, full.origin),
                                  scorer.score(full.recent, full.item_ids, full.origin))


def test_a_promoted_version_is_swapped_in(own_registry, trained_registry, pools) -> None:
    edge = EdgeScorer(own_registry)
    pool = pools[0]
    before = edge.score(pool.recent, pool.item_ids, pool.origin)
    assert edge.refresh() is False  # the alias did not move
    new = _copy_version(own_registry, trained_registry.version, "20990101T000000Z-edgecopy")
    assert edge.refresh() is True
    assert edge.version == new
    np.testing.assert_allclose(edge.score(pool.recent, pool.item_ids, pool.origin), before)  # same model, new name
    registry.rollback(own_registry)
    assert edge.refresh() is True and edge.version == trained_registry.version


def test_a_corrupt_edge_ranker_is_refused_and_the_old_one_keeps_scoring(own_registry, trained_registry, pools,
                                                                         tmp_path, caplog) -> None:
    edge = EdgeScorer(own_registry)
    pool = pools[0]
    before = edge.score(pool.recent, pool.item_ids, pool.origin)
    bad = _copy_version(own_registry, trained_registry.version, "20990101T000000Z-corrupt",
                        {EDGE_RANKER: b"not an onnx model"}, tmp_path)
    with caplog.at_level(logging.WARNING, logger="serving.edge_scorer"):
        assert edge.refresh() is False
        assert edge.refresh() is False  # refused once, not retried (nor logged) on every poll
    assert edge.version == trained_registry.version
    assert caplog.text.count(f"refusing {bad}") == 1
    np.testing.assert_array_equal(edge.score(pool.recent, pool.item_ids, pool.origin), before)
    good = _copy_version(own_registry, trained_registry.version, "20990102T000000Z-good")
    assert edge.refresh() is True and edge.version == good


def test_bad_input_names_the_field(scorer, pools, tmp_path) -> None:
    pool = pools[0]
    with pytest.raises(ValueError, match="origin_scores"):
        scorer.score(pool.recent, pool.item_ids, pool.origin[:-1])
    with pytest.raises(ValueError, match="origin_scores"):
        scorer.score(pool.recent, pool.item_ids, pool.origin + 1.0)
    with pytest.raises(ValueError, match="item_ids"):
        scorer.score(pool.recent, [1, 2], np.zeros(2))
    with pytest.raises(ValueError, match="recent"):
        scorer.score("item-00001", pool.item_ids, pool.origin)
    empty = EdgeScorer(str(tmp_path / "no-registry"))
    assert empty.version is None
    with pytest.raises(NoEdgeModelError):
        empty.score([], ["item-00001"], np.array([0.5]))


def test_the_edge_modules_never_import_tensorflow() -> None:
    code = ("import sys, json; import serving.edge_scorer, serving.edge_bandit; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
