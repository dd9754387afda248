"""SavedModel → ONNX, the one export step every model goes through, and the parity check after it.

`export_onnx` saves a serving signature whose input and output names are the keys of the
signature dicts, converts it with the tf2onnx CLI in a child process (the path FIELD-NOTES
verified, TFT vocabulary layers and string inputs included) and then *proves* the file: tf2onnx
exits 0 even when an op did not convert, so the result is loaded in onnxruntime and its input
and output names are checked against the signature. `parity` runs the same feed through
onnxruntime and TensorFlow.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

DEFAULT_OPSET = 17
SIGNATURE = "serving_default"


class ExportError(RuntimeError):
    """The model did not convert to a loadable ONNX file with the declared inputs and outputs."""


def _check_signature(input_signature: Mapping[str, tf.TensorSpec]) -> dict[str, tf.TensorSpec]:
    if not isinstance(input_signature, Mapping) or not input_signature:
        raise ValueError("input_signature must be a non-empty dict of input name → tf.TensorSpec")
    specs = {}
    for name, spec in input_signature.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise ValueError(f"input_signature: input name {name!r} must be an identifier (letters, digits, _)")
        if not isinstance(spec, tf.TensorSpec):
            raise ValueError(f"input_signature[{name!r}] must be a tf.TensorSpec, got {type(spec).__name__}")
        specs[name] = tf.TensorSpec(spec.shape, spec.dtype, name=name)
    return specs


def _as_outputs(result: Any) -> dict[str, tf.Tensor]:
    if not isinstance(result, Mapping) or not result:
        raise ValueError("the exported callable must return a non-empty dict of output name → tensor "
                         f"(its keys become the ONNX output names), got {type(result).__name__}")
    return dict(result)


class _Serving(tf.Module):
    """Root object of the SavedModel: tracks the model (its variables and tables) and the signature."""

    def __init__(self, fn_or_module: Callable, specs: dict[str, tf.TensorSpec]) -> None:
        super().__init__()
        self.model = fn_or_module
        self.serve = tf.function(self._serve, input_signature=[specs])

    def _serve(self, inputs):
        return _as_outputs(self.model(dict(inputs)))


def _convert(saved_model: Path, out_path: Path, opset: int) -> str:
    cmd = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved_model), "--signature_def", SIGNATURE,
           "--opset", str(opset), "--output", str(out_path)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0 or not out_path.is_file():
        raise ExportError(f"tf2onnx failed (exit {proc.returncode}):\n{_tail(log)}")
    return log


def _tail(log: str, lines: int = 30) -> str:
    return "\n".join(log.strip().splitlines()[-lines:])


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def export_onnx(fn_or_module: Callable, input_signature: Mapping[str, tf.TensorSpec], out_path: str | Path, *,
                opset: int = DEFAULT_OPSET) -> Path:
    """Export `fn_or_module` (called with a dict of named tensors, returning a dict of named outputs)
    to ONNX at `out_path`; returns the path.

    Pass a Keras model or `tf.Module` (not a bare function closing over variables or tables): it
    is attached to the saved root so its state is saved. The ONNX inputs are the keys of
    `input_signature` and the outputs the keys of the returned dict; ExportError when tf2onnx
    fails, when onnxruntime cannot load the result (an op that did not convert) or when the names
    differ.
    """
    specs = _check_signature(input_signature)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    root = _Serving(fn_or_module, specs)
    concrete = root.serve.get_concrete_function()
    outputs = sorted(concrete.structured_outputs)
    with tempfile.TemporaryDirectory(prefix="pulserank-export-") as tmp:
        saved = Path(tmp) / "saved_model"
        tf.saved_model.save(root, str(saved), signatures={SIGNATURE: concrete})
        partial = Path(tmp) / "model.onnx"
        log = _convert(saved, partial, opset)
        errors = "\n".join(line for line in log.splitlines() if "unsupported" in line.lower() or "ERROR" in line)
        try:
            session = _session(partial)
        except Exception as exc:
            raise ExportError(f"onnxruntime cannot load the converted model ({exc}); tf2onnx said:\n"
                              f"{_tail(errors or log)}") from None
        if "Unsupported ops" in errors:  # loadable, yet tf2onnx dropped or kept something it could not convert
            raise ExportError(f"tf2onnx reported ops it could not convert:\n{_tail(errors)}")
        got_in = sorted(i.name for i in session.get_inputs())
        got_out = sorted(o.name for o in session.get_outputs())
        if got_in != sorted(specs) or got_out != outputs:
            raise ExportError(f"ONNX names differ from the signature: inputs {got_in} vs {sorted(specs)}, "
                              f"outputs {got_out} vs {outputs}")
        shutil.move(str(partial), out_path)
    return out_path


def _ort_value(value: Any) -> np.ndarray:
    """onnxruntime's string tensors want numpy object arrays of `str`: bytes silently map every
    value to out-of-vocabulary in a CategoryMapper (FIELD-NOTES), so they are decoded here."""
    arr = np.asarray(value)
    if arr.dtype.kind in "SUO":
        return np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else str(v), otypes=[object])(arr) \
            if arr.size else arr.astype(object)
    return arr


def _tf_value(value: Any) -> tf.Tensor:
    arr = np.asarray(value)
    if arr.dtype.kind in "UO":
        arr = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(arr) \
            if arr.size else arr.astype(object)
        return tf.constant(arr, dtype=tf.string)
    return tf.constant(arr)


def run_onnx(onnx_path: str | Path, feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Every output of the ONNX model on `feed` (strings accepted as str or bytes), by name."""
    session = _session(Path(onnx_path))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: _ort_value(v) for k, v in feed.items()}), strict=True))


def parity(onnx_path: str | Path, tf_callable: Callable, feed: Mapping[str, np.ndarray]) -> float:
    """Max abs difference between onnxruntime and `tf_callable` (dict in, dict out, as exported)
    over every output on the same feed; inf when shapes differ or non-numeric outputs disagree."""
    onnx_out = run_onnx(onnx_path, feed)
    tf_out = _as_outputs(tf_callable({k: _tf_value(v) for k, v in feed.items()}))
    if sorted(tf_out) != sorted(onnx_out):
        raise ValueError(f"outputs differ: TF gives {sorted(tf_out)}, ONNX {sorted(onnx_out)}")
    worst = 0.0
    for name, got in onnx_out.items():
        want = np.asarray(tf_out[name])
        if want.shape != got.shape:
            return float("inf")
        if want.dtype.kind in "SUO" or got.dtype.kind in "SUO":
            same = np.array_equal(_ort_value(want), _ort_value(got))
            worst = max(worst, 0.0 if same else float("inf"))
        elif want.size:
            worst = max(worst, float(np.max(np.abs(want.astype(np.float64) - got.astype(np.float64)))))
    return worst
