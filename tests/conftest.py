"""Suite-wide fixtures and the process exit that keeps TFT from segfaulting at teardown."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis as redis_py

from stores import redis_client

_exit_status = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    # TFT pipelines segfault in protobuf's C extension while Python tears modules down
    # (FIELD-NOTES). Fixtures and plugins have finished here, so end the process now.
    if "tensorflow_transform" in sys.modules and not hasattr(config, "workerinput"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The Redis every test talks to: ``$REDIS_URL`` or one embedded redis-server per session.

    The embedded server is stopped here, before ``pytest_unconfigure`` may ``os._exit`` (which
    would skip its atexit hook; its death signal would still stop it).
    """
    yield redis_client.redis_url()
    redis_client.shutdown_embedded()


@pytest.fixture
def redis(redis_url: str) -> Iterator[redis_py.Redis]:
    """A client on a DB that is FLUSHED before each test, so tests start from an empty store.

    Tests flush the DB they are given: if you set ``REDIS_URL``, point it at a scratch database
    (e.g. ``redis://localhost:6379/15``), never at one holding data you care about.
    """
    client = redis_client.get_redis(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


# -- one small trained model, shared by every test that needs one ------------------------------

_TRAINED_SOURCES = ("models", "pipelines/train.py", "transforms/training.py", "schemas", "pipelines/datasets")
TRAIN_ARGS = ("--tower-epochs", "3", "--ranker-epochs", "1", "--content-dim", "64", "--hashed-dim", "256",
              "--embedding-dim", "32", "--holdout", "random", "--seed", "0", "--promote", "always")


@dataclass(frozen=True)
class TrainedRegistry:
    root: str  # registry root with one promoted version
    version: str
    data_dir: Path  # the synthetic event logs it was trained on
    output: str  # what `pulserank train` printed


def _sources_digest() -> str:
    """Changes whenever code that shapes the trained model changes (so the cache is never stale)."""
    h = hashlib.sha256(" ".join(TRAIN_ARGS).encode())
    repo = Path(__file__).resolve().parent.parent
    for name in _TRAINED_SOURCES:
        path = repo / name
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(file.relative_to(repo).as_posix().encode())
            h.update(file.read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory: pytest.TempPathFactory) -> TrainedRegistry:
    """`pulserank train` once on a small synthetic log (cached on disk by a digest of the code).

    Trains in a child process through the real CLI, which is also the check that the command
    exits 0 after TFT (no teardown segfault).
    """
    from pipelines.datasets import FetchOptions, fetch

    cache = Path(os.environ.get("PULSERANK_TEST_CACHE", Path.home() / ".cache" / "pulserank" / "test-model"))
    home = cache / _sources_digest()
    done = home / "done.json"
    if not done.exists():
        if home.exists():
            shutil.rmtree(home)
        data = home / "data"
        fetch("synthetic", data, FetchOptions(seed=0, scale=0.3))
        cmd = [sys.executable, "-m", "pulserank.cli", "train", "--input", str(data / "*.jsonl"),
               "--registry", str(home / "registry"), "--workdir", str(home / "work"), *TRAIN_ARGS]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "2"})
        assert proc.returncode == 0, f"pulserank train exited {proc.returncode}:\n{proc.stdout[-3000:]}\n" \
                                     f"{proc.stderr[-3000:]}"
        version = re.search(r"^version (\S+) published", proc.stdout, re.M).group(1)
        done.write_text(json.dumps({"version": version, "output": proc.stdout}))
    info = json.loads(done.read_text())
    return TrainedRegistry(str(home / "registry"), info["version"], home / "data", info["output"])
