"""Idempotence of the batch replay: twice = once, killed + re-run = one clean run, A then B = A∪B,
and the multi-process runner stores what the in-process one does.

Each test replays one small synthetic log (duplicates, disorder) into the fixture's Redis with
the clock pinned to the log's end, and compares with one clean run of the same log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis as redis_lib

from pipelines.datasets.synthetic import SyntheticConfig, generate
from pipelines.replay import run as replay
from schemas import keys
from schemas.clock import format_instant, parse_instant
from stores.redis_client import get_redis
from tests.reference import Diff, part_of, raw, snapshot, vectors

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = SyntheticConfig(scale=0.05, span_days=3, duplicate_rate=0.06, disorder_rate=0.06)


@dataclass
class Log:
    dir: Path
    end_ms: int
    median_ms: int

    @property
    def inputs(self) -> str:
        return f"{self.dir}/items.jsonl,{self.dir}/events.jsonl"

    def argv(self, tmp: Path, vector_dir: Path, *extra: str) -> list[str]:
        return ["--input", self.inputs, "--as_of", format_instant(self.end_ms), "--dead_letters", str(tmp / "dead"),
                "--vector_store", f"embedded://{vector_dir}", *extra]


@dataclass
class State:
    raw: dict
    view: dict
    guards: int
    vectors: dict
    written: int


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Log:
    out = tmp_path_factory.mktemp("idempotence-log")
    generate(out, 11, SYNTHETIC)
    ts = [parse_instant(json.loads(x)["ts"]) for x in (out / "events.jsonl").read_text().splitlines()]
    return Log(out, max(ts), int(np.median(ts)))


def _state(client: redis_lib.Redis, log: Log, vector_dir: Path, written: int) -> State:
    view = snapshot(client, log.end_ms)
    guards = sum(1 for _ in client.scan_iter(match=keys.guard_pattern(), count=1000))
    return State(raw(client), view, guards, vectors(f"embedded://{vector_dir}", view), written)


@pytest.fixture(scope="module")
def clean(log: Log, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> State:
    """One clean replay of the whole log into an empty database."""
    tmp = tmp_path_factory.mktemp("clean")
    client = get_redis(redis_url)
    client.flushdb()
    result = replay([*log.argv(tmp, tmp / "vec"), "--redis_url", redis_url])
    assert result.reconciles and result["duplicates"] > 0
    state = _state(client, log, tmp / "vec", result["events_written"])
    client.close()
    # Windows and sessions read as of the pinned clock: empty if a process ran on wall time.
    assert {part_of(k) for k in state.view} >= {"win", "sess", "recent", "vec", "bandit", "trend", "emo"}
    return state


def _same(a: State, b: State) -> Diff:
    diff = Diff().compare(a.view, b.view)
    for name, vecs in a.vectors.items():
        diff.compare(vecs, b.vectors.get(name, {}))
    assert not diff.problems, "\n".join(diff.problems[:20])
    return diff


def test_replaying_twice_leaves_the_state_unchanged(log: Log, clean: State, tmp_path: Path,
                                                  redis: redis_lib.Redis, redis_url: str) -> None:
    argv = [*log.argv(tmp_path, tmp_path / "vec"), "--redis_url", redis_url]
    replay(argv)
    assert raw(redis) == clean.raw  # deterministic: the same bytes as the clean run
    again = replay(argv)
    assert again["keys_merged"] == 0 and again["merges_skipped_by_guard"] >= clean.guards  # + unchanged items
    assert raw(redis) == clean.raw
    _same(clean, _state(redis, log, tmp_path / "vec", again["events_written"]))


def _kill_once_guards_appear(argv: list[str], client: redis_lib.Redis, env: dict) -> tuple[int, int]:
    """Runs `python -m pipelines.replay` and SIGKILLs it as soon as merges have begun.

    Returns (guards when killed, return code)."""
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.replay", *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            if next(client.scan_iter(match=keys.guard_pattern(), count=1000), None) is not None:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    guards = sum(1 for _ in client.scan_iter(match=keys.guard_pattern(), count=1000))
    return guards, proc.returncode


def test_a_replay_killed_mid_merge_and_rerun_equals_one_clean_run(log: Log, clean: State, tmp_path: Path,
                                                                 redis: redis_lib.Redis, redis_url: str) -> None:
    argv = log.argv(tmp_path, tmp_path / "vec")  # no --redis_url: the child finds REDIS_URL
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONWARNINGS": "ignore::FutureWarning"}
    for _ in range(3):  # the merge phase is short; retry if the kill missed it
        redis.flushdb()
        guards, code = _kill_once_guards_appear(argv, redis, env)
        if code == -signal.SIGKILL and 0 < guards < clean.guards:
            break
    assert code == -signal.SIGKILL and 0 < guards < clean.guards, (code, guards, clean.guards)

    again = replay([*argv, "--redis_url", redis_url])
    assert again.reconciles
    assert again["merges_skipped_by_guard"] >= guards and again["keys_merged"] > 0
    assert raw(redis) == clean.raw
    _same(clean, _state(redis, log, tmp_path / "vec", again["events_written"]))


def test_replaying_a_then_b_equals_replaying_a_and_b(log: Log, clean: State, tmp_path: Path,
                                                    redis: redis_lib.Redis, redis_url: str) -> None:
    split = format_instant(log.median_ms)  # a backfill up to where live traffic began, then the rest
    vec = tmp_path / "vec"
    a = replay([*log.argv(tmp_path, vec, "--until", split), "--redis_url", redis_url])
    b = replay([*log.argv(tmp_path, vec, "--from", split), "--redis_url", redis_url])
    assert a.reconciles and b.reconciles
    assert a["events_written"] + b["events_written"] == clean.written
    assert a["events_written"] > 0 and b["events_written"] > 0
    # Keys written by both halves hold two merged summaries; the state reads the same.
    assert b["merges_skipped_by_guard"] == 0 and b["keys_merged"] > 0
    diff = _same(clean, _state(redis, log, vec, 0))
    assert diff.floats > 0


def test_multi_process_replay_stores_what_the_in_process_one_does(log: Log, clean: State, tmp_path: Path,
                                                                  redis: redis_lib.Redis, redis_url: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Workers are other processes: the pinned clock (PULSERANK_AS_OF, set by the replay) and the
    # Redis URL must reach them through the environment and pickled DoFns.
    monkeypatch.setenv("REDIS_URL", redis_url)
    result = replay([*log.argv(tmp_path, tmp_path / "vec"), "--direct_running_mode=multi_processing",
                     "--direct_num_workers=2"])
    assert result.reconciles and result["events_written"] == clean.written
    _same(clean, _state(redis, log, tmp_path / "vec", result["events_written"]))
