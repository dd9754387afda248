"""The first batch replay: a real Beam pipeline into a real Redis; counts reconcile."""

from __future__ import annotations

import json
from pathlib import Path

import redis as redis_lib

from pipelines.replay import run
from stores.activity import read_activity

LINES = [
    {"event_id": "a", "ts": 881250949000, "user_id": "1", "type": "rating", "item_id": "50", "value": 4},
    {"event_id": "a", "ts": 881250949000, "user_id": "1", "type": "rating", "item_id": "50", "value": 4},
    {"event_id": "b", "ts": "1997-12-04T15:55:50Z", "user_id": "1", "type": "click", "item_id": "50"},
    {"event_id": "c", "ts": 881250951000, "user_id": "2", "type": "skip", "item_id": "50"},
    {"event_id": "d", "ts": 881250949, "user_id": "1", "type": "click", "item_id": "50"},
    {"event_id": "e", "ts": 881250952000, "type": "item", "item_id": "60", "attributes": {"title": "x"}},
]


def _write_log(path: Path) -> Path:
    rows = [json.dumps(r) for r in LINES] + ["not json", '{"event_id": "f", "type": "teleport"}']
    path.write_text("\n".join(rows) + "\n")
    return path


def _replay(log: Path, tmp_path: Path, redis_url: str):
    return run(["--input", str(log), "--dead_letters", str(tmp_path / "dl"), "--redis_url", redis_url,
                "--runner", "FnApiRunner"])


def test_replay_reconciles_and_writes_redis(tmp_path: Path, redis: redis_lib.Redis, redis_url: str) -> None:
    result = _replay(_write_log(tmp_path / "log.jsonl"), tmp_path, redis_url)
    assert result["events_read"] == 8
    assert result["duplicates"] == 1
    assert result["dead_letters"] == 3
    assert result["events_written"] == 4
    assert result.reconciles
    assert read_activity(redis, "user", "1") == {"rating": 1, "click": 1}
    assert read_activity(redis, "user", "2") == {"skip": 1}
    assert read_activity(redis, "item", "50") == {"rating": 1, "click": 1, "skip": 1}

    dead = [json.loads(ln) for ln in (tmp_path / "dl.jsonl").read_text().splitlines()]
    assert sorted((d["field"], d["raw"][:12]) for d in dead) == [
        ("$", "not json"), ("ts", '{"event_id":'), ("type", '{"event_id":')
    ]
    assert all(d["reason"] for d in dead)


def test_replaying_twice_leaves_the_same_state(tmp_path: Path, redis: redis_lib.Redis, redis_url: str) -> None:
    log = _write_log(tmp_path / "log.jsonl")
    _replay(log, tmp_path, redis_url)
    first = {k: redis.hgetall(k) for k in redis.scan_iter()}
    _replay(log, tmp_path, redis_url)
    assert {k: redis.hgetall(k) for k in redis.scan_iter()} == first
