"""The catalog's content vectors: registry → content tower (ONNX, onnxruntime) → Beam RunInference.

A tiny content tower that follows `models/content_contract` is built with `onnx.helper` (a linear
map of the hashed text, log price and the masked modality vectors, L2-normalised), published and
promoted in a registry under tmp_path, and run through `transforms.content.ContentVectors` on real
runners: FnApiRunner (batch) and a TestStream on BundleBasedDirectRunner (streaming). The expected
vectors come from numpy applied to the raw item attributes, not from the transform's own feed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import apache_beam as beam
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as BeamTestStream  # not collected by pytest
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.timestamp import Timestamp
from onnx import TensorProto, helper, numpy_helper

from models import registry
from schemas import content_contract as cc
from schemas import keys
from schemas.events import Event, parse_event
from stores.vector_sink import drain
from stores.vector_store import open_vector_store
from tests.registry_fixtures import seal
from transforms import observe
from transforms.content import ContentTower, ContentVector, ContentVectors, WriteContentVectors, content_upserts
from transforms.streaming import EmitPanes

CONTRACT = cc.ContentContract(hashed_dim=16, modality_dims={"text": 4, "image": 6, "audio": 3, "video": 5},
                              output_dim=8)
EPS = 1e-12
T0 = 1_700_000_000_000  # ms


# -- a tiny content tower and its numpy twin ----------------------------------------------------------


def tower_weights(contract: cc.ContentContract, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = contract.output_dim
    w = {cc.HASHED: rng.normal(size=(contract.hashed_dim, d)), cc.PRICE: rng.normal(size=(1, d)),
         "bias": rng.normal(size=(1, d))}
    for m in cc.MODALITIES:
        w[m] = rng.normal(size=(contract.modality_dims[m], d))
    return {k: v.astype(np.float32) for k, v in w.items()}


def build_tower(contract: cc.ContentContract, weights: dict[str, np.ndarray], path: Path) -> Path:
    """content = normalise(hashed·Wh + price·Wp + Σ_m mask_m ⊙ (vec_m·Wm) + b)."""
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width])
              for name, width in contract.input_shapes().items()]
    inits = [numpy_helper.from_array(weights[cc.HASHED], "W_hashed"),
             numpy_helper.from_array(weights[cc.PRICE], "W_price"),
             numpy_helper.from_array(weights["bias"], "bias"),
             numpy_helper.from_array(np.array([EPS], np.float32), "eps")]
    nodes = [helper.make_node("MatMul", [cc.HASHED, "W_hashed"], ["z_h"]),
             helper.make_node("MatMul", [cc.PRICE, "W_price"], ["z_p"]),
             helper.make_node("Add", ["z_h", "z_p"], ["z_0"])]
    last = "z_0"
    for i, m in enumerate(cc.MODALITIES, start=1):
        inits.append(numpy_helper.from_array(weights[m], f"W_{m}"))
        nodes += [helper.make_node("MatMul", [cc.vec_input(m), f"W_{m}"], [f"p_{m}"]),
                  helper.make_node("Mul", [f"p_{m}", cc.mask_input(m)], [f"q_{m}"]),
                  helper.make_node("Add", [last, f"q_{m}"], [f"z_{i}"])]
        last = f"z_{i}"
    nodes += [helper.make_node("Add", [last, "bias"], ["z"]),
              helper.make_node("Mul", ["z", "z"], ["z2"]),
              helper.make_node("ReduceSum", ["z2"], ["ss"], keepdims=1, axes=[1]),
              helper.make_node("Add", ["ss", "eps"], ["ss_eps"]),
              helper.make_node("Sqrt", ["ss_eps"], ["norm"]),
              helper.make_node("Div", ["z", "norm"], [cc.OUTPUT])]
    output = helper.make_tensor_value_info(cc.OUTPUT, TensorProto.FLOAT, ["N", contract.output_dim])
    graph = helper.make_graph(nodes, "content_tower", inputs, [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def numpy_tower(event: Event, contract: cc.ContentContract, w: dict[str, np.ndarray]) -> np.ndarray:
    """The same model, straight from the item's attributes (a missing modality adds nothing)."""
    z = w["bias"][0].astype(np.float64).copy()
    a = event.attributes
    if a is not None:
        z += cc.hashed_features(a.title, a.description, a.categories, contract.hashed_dim) @ w[cc.HASHED]
        if a.price is not None:
            z += np.log1p(a.price) * w[cc.PRICE][0]
        for m in cc.MODALITIES:
            vec = a.vectors.get(m)
            if vec is not None and len(vec) == contract.modality_dims[m]:
                z += np.asarray(vec) @ w[m]
    return z / np.sqrt(z @ z + EPS)


