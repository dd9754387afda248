"""After training: `pipelines/deploy` against real Redis, the embedded vector store and a trained version.

The version comes from the suite's cached `trained_registry` (one `pulserank train` run on a small
synthetic log). Expected values are recomputed here from the raw log and the version's ONNX files
(onnxruntime), row by row, so a misaligned batch or a wrong user selection shows.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import registry
from models.examples import POSITIVE_TYPES, history_matrix, serving_row
from pipelines import replay
from pipelines.deploy import DAY_MS, DeployError, deploy, rederive_bandit
from schemas import keys
from schemas.clock import AS_OF_ENV, Clock
from schemas.content_contract import MODEL_FILE, ContentContract, content_inputs
from schemas.events import EventType, parse_event
from schemas.features import FeatureConfig
from serving.active_model import ActiveModel
from stores import deployment
from stores.feature_store import FeatureStore, Write, decode_decayed, encode_decayed
from stores.vector_store import open_vector_store
from transforms.summaries import seen as seen_set
from transforms.summaries.decay import Decayed, merge

REPO = Path(__file__).resolve().parent.parent


# -- the log, read independently of pipelines/deploy ---------------------------------------------


class Log:
    def __init__(self, data_dir: Path) -> None:
        self.glob = str(data_dir / "*.jsonl")
        self.events = []
        for path in sorted(data_dir.glob("*.jsonl")):
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):  # the non-event files beside the log
                    self.events.append(parse_event(line))
        self.end = max(e.ts for e in self.events)
        self.catalog = {e.item_id: e for e in sorted(self.events, key=lambda e: e.ts) if e.type is EventType.ITEM}
        self.last_seen: dict[str, int] = {}
        self.positives: dict[str, list] = {}
        self.popularity: Counter = Counter()
        for e in self.events:
            if e.user_id is None:
                continue
            self.last_seen[e.user_id] = max(self.last_seen.get(e.user_id, 0), e.ts)
            if e.type in POSITIVE_TYPES:
                self.positives.setdefault(e.user_id, []).append((e.ts, e.event_id, e.item_id))
                self.popularity[e.item_id] += 1
        self.items = sorted(set(self.catalog) | set(self.popularity))

    def history(self, user: str) -> list[str]:
        return [i for _, _, i in sorted(self.positives.get(user, ()))]


@pytest.fixture(scope="module")
def log(trained_registry) -> Log:
    return Log(Path(trained_registry.data_dir))


def _session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def onnx_models(trained_registry) -> dict:
    v = registry.load_version(trained_registry.root, trained_registry.version)
    return {"version": v, "contract": ContentContract.from_metadata(v.metadata),
            **{name: _session(v.file_path(name)) for name in (MODEL_FILE, "item_tower.onnx", "user_tower.onnx")}}


def _store(path: Path):
    return open_vector_store(f"embedded://{path}")


# -- items and users -----------------------------------------------------------------------------


def test_first_deployment_writes_items_users_and_collections(trained_registry, log, onnx_models, redis, redis_url,
                                                             tmp_path):
    clock = Clock(log.end)
    report = deploy(trained_registry.root, None, log.glob, redis_url, f"embedded://{tmp_path / 'v'}", 3.0,
                    clock=clock, bandit=False)
    version = trained_registry.version
    assert report.version == version and report.first_deployment
    assert report.items == len(log.items) and report.users == report.users_embedded == len(log.last_seen)
    assert report.collections == {kind: keys.vector_collection(kind, version)
                                  for kind in (keys.ITEMS, keys.CONTENT, keys.USERS)}
    assert deployment.is_deployed(redis, version)

    feats = deployment.read_item_features(redis, version, log.items)
    assert sorted(feats) == log.items
    ids = log.items
    # the content and item towers, run here on the raw catalogue, item by item
    contract = onnx_models["contract"]
    events = [log.catalog[i] for i in ids if i in log.catalog]
    feed = content_inputs(events, contract)
    content = onnx_models[MODEL_FILE].run(["content"], feed)[0]
    for row, e in enumerate(events):
        np.testing.assert_allclose(feats[e.item_id].content, content[row], rtol=1e-5, atol=1e-6)
    emb = onnx_models["item_tower.onnx"].run(["embedding"], {
        "item_id": np.array(ids, dtype=object), "content": np.stack([feats[i].content for i in ids])})[0]
    spec = onnx_models["version"].metadata["feature_spec"]
    for row, item in enumerate(ids):
        f = feats[item]
        np.testing.assert_allclose(f.embedding, emb[row], rtol=1e-5, atol=1e-6)
        cats = list(log.catalog[item].attributes.categories) if item in log.catalog else []
        assert list(f.categories) == cats + [""] * (spec["categories_len"] - len(cats))
        assert f.popularity == log.popularity[item] and f.as_of_ms == log.end

    with _store(tmp_path / "v") as store:
        assert store.count(report.collections[keys.ITEMS]) == len(ids)
        assert store.count(report.collections[keys.CONTENT]) == len(ids)
        assert store.count(report.collections[keys.USERS]) == len(log.last_seen)
        stored = store.get(report.collections[keys.ITEMS], ids)
        for item in ids:  # an inner-product collection keeps the towers' magnitudes (and the item bias)
            np.testing.assert_allclose(stored[item], feats[item].embedding, atol=1e-6)

        users = sorted(log.last_seen)
        rows = [serving_row(u, log.history(u), log.end, spec["serving_history_len"]) for u in users]
        expected = onnx_models["user_tower.onnx"].run(["embedding"], {
            "user_id": np.array(users, dtype=object),
            "history": np.array(history_matrix([r["history"] for r in rows]), dtype=object),
            "context": np.array([r["context"] for r in rows], dtype=np.float32)})[0]
        got = deployment.read_user_embeddings(redis, version, users)
        assert sorted(got) == users
        for row, user in enumerate(users):
            # stored as float16: within half a float16 step of the tower's float32 output
            np.testing.assert_allclose(got[user][0], expected[row], rtol=2**-11 + 1e-5, atol=1e-6)
            assert got[user][1] == log.end
            # the seen set serving drops from candidates: every positive item of the user
            assert set(seen_set.decode(redis.get(keys.user_seen(user)))) == set(log.history(user))
        # retrieval from the store agrees with the dot products of what Redis holds
        matrix = np.stack([feats[i].embedding for i in ids])
        for user in users[:5]:
            hits = store.search(report.collections[keys.ITEMS], got[user][0], k=1)
            assert hits[0].id == ids[int(np.argmax(matrix @ got[user][0]))]


def test_later_runs_embed_only_inactive_users(trained_registry, log, redis, redis_url, tmp_path):
    store = f"embedded://{tmp_path / 'v'}"
    version = trained_registry.version
    first = deploy(trained_registry.root, version, log.glob, redis_url, store, 3.0, clock=Clock(log.end),
                   bandit=False, users_collection=False)
    assert first.first_deployment and first.users_embedded == len(log.last_seen)
    later = log.end + DAY_MS
    second = deploy(trained_registry.root, version, log.glob, redis_url, store, 3.0, clock=Clock(later),
                    bandit=False, users_collection=False)
    inactive = {u for u, ts in log.last_seen.items() if ts < later - 3 * DAY_MS}
    assert 0 < len(inactive) < len(log.last_seen)
    assert not second.first_deployment and second.users_embedded == second.users_inactive == len(inactive)
    got = deployment.read_user_embeddings(redis, version, sorted(log.last_seen))
    assert {u for u, (_, as_of) in got.items() if as_of == later} == inactive
    assert {u for u, (_, as_of) in got.items() if as_of == log.end} == set(log.last_seen) - inactive
    with _store(tmp_path / "v") as s:  # upserts by id: a second run adds no record
        assert s.count(keys.vector_collection(keys.ITEMS, version)) == len(log.items)
        assert keys.vector_collection(keys.USERS, version) not in s.collections()


def test_bad_arguments_are_named(trained_registry, log, redis_url, tmp_path):
    with pytest.raises(DeployError, match="--input: no file matches"):
        deploy(trained_registry.root, None, str(tmp_path / "none-*.jsonl"), redis_url, None, 3.0)
    with pytest.raises(DeployError, match="no 'production' version"):
        deploy(str(tmp_path / "empty-registry"), None, log.glob, redis_url, None, 3.0)
    with pytest.raises(DeployError, match="not published"):
        deploy(trained_registry.root, "no-such-version", log.glob, redis_url, None, 3.0)
    with pytest.raises(DeployError, match="no event at or before"):
        deploy(trained_registry.root, None, log.glob, redis_url, None, 3.0, clock=Clock(log.end - 365 * DAY_MS))
    with pytest.raises(DeployError, match="--inactive-days"):
        deploy(trained_registry.root, None, log.glob, redis_url, None, -1.0)


# -- bandit posteriors ---------------------------------------------------------------------------


def _bandits(client) -> dict:
    return {k: client.hgetall(k) for k in sorted(client.scan_iter(match=keys.segment("*", "bandit")))}


def test_rederived_bandit_equals_replay(log, redis, redis_url, tmp_path, monkeypatch):
    monkeypatch.setenv(AS_OF_ENV, str(log.end))  # replay pins the process clock: undone after the test
    events = str(Path(log.glob).with_name("events.jsonl"))
    argv = ["--input", events, "--redis_url", redis_url, "--as_of", str(log.end), "--dead_letters",
            str(tmp_path / "dl"), "--vector_store", f"embedded://{tmp_path / 'v'}"]
    replay.run(argv)
    replayed = _bandits(redis)
    assert len(replayed) >= 2 and all(replayed.values())
    config = FeatureConfig()
    rederive_bandit([events], redis_url, config, log.end)  # on top of the replay: the same, not twice
    assert _bandits(redis) == replayed
    redis.flushdb()
    result = rederive_bandit([events], redis_url, config, log.end)  # from nothing
    assert _bandits(redis) == replayed
    assert result.segments == len(replayed) and result.fields == sum(len(v) for v in replayed.values())
    rederive_bandit([events], redis_url, config, log.end)  # twice
    assert _bandits(redis) == replayed
    replay.run(argv)  # a replay of the same log after a deploy: its guard says merged
    assert _bandits(redis) == replayed
    assert not [k for k in redis.scan_iter() if b":bandit:" in k]  # no staging or snapshot left behind


def test_bandit_swap_keeps_what_streaming_merged_meanwhile(redis):
    store = FeatureStore(redis)
    seg, run = "seg-x", "run1"

    def write(key: str, sid: str, fields: dict) -> Write:
        return Write("decayed", key, sid, (None, {k: Decayed(0, np.array(v, float)) for k, v in fields.items()}))

    live = keys.bandit(seg)
    store.apply([write(live, "stream-1", {"a": (2.0, 5.0), "b": (1.0, 1.0)})])  # before the run
    deployment.snapshot_bandit(redis, run, [seg])
    store.apply([write(live, "stream-2", {"a": (1.0, 0.0), "c": (0.0, 3.0)})])  # during the run
    staging = keys.bandit_rebuild(seg, run, "staging")
    store.apply([write(staging, "log", {"a": (4.0, 9.0), "d": (1.0, 2.0)})])  # the log's rebuild
    assert deployment.swap_bandit(redis, seg, run, None, summary_id="log-id") == 3
    got = {k.decode(): tuple(decode_decayed(v).sums) for k, v in redis.hgetall(live).items()}
    assert got == {"a": (5.0, 9.0), "c": (0.0, 3.0), "d": (1.0, 2.0)}  # b: not in the log, gone
    assert redis.exists(keys.guard(live, "log-id")) and not redis.exists(staging)


_decayed = st.builds(lambda lm, xs: Decayed(lm, np.array(xs)), st.integers(1_700_000_000_000, 1_700_900_000_000),
                     st.lists(st.floats(0, 100), min_size=2, max_size=2))


@settings(max_examples=60, deadline=None)
@given(log_=_decayed, before=_decayed, during=_decayed, tau=st.sampled_from([None, 86_400_000.0]))
def test_rebuilt_field_is_log_plus_what_came_during_the_run(log_, before, during, tau):
    """staged + (live − snapshot) = the log's summary ⊕ the stream's merges after the snapshot."""
    live = merge(before, during, tau)
    enc = {b"f": encode_decayed(live).encode()}
    out = deployment.rebuilt_fields(enc, {b"f": encode_decayed(log_).encode()}, {b"f": encode_decayed(before).encode()},
                                    tau)
    want = merge(log_, during, tau)
    got = decode_decayed(out[b"f"])
    scale = np.exp((got.landmark_ms - want.landmark_ms) / tau) if tau else 1.0
    np.testing.assert_allclose(got.sums * scale, want.sums, rtol=1e-9, atol=1e-6)


# -- the active model follows the alias ----------------------------------------------------------


def test_active_model_switches_on_promote_and_rollback(trained_registry, log, redis, redis_url, tmp_path):
    src = registry.load_version(trained_registry.root, trained_registry.version)
    root = str(tmp_path / "registry")
    meta = {k: v for k, v in src.metadata.items() if k not in ("version", "files", "created_at")}
    files = {name: src.file_path(name) for name in src.files}
    for v in ("v1", "v2"):
        registry.publish(root, v, files, meta)
    vectors = f"embedded://{tmp_path / 'v'}"
    active = ActiveModel(root, ready=lambda v: deployment.is_deployed(redis, v))
    assert active.state is None and not active.refresh()

    registry.promote(root, "v1")
    assert not active.refresh() and active.version is None  # promoted, not deployed yet
    deploy(root, None, log.glob, redis_url, vectors, 3.0, clock=Clock(log.end), bandit=False)
    assert active.refresh() and active.version == "v1"
    assert active.collections == {"items": "items_v1", "content": "content_v1", "users": "users_v1"}
    assert set(active.files) == set(src.files)
    assert all(Path(p).is_file() and "v1" in p for p in active.files.values())

    registry.promote(root, "v2")
    assert not active.refresh() and active.version == "v1"  # serving waits for v2's collections
    assert ActiveModel(root).version == "v2"  # (without a readiness check: the alias alone)
    deploy(root, None, log.glob, redis_url, vectors, 3.0, clock=Clock(log.end), bandit=False)
    assert active.refresh() and active.version == "v2" and active.collections["items"] == "items_v2"
    with _store(tmp_path / "v") as s:
        assert s.count(active.collections["items"]) == len(log.items)

    registry.rollback(root)
    assert active.refresh() and active.version == "v1" and active.collections["users"] == "users_v1"
    assert not active.refresh()  # nothing moved

    # a promoted version whose file changed afterwards is refused; the verified one keeps serving
    registry.promote(root, "v2")
    Path(root, "versions", "v2", "ranker.onnx").write_bytes(b"tampered")
    assert not active.refresh() and active.version == "v1"


# -- no TensorFlow, and the command line ---------------------------------------------------------


def test_deploy_runs_without_tensorflow(trained_registry, log, redis_url, tmp_path):
    code = ("import sys, json\n"
            "from pipelines.deploy import main\n"
            "code = main(sys.argv[1:])\n"
            "print(json.dumps({'code': code, 'tf': sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'tf_keras', 'keras', 'tensorflow_transform'))}))\n")
    argv = ["--registry", trained_registry.root, "--input", log.glob, "--redis-url", redis_url,
            "--vector-store", f"embedded://{tmp_path / 'v'}", "--as-of", str(log.end), "--inactive-days", "2"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "tf": []}
    assert f"deployed {trained_registry.version}" in proc.stdout and "bandit" in proc.stdout

    bad = subprocess.run([sys.executable, "-m", "pulserank.cli", "deploy", "--registry", str(tmp_path / "nothing"),
                          "--input", log.glob, "--redis-url", redis_url], capture_output=True, text=True, cwd=REPO,
                         env=env, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "pulserank deploy: --registry" in bad.stderr and "production" in bad.stderr
