"""Retraining: point-in-time examples, the Beam + TFT step, and the trained, exported, registered models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from models import examples, registry
from models.examples import Interaction
from schemas.events import parse_event

# -- point-in-time examples (plain Python) ------------------------------------------------------

interactions = st.lists(
    st.builds(Interaction, st.just("u"), st.sampled_from([f"i{n}" for n in range(12)]), st.integers(0, 40),
              st.sampled_from([1.0, 1.0, 0.0]), st.uuids().map(str)),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(interactions)
def test_every_feature_of_an_example_uses_only_strictly_earlier_events(rows: list[Interaction]) -> None:
    out = examples.user_examples(rows, history_len=5)
    ordered = sorted(rows, key=lambda x: (x.ts, x.event_id))
    assert [r["item_id"] for r in out] == [x.item_id for x in ordered]
    for x, ex in zip(ordered, out, strict=True):
        earlier = [y for y in ordered if y.ts < x.ts and y.label > 0]  # oldest first
        want = examples.recent_unique([y.item_id for y in earlier], 5)
        assert [h for h in ex["history"] if h] == want
        assert ex["context"][0] == len(earlier)  # activity counts earlier positives only
        assert ex["label"] == x.label and ex["ts"] == x.ts


def test_negatives_are_examples_but_never_history() -> None:
    rows = [Interaction("u", "a", 1, 1.0, "e1"), Interaction("u", "b", 2, 0.0, "e2"),
            Interaction("u", "c", 3, 1.0, "e3")]
    out = examples.user_examples(rows)
    assert [r["label"] for r in out] == [1.0, 0.0, 1.0]
    assert [h for h in out[2]["history"] if h] == ["a"]


def test_context_encodes_weekday_and_hour_from_event_time() -> None:
    # 2026-01-05T10:30Z is a Monday (weekday 0 counting from Monday)
    activity, hour, weekday = examples.context_features(3, 1_767_609_000_000)
    assert (activity, round(hour, 2), int(weekday)) == (3.0, 10.5, 0)


T0 = 1_767_225_600_000  # 2026-01-01


def _event(**kw) -> str:
    base = {"event_id": kw.pop("id"), "ts": T0 + kw.pop("ts"), "type": kw.pop("type", "click")}
    return json.dumps({**base, **kw})


def test_beam_examples_leave_held_out_pairs_out_and_match_the_plain_function() -> None:
    from transforms.training import CatalogRows, PointInTimeExamples

    lines = [
        _event(id="i1", ts=0, type="item", item_id="a", attributes={"categories": ["x"]}),
        _event(id="e1", ts=10, user_id="u1", item_id="a"),
        _event(id="e2", ts=20, user_id="u1", item_id="b"),
        _event(id="e3", ts=30, user_id="u1", item_id="c"),
        _event(id="e4", ts=15, user_id="u2", item_id="b", type="skip"),
    ]
    events = [parse_event(line) for line in lines]
    plain = examples.user_examples([examples.interaction(e) for e in events[1:4] if e.item_id != "b"],
                                   {"a": ("x",)})
    with beam.Pipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
        pcoll = p | beam.Create(events)
        catalog = pcoll | CatalogRows()
        held = p | "Held" >> beam.Create([("u1", "b")])
        out = pcoll | PointInTimeExamples(catalog, held)
        assert_that(out | beam.Map(json.dumps, sort_keys=True),
                    equal_to([json.dumps(r, sort_keys=True) for r in plain]
                             + [json.dumps(examples.example_row("u2", [], "b", T0 + 15, (), 0.0), sort_keys=True)]))


# -- the trained fixture: one `pulserank train` run on a small synthetic log ----------------------

FILES = ("content_tower.onnx", "user_tower.onnx", "item_tower.onnx", "ranker.onnx", "edge_ranker.onnx")


@pytest.fixture(scope="module")
def version(trained_registry):
    return registry.load_version(trained_registry.root, trained_registry.version)


def test_train_publishes_every_model_verified_and_promoted(trained_registry, version) -> None:
    assert set(FILES) <= set(version.files)
    registry.verify(version)
    assert registry.read_alias(trained_registry.root).version == trained_registry.version
    meta = version.metadata
    assert len(meta["data_fingerprint"]) == 64 and meta["created_at"]
    assert meta["feature_spec"]["recent_len"] == 10 and meta["content_contract"]["output_dim"] == 64
    for stage in ("read + split", "preprocess (Beam + TFT)", "train", "export (ONNX + parity)", "evaluate"):
        assert f"[{stage}] done in" in trained_registry.output
    assert "stage times:" in trained_registry.output


def test_onnx_matches_tensorflow_on_held_out_rows(version) -> None:
    parity = version.metadata["parity_max_abs_diff"]
    assert set(parity) == set(FILES)
    assert all(0 <= d <= 1e-4 for d in parity.values()), parity


def test_edge_ranker_fits_the_edge_budget(version) -> None:
    from models.exported import EDGE_MAX_BYTES

    assert os.path.getsize(version.file_path("edge_ranker.onnx")) <= EDGE_MAX_BYTES


def test_offline_metrics_are_recorded_beside_the_baselines(version) -> None:
    metrics = version.metadata["metrics"]
    assert {"model", "retrieval-only", "MostPop", "ItemKNN"} <= set(metrics)
    for name in ("model", "retrieval-only", "MostPop", "ItemKNN"):
        assert 0.0 <= metrics[name]["ndcg@10"] <= 1.0
        assert "canary" in metrics[name]
    assert metrics["model"]["ndcg@10"] > metrics["model"]["canary"]["ndcg@10"]


def test_fusion_weights_favour_the_informative_modality(version) -> None:
    weights = version.metadata["training"]["modality_weights"]
    assert weights["image"] > weights["video"], weights  # synthetic: image carries signal, video is noise


_SERVE_WITHOUT_TF = r"""
import json, sys
import numpy as np
import onnxruntime as ort
root, version = sys.argv[1], sys.argv[2]
from models import registry
v = registry.load_version(root, version)
spec = v.metadata["feature_spec"]
def run(name, feed):
    s = ort.InferenceSession(v.file_path(name), providers=["CPUExecutionProvider"])
    return s.run(None, feed)[0]
