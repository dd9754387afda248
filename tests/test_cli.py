"""The `pulserank` command as users run it: a real subprocess, real data, real Redis.

`pulserank demo` end to end: tests/test_demo.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pulserank(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("REDIS_URL", None) if env is None or "REDIS_URL" not in env else None
    return subprocess.run(
        [sys.executable, "-m", "pulserank.cli", *args],
        capture_output=True, text=True, cwd=REPO, env=full_env, timeout=timeout,
    )


def test_data_fetch_synthetic_writes_a_manifest(tmp_path: Path) -> None:
    proc = pulserank("data", "fetch", "synthetic", "--out", str(tmp_path), "--seed", "3", "--scale", "0.2")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["dataset"] == "synthetic"
    for name, info in manifest["files"].items():
        assert info["events"] == sum(1 for _ in (tmp_path / name).open()), name


def test_data_fetch_from_a_missing_copy_says_what_to_do(tmp_path: Path) -> None:
    proc = pulserank("data", "fetch", "movielens100k", "--out", str(tmp_path), "--from", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert "nope" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_data_fetch_reports_a_malformed_line_with_file_and_line(tmp_path: Path) -> None:
    src = tmp_path / "ml"
    src.mkdir()
    (src / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\tbroken\n")
    (src / "u.item").write_text("242|Kolya (1996)|24-Jan-1997||http://x|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n")
    proc = pulserank("data", "fetch", "movielens100k", "--out", str(tmp_path / "out"), "--from", str(src))
    assert proc.returncode == 2
    assert f"{src / 'u.data'}:3" in proc.stderr


def test_unknown_data_set_is_refused(tmp_path: Path) -> None:
    proc = pulserank("data", "fetch", "netflix", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


TFT_THEN_EXIT = """
import tempfile
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils
from pulserank.cli import _exit

spec = schema_utils.schema_from_feature_spec({"x": tf.io.FixedLenFeature([], tf.float32)})
with tft_beam.Context(temp_dir=tempfile.mkdtemp()):
    (rows, _), _ = ([{"x": 1.0}, {"x": 3.0}], dataset_metadata.DatasetMetadata(spec)) | (
        tft_beam.AnalyzeAndTransformDataset(lambda t: {"z": tft.scale_to_z_score(t["x"])}))
print("scaled", sorted(round(float(r["z"]), 3) for r in rows), end="")
_exit(3)
"""


@pytest.mark.slow
def test_cli_exit_after_tft_keeps_the_code_and_output() -> None:
    proc = subprocess.run([sys.executable, "-c", TFT_THEN_EXIT], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout.endswith("scaled [-1.0, 1.0]")
