"""Batch replay: a real Beam pipeline into a real Redis; counts reconcile, dead letters say where."""

from __future__ import annotations

import json
from pathlib import Path

import redis as redis_lib

from pipelines.replay import run
from schemas.clock import clock_from
from stores.feature_store import FeatureStore
from tests.reference import raw

AS_OF = "1997-12-05T00:00:00Z"
LINES = [
    {"event_id": "i", "ts": 881250000000, "type": "item", "item_id": "50",
     "attributes": {"title": "Star Wars", "categories": ["Action", "Sci-Fi"]}},
    {"event_id": "a", "ts": 881250949000, "user_id": "1", "type": "rating", "item_id": "50", "value": 4},
    {"event_id": "a", "ts": 881250949000, "user_id": "1", "type": "rating", "item_id": "50", "value": 4},
    {"event_id": "b", "ts": "1997-12-04T15:55:50Z", "user_id": "1", "type": "click", "item_id": "50"},
    {"event_id": "c", "ts": 881250951000, "user_id": "2", "type": "skip", "item_id": "50"},
    {"event_id": "d", "ts": 881250949, "user_id": "1", "type": "click", "item_id": "50"},
]


def _write_log(path: Path) -> Path:
    rows = [json.dumps(r) for r in LINES] + ["not json", '{"event_id": "f", "type": "teleport"}']
    path.write_text("\n".join(rows) + "\n")
    return path


def _replay(log: Path, tmp_path: Path, redis_url: str, *extra: str):
    return run(["--input", str(log), "--dead_letters", str(tmp_path / "dl"), "--redis_url", redis_url,
                "--vector_store", f"embedded://{tmp_path / 'vectors'}", "--as_of", AS_OF, *extra])


def test_replay_reconciles_and_writes_features(tmp_path: Path, redis: redis_lib.Redis, redis_url: str) -> None:
    result = _replay(_write_log(tmp_path / "log.jsonl"), tmp_path, redis_url)
    assert (result["events_read"], result["duplicates"], result["dead_letters"], result["events_written"]) == (
        8, 1, 3, 4)
    assert result.reconciles

    store = FeatureStore(redis, clock_from(AS_OF))
    user = store.user_features("1")
    assert [(r["type"], r["item_id"]) for r in user["recent"]] == [("click", "50"), ("rating", "50")]  # b, a
    assert user["windows"]["24h"] == {"c:Action": 2, "c:Sci-Fi": 2, "t:click": 1, "t:rating": 1}
    assert user["session"]["length"] == 2
    # The skip is a non-click (β+1); the organic click (no request_id) and the rating leave α at 0.
    assert store.bandit("global")["50"].sums.tolist() == [0.0, 1.0]
    assert store.bandit("*")["50"].sums.tolist() == [0.0, 1.0]
    assert json.loads(store.item_attributes(["50"])["50"]["categories"]) == ["Action", "Sci-Fi"]

    dead = [json.loads(ln) for ln in (tmp_path / "dl.jsonl").read_text().splitlines()]
    assert sorted((d["line"], d["field"]) for d in dead) == [(6, "ts"), (7, "$"), (8, "type")]
    assert all(d["source"].endswith("log.jsonl") and d["reason"] for d in dead)


def test_replaying_twice_leaves_the_same_state(tmp_path: Path, redis: redis_lib.Redis, redis_url: str) -> None:
    log = _write_log(tmp_path / "log.jsonl")
    _replay(log, tmp_path, redis_url)
    guards = FeatureStore(redis).guard_stats()["guards"]
    first = raw(redis)
    again = _replay(log, tmp_path, redis_url)
    assert again["keys_merged"] == 0 and again["merges_skipped_by_guard"] > 0
    assert raw(redis) == first
    assert FeatureStore(redis).guard_stats()["guards"] == guards