items = np.array(["item-00001", "item-00002", "never-seen-item"], dtype=object)
content = np.random.default_rng(0).normal(size=(3, spec["content_dim"])).astype(np.float32)
emb = run("item_tower.onnx", {"item_id": items, "content": content})
def embed(width):
    hist = np.array([["item-00003", "item-00004"] + [""] * (width - 2)] * 2, dtype=object)
    return run("user_tower.onnx", {"user_id": np.array(["u-00001", "nobody"], dtype=object), "history": hist,
                                   "context": np.array([[2, 10, 1], [0, 3, 5]], np.float32)})
users = embed(spec["history_len"])
widths = [float(np.abs(embed(w) - users).max()) for w in (2, spec["history_len"] + 1, 3 * spec["history_len"])]
recent = np.array([["item-00003"] + [""] * 9, ["item-00010", "item-00011"] + [""] * 8], dtype=object)
origin = np.full((2, 1), 0.3, np.float32)
edge = run("edge_ranker.onnx", {"recent": recent, "item_id": items[:2], "origin_score": origin})
print(json.dumps({"tf": "tensorflow" in sys.modules, "items": emb.tolist(), "users": users.tolist(),
                  "edge": edge.ravel().tolist(), "widths": widths}))
"""


def test_exported_models_serve_raw_strings_without_tensorflow(trained_registry) -> None:
    proc = subprocess.run([sys.executable, "-c", _SERVE_WITHOUT_TF, trained_registry.root, trained_registry.version],
                          capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["tf"] is False
    items = np.array(out["items"])
    assert np.all(np.isfinite(items)) and items.shape[0] == 3
    assert np.linalg.norm(items[2]) > 0  # an unknown id still gets a vector: its content's (cold start)
    assert items[2][-1] == 0.0  # and no popularity bias, which only interactions earn
    edge = np.array(out["edge"])
    assert np.all(np.isfinite(out["users"])) and np.all((edge > 0) & (edge < 1))
    assert max(out["widths"]) < 1e-6  # the user tower reads a history of any width; padding changes nothing