def publish_tower(root: Path, version: str, seed: int, tmp: Path, promote: bool = True) -> dict[str, np.ndarray]:
    weights = tower_weights(CONTRACT, seed)
    onnx_path = build_tower(CONTRACT, weights, tmp / f"tower-{version}.onnx")
    registry.publish(str(root), version, {cc.MODEL_FILE: str(onnx_path)},
                     {cc.METADATA_SECTION: CONTRACT.to_metadata(), "feature_spec": {"hashed": "hash-v0"}})
    if promote:
        registry.promote(str(root), version)
    return weights


# -- item events --------------------------------------------------------------------------------------


def _vec(rng: np.random.Generator, n: int) -> list[float]:
    return [round(float(x), 4) for x in rng.normal(size=n)]


def item_lines(n: int = 12, seed: int = 5) -> list[str]:
    """Items with every mix of modalities, a wrong-width vector, no price, no attributes, and an
    update of item 0 (its later event must win)."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        attrs: dict = {"title": f"Item {i} {['red', 'blue', 'green'][i % 3]} lamp",
                       "description": "a lamp for the desk" if i % 2 else "", "categories": [f"c{i % 4}"]}
        if i % 5:
            attrs["price"] = 3.5 * i
        vectors = {m: _vec(rng, CONTRACT.modality_dims[m]) for j, m in enumerate(cc.MODALITIES) if (i >> j) & 1}
        if i == 7:
            vectors["image"] = _vec(rng, 2)  # wrong width: counts as missing
        if vectors:
            attrs["vectors"] = vectors
        lines.append(json.dumps({"event_id": f"it-{i}", "ts": T0 + 1000 * i, "type": "item", "item_id": f"i{i}",
                                 "attributes": attrs}))
    lines.append(json.dumps({"event_id": "it-bare", "ts": T0 + 500, "type": "item", "item_id": "bare"}))
    lines.append(json.dumps({"event_id": "it-0b", "ts": T0 + 90_000, "type": "item", "item_id": "i0",
                             "attributes": {"title": "Item 0 renamed", "categories": ["c9"], "price": 1.0,
                                            "vectors": {"audio": _vec(rng, 3)}}}))
    return lines


def expected_vectors(lines: list[str], w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    latest: dict[str, Event] = {}
    for e in map(parse_event, lines):
        if e.item_id not in latest or (e.ts, e.event_id) > (latest[e.item_id].ts, latest[e.item_id].event_id):
            latest[e.item_id] = e
    return {i: numpy_tower(e, CONTRACT, w) for i, e in latest.items()}


def run_batch(lines: list[str], root: str | None, check) -> None:
    options = PipelineOptions()
    options.view_as(StandardOptions).runner = "FnApiRunner"
    with beam.Pipeline(options=options) as p:
        out = p | beam.Create(lines) | beam.Map(parse_event) | ContentVectors(root)
        assert_that(out, check)


def matches(expected: dict[str, np.ndarray], version: str, tol: float = 1e-5):
    def check(actual: list[ContentVector]) -> None:
        got = {v.item_id: v for v in actual}
        assert sorted(got) == sorted(expected), f"items: {sorted(got)} != {sorted(expected)}"
        for item_id, want in expected.items():
            v = got[item_id]
            assert v.version == version
            np.testing.assert_allclose(np.array(v.vector), want, atol=tol, err_msg=item_id)
        assert got["i0"].categories == ("c9",)  # the update's attributes, not the first event's
    return check


# -- the contract (no Beam; the registry's own tests are in test_registry.py) -------------------------


def test_hashed_features_are_the_catalog_hashing() -> None:
    cases = [("Red Lamp", "a lamp for the desk", ("Home", "lighting")), (None, None, ()), ("", "x y x", ("a",))]
    for title, desc, cats in cases:
        for dim in (16, 64):
            np.testing.assert_array_equal(cc.hashed_features(title, desc, cats, dim),
                                          observe.content_vector(title, desc, cats, dim))


def test_content_inputs_follow_the_contract() -> None:
    events = [parse_event(line) for line in item_lines()]
    feed = cc.content_inputs(events, CONTRACT)
    assert set(feed) == set(cc.input_names())
    for name, width in CONTRACT.input_shapes().items():
        assert feed[name].shape == (len(events), width) and feed[name].dtype == np.float32, name
    by_id = {e.item_id: k for k, e in enumerate(events) if e.event_id != "it-0b"}
    assert feed[cc.PRICE][by_id["i0"], 0] == 0.0  # no price
    assert feed[cc.PRICE][by_id["i1"], 0] == pytest.approx(np.log1p(3.5))
    assert feed[cc.mask_input("image")][by_id["i7"], 0] == 0.0  # wrong width → missing
    assert not feed[cc.vec_input("image")][by_id["i7"]].any()
    assert feed[cc.mask_input("text")][by_id["i7"], 0] == 1.0
    assert not feed[cc.HASHED][by_id["bare"]].any() and not feed[cc.mask_input("text")][by_id["bare"]].any()
    assert cc.ContentContract.from_metadata({cc.METADATA_SECTION: CONTRACT.to_metadata()}) == CONTRACT
    with pytest.raises(ValueError, match="content_contract"):
        cc.ContentContract.from_metadata({})


def test_a_missing_modality_does_not_depend_on_its_values(tmp_path: Path) -> None:
    path = build_tower(CONTRACT, tower_weights(CONTRACT, 1), tmp_path / "t.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cc.check_model(session, CONTRACT)
    feed = cc.content_inputs([parse_event(line) for line in item_lines()], CONTRACT)
    base = session.run([cc.OUTPUT], feed)[0]
    rng = np.random.default_rng(0)
    for m in cc.MODALITIES:
        noisy = dict(feed)
        missing = feed[cc.mask_input(m)][:, 0] == 0
        noisy[cc.vec_input(m)] = np.where(missing[:, None], rng.normal(size=feed[cc.vec_input(m)].shape) * 100,
                                          feed[cc.vec_input(m)]).astype(np.float32)
        assert missing.any() and (noisy[cc.vec_input(m)] != feed[cc.vec_input(m)]).any()
        np.testing.assert_array_equal(session.run([cc.OUTPUT], noisy)[0], base)
    with pytest.raises(ValueError, match="shape"):
        cc.check_model(session, cc.ContentContract(16, {"text": 4, "image": 6, "audio": 3, "video": 5}, 9))


def test_the_tower_follows_promotions_and_keeps_a_verified_version(tmp_path: Path, caplog) -> None:
    root = tmp_path / "reg"
    tower = ContentTower(str(root), refresh_secs=0)
    assert tower.current() is None
    publish_tower(root, "v1", 1, tmp_path)
    assert tower.current().version == "v1"
    publish_tower(root, "v2", 2, tmp_path)
    assert tower.current().version == "v2"
    newest = sorted(Path(registry.alias_dir(str(root))).glob("*.json"))[-1]
    body = json.loads(newest.read_text())
    newest.write_text(json.dumps(seal({**body, "version": "v1"})))  # v1 under v2's checksums: refused
    with caplog.at_level(logging.WARNING, logger="transforms.content"):
        assert tower.current().version == "v2"  # v2 keeps serving
    assert "differ" in caplog.text and "keeping version v2" in caplog.text
    shutil.rmtree(registry.alias_dir(str(root)))
    assert tower.current() is None


# -- Beam: batch and streaming --------------------------------------------------------------------------


def test_batch_vectors_equal_the_numpy_model(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    w = publish_tower(root, "v1", 1, tmp_path)
    lines = item_lines()
    run_batch(lines, str(root), matches(expected_vectors(lines, w), "v1"))


def test_no_production_model_outputs_nothing(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    publish_tower(root, "v1", 1, tmp_path, promote=False)
    run_batch(item_lines(), str(root), equal_to([]))
    run_batch(item_lines(), None, equal_to([]))


def test_a_checksum_mismatch_outputs_nothing_and_says_why(tmp_path: Path, caplog) -> None:
    root = tmp_path / "reg"
    publish_tower(root, "v1", 1, tmp_path)
    model = Path(registry.load_version(str(root), "v1").file_path(cc.MODEL_FILE))
    model.write_bytes(model.read_bytes() + b"\0")
    with caplog.at_level(logging.WARNING, logger="transforms.content"):
        run_batch(item_lines(), str(root), equal_to([]))
    assert "checksum mismatch" in caplog.text and "content vectors off" in caplog.text


def _stamped(line: str) -> beam.window.TimestampedValue:
    return beam.window.TimestampedValue(line, Timestamp(micros=json.loads(line)["ts"] * 1000))


def test_streaming_gives_the_batch_vectors_and_they_reach_the_vector_store(tmp_path: Path, redis, redis_url) -> None:
    """TestStream (two panes, five watermark advances, one item behind the watermark) → EmitPanes →
    ContentVectors → WriteContentVectors → the Redis queue → the embedded store: the vectors the
    batch test checks, i.e. the numpy model's."""
    root = tmp_path / "reg"
    w = publish_tower(root, "v1", 1, tmp_path)
    lines = item_lines()
    update = lines.pop()  # i0's update: sent after i0's first pane has fired
    stream = BeamTestStream()
    mark = 0
    for lo in range(0, len(lines), 4):  # the last chunk ("bare") arrives behind the watermark, in its pane
        chunk = lines[lo:lo + 4]
        stream.add_elements([_stamped(line) for line in chunk])
        if (top := max(json.loads(x)["ts"] for x in chunk) + 1) > mark:
            stream.advance_watermark_to(Timestamp(micros=top * 1000))
            mark = top
    stream.advance_watermark_to(Timestamp(micros=(T0 + 60_000) * 1000))  # the first pane (and its lateness) ends
    stream.add_elements([_stamped(update)])
    stream.advance_watermark_to(Timestamp(micros=(T0 + 3_600_000) * 1000))  # finite, past every pane
    stream.advance_watermark_to_infinity()
    lines.append(update)
    options = PipelineOptions(streaming=True)
    options.view_as(StandardOptions).runner = "BundleBasedDirectRunner"
    with beam.Pipeline(options=options) as p:
        _ = (p | stream | beam.Map(parse_event) | EmitPanes(seconds=60, allowed_lateness_ms=5_000)
             | ContentVectors(str(root)) | WriteContentVectors(redis_url, None, batch_size=3))

    queued = [json.loads(r) for r in redis.lrange(keys.VECTOR_QUEUE, 0, -1)]
    collection = keys.vector_collection(keys.CONTENT, "v1")
    assert {c for c, *_ in queued} == {collection}
    expected = expected_vectors(lines, w)
    assert sum(i == "i0" for _, i, _, _ in queued) == 2  # its first pane and its update's pane, in that order
    last = {i: np.array(v) for _, i, v, _ in queued}
    assert sorted(last) == sorted(expected)
    for item_id, want in expected.items():
        np.testing.assert_allclose(last[item_id], want, atol=1e-5, err_msg=item_id)

    url = f"embedded://{tmp_path / 'vec'}"
    assert drain(redis, url) == len(queued)
    store = open_vector_store(url)
    try:
        got = store.get(collection, sorted(expected))
        for item_id, want in expected.items():
            np.testing.assert_allclose(got[item_id], want / np.linalg.norm(want), atol=1e-5)
    finally:
        store.close()


def test_content_upserts_name_the_version_collection() -> None:
    (u,) = content_upserts([ContentVector("i1", "2024-05-01.a", (0.6, 0.8), ("c1",))])
    assert (u.collection, u.id, u.vector, u.properties) == ("content_2024_05_01_a", "i1", (0.6, 0.8),
                                                           {"categories": ["c1"]})
