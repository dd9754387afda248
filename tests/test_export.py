"""The generic SavedModel → ONNX step: string inputs through a lookup table, named outputs, parity,
and a loud failure where tf2onnx itself only logs an error and exits 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf

from models.export import ExportError, export_onnx, parity, run_onnx

VOCAB = ["apple", "banana", "cherry"]


class Lookup(tf.Module):
    """A vocabulary lookup (StaticHashTable, OOV → the last row) feeding a weight table: the shape
    of every exported model here, whose ids arrive as strings."""

    def __init__(self) -> None:
        super().__init__()
        init = tf.lookup.KeyValueTensorInitializer(VOCAB, tf.range(len(VOCAB), dtype=tf.int64))
        self.table = tf.lookup.StaticHashTable(init, default_value=-1)
        self.weights = tf.Variable([[0.5, 1.0], [1.5, -2.0], [2.5, 0.25], [-1.0, 0.0]], dtype=tf.float32)

    def __call__(self, inputs: dict) -> dict:
        idx = self.table.lookup(inputs["item_id"])
        idx = tf.where(idx < 0, tf.constant(len(VOCAB), tf.int64), idx)
        return {"score": tf.gather(self.weights, idx) * inputs["scale"], "index": idx}


SIGNATURE = {"item_id": tf.TensorSpec([None], tf.string), "scale": tf.TensorSpec([None, 1], tf.float32)}


@pytest.mark.slow
def test_string_inputs_and_a_lookup_table_export_with_the_declared_names(tmp_path: Path) -> None:
    module = Lookup()
    path = export_onnx(module, SIGNATURE, tmp_path / "nested" / "lookup.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sorted(i.name for i in session.get_inputs()) == ["item_id", "scale"]
    assert sorted(o.name for o in session.get_outputs()) == ["index", "score"]
    assert {i.name: i.type for i in session.get_inputs()}["item_id"] == "tensor(string)"

    feed = {"item_id": np.array(["banana", "durian", "apple", "cherry", ""], dtype=object),
            "scale": np.array([[1.0], [2.0], [3.0], [-1.0], [0.5]], dtype=np.float32)}
    out = run_onnx(path, feed)
    np.testing.assert_array_equal(out["index"], [1, 3, 0, 2, 3])
    np.testing.assert_allclose(out["score"], [[1.5, -2.0], [-2.0, 0.0], [1.5, 3.0], [-2.5, -0.25], [-0.5, 0.0]])
    # bytes would silently be out-of-vocabulary in onnxruntime; run_onnx/parity decode them
    as_bytes = {**feed, "item_id": np.array([s.encode() for s in feed["item_id"]], dtype=object)}
    np.testing.assert_array_equal(run_onnx(path, as_bytes)["index"], out["index"])
    assert parity(path, module, feed) == 0.0
    assert parity(path, module, as_bytes) == 0.0

    module.weights.assign_add(tf.fill([4, 2], 1e-3))  # TF moved on, the file did not: parity sees it
    assert parity(path, module, feed) == pytest.approx(3e-3, rel=1e-3)  # |scale| up to 3 × 1e-3


class Hashing(tf.Module):
    """`tf.strings.to_hash_bucket_fast` (StringToHashBucketFast) has no ONNX conversion (FIELD-NOTES)."""

    def __call__(self, inputs: dict) -> dict:
        return {"bucket": tf.strings.to_hash_bucket_fast(inputs["item_id"], 10)}


@pytest.mark.slow
def test_an_op_that_does_not_convert_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="StringToHashBucketFast"):
        export_onnx(Hashing(), {"item_id": tf.TensorSpec([None], tf.string)}, tmp_path / "h.onnx")
    assert not (tmp_path / "h.onnx").exists()


def test_bad_signatures_and_outputs_are_named() -> None:
    with pytest.raises(ValueError, match="TensorSpec"):
        export_onnx(Lookup(), {"item_id": np.zeros(3)}, "unused.onnx")
    with pytest.raises(ValueError, match="input name"):
        export_onnx(Lookup(), {"item id": tf.TensorSpec([None], tf.string)}, "unused.onnx")
    with pytest.raises(ValueError, match="dict of output name"):
        export_onnx(lambda x: x["scale"], {"scale": tf.TensorSpec([None, 1], tf.float32)}, "unused.onnx")
