"""Local live mode: the Redis event stream → micro-batches of the batch transforms → Redis and the lake.

Against a real Redis (the session fixture) and Beam's in-process runner; the crash test kills a
real driver process with the crash hook and restarts it.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import redis as redis_lib

from pipelines import live
from pipelines.datasets.synthetic import SyntheticConfig, generate
from pipelines.replay import run as replay
from schemas import keys
from schemas.clock import clock_from, parse_instant
from schemas.features import FeatureConfig
from stores import event_stream, lake
from stores.feature_store import FeatureStore

ROOT = Path(__file__).resolve().parents[1]
SYN_AS_OF = "2026-01-18T00:00:00Z"  # just after the synthetic log ends
REFERENCE_MS = parse_instant(SYN_AS_OF)
SYN_BATCH = "130"  # uneven against the log: the last batch is short
LIVE_KEYS = (keys.EVENT_STREAM.encode(), keys.DEAD_LETTER_STREAM.encode(), b"pr:seen:", b"pr:live:",
             keys.VECTOR_QUEUE.encode())


def _args(url: str, tmp: Path, *extra: str) -> list[str]:
    return ["--redis_url", url, "--lake", str(tmp / "lake"), "--vector_store", f"embedded://{tmp / 'vectors'}",
            "--block_ms", "100", "--idle_exit_s", "0.3", "--quiet", *extra]


def feature_state(client: redis_lib.Redis) -> dict:
    """Every feature key's contents (no guards, no stream, markers or queues of live mode);
    trending scores as of one instant, since their landmark depends on the merge order."""
    out = {}
    for key in client.scan_iter():
        if b":g:" in key or key.startswith(LIVE_KEYS) or key.endswith(b":trend:landmark"):
            continue
        kind = client.type(key)
        if kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"zset" and key.endswith(b":trend"):  # decayed scores: compared as of one instant
            at = math.exp((int(client.get(key + b":landmark")) - REFERENCE_MS) / FeatureConfig().trending_tau_ms)
            out[key] = {m: s * at for m, s in client.zrange(key, 0, -1, withscores=True)}
        elif kind == b"zset":
            out[key] = dict(client.zrange(key, 0, -1, withscores=True))
        elif kind == b"list":
            out[key] = client.lrange(key, 0, -1)
        else:
            out[key] = client.get(key)
    return out


def _tau(key: bytes) -> float:
    """The forward-decay constant of a key's decayed fields (FeatureConfig's defaults)."""
    config = FeatureConfig()
    if key.endswith(b":emo"):
        return config.emotion_tau_ms
    if key.endswith(b":vec"):
        return config.embedding_tau_ms
    return 0.0  # bandit rows: exact counts


def _close(a, b, tau: float = 0.0) -> bool:
    """Equal, except floats within 1e-9 relative; decayed `landmark;x,y,...` values are compared
    at a common landmark (the Lua merge keeps the first landmark it stored, so a key merged per
    micro-batch and the same key merged once hold the same value at different landmarks)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tau) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, tau) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, bytes) and isinstance(b, bytes) and a != b and a.count(b";") == 1 == b.count(b";"):
        try:
            (la, xa), (lb, xb) = [(int(la), [float(x) for x in xs.split(b",")]) for la, xs in
                                  (a.split(b";"), b.split(b";"))]
        except ValueError:
            return False
        if tau:
            top = max(la, lb)
            xa = [x * math.exp((la - top) / tau) for x in xa]
            xb = [x * math.exp((lb - top) / tau) for x in xb]
        elif la != lb:
            return False
        return _close(xa, xb)
    return a == b


def _diff(a: dict, b: dict) -> list:
    return sorted(k for k in a.keys() | b.keys() if k not in a or k not in b or not _close(a[k], b[k], _tau(k)))[:5]


@pytest.fixture(scope="module")
def synthetic_lines(tmp_path_factory) -> list[str]:
    """A small synthetic world (items first, then ~800 events with 5 % duplicates, 5 % late)."""
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, seed=3, config=SyntheticConfig(scale=0.02, duplicate_rate=0.05, disorder_rate=0.05))
    return (out / "items.jsonl").read_text().splitlines() + (out / "events.jsonl").read_text().splitlines()


@pytest.fixture(scope="module")
def clean_run(synthetic_lines, redis_url, tmp_path_factory) -> dict:
    """The reference: one uninterrupted live run over the synthetic stream."""
    tmp = tmp_path_factory.mktemp("clean")
    client = redis_lib.Redis.from_url(redis_url)
    client.flushdb()
    event_stream.append(client, synthetic_lines)
    result = live.run(_args(redis_url, tmp, "--batch_size", SYN_BATCH, "--as_of", SYN_AS_OF))
    state = {
        "result": result,
        "features": feature_state(client),
        "seen": sorted(client.scan_iter(match="pr:seen:*")),
        "lake": Counter(lake.read_lines(str(tmp / "lake"))),
        "lake_root": str(tmp / "lake"),
        "stream_len": client.xlen(keys.EVENT_STREAM),
    }
    client.close()
    return state


EVENTS = [
    {"event_id": "item-50", "ts": "1997-12-04T00:00:00Z", "type": "item", "item_id": "50",
     "attributes": {"title": "Star Wars", "categories": ["Action", "Sci-Fi"]}},
    {"event_id": "a", "ts": "1997-12-04T15:55:49Z", "user_id": "1", "type": "rating", "item_id": "50", "value": 4},
    {"event_id": "b", "ts": "1997-12-04T15:55:50Z", "user_id": "1", "type": "click", "item_id": "50"},
    {"event_id": "c", "ts": "1997-12-04T15:55:51Z", "user_id": "2", "type": "skip", "item_id": "50"},
    {"event_id": "d", "ts": "1997-12-04T15:56:00Z", "user_id": "1", "type": "impression", "item_id": "50",
     "request_id": "r1", "position": 0, "propensity": 0.5},
    {"event_id": "e", "ts": "1997-12-04T15:56:01Z", "user_id": "1", "type": "click", "item_id": "50",
     "request_id": "r1"},
]
AS_OF = "1997-12-05T00:00:00Z"


def test_appended_events_become_visible_through_the_readers(redis, redis_url, tmp_path) -> None:
    ids = event_stream.append(redis, EVENTS[:3])
    ids += event_stream.append(redis, [EVENTS[1]])  # a retry, two batches after its original
    ids += event_stream.append(redis, EVENTS[3:])
    result = live.run(_args(redis_url, tmp_path, "--batch_size", "2", "--as_of", AS_OF))

    assert len(result.batches) == 4 and result.reconciles
    assert (result["entries"], result["events_written"], result["seen_before"]) == (7, 6, 1)
    assert result.batches[1].seen_before == 1  # the retry of "a" met its marker, set by batch 1
    store = FeatureStore(redis, clock_from(AS_OF))
    user = store.user_features("1")
    # e, a: an impression is no interaction, and the clicks b and e on item 50 are one, at e's time
    assert [(r["ts"], r["type"]) for r in user["recent"]] == [(parse_instant(EVENTS[5]["ts"]), "click"),
                                                             (parse_instant(EVENTS[1]["ts"]), "rating")]
    assert user["windows"]["24h"] == {"c:Action": 3, "c:Sci-Fi": 3, "t:click": 2, "t:rating": 1}
    # Item 50 was shown once (impression d) and clicked from that request (e); user 2 skipped it.
    assert store.bandit("global")["50"].sums.tolist() == [1.0, 1.0]
    assert json.loads(store.item_attributes(["50"])["50"]["categories"]) == ["Action", "Sci-Fi"]

    # Archived once each (the retry is not), then acknowledged and trimmed away.
    archived = [json.loads(line)["event_id"] for line in lake.read_lines(str(tmp_path / "lake"))]
    assert sorted(archived) == ["a", "b", "c", "d", "e", "item-50"]
    assert all("/dt=1997-12-04/events-" in p for p in lake.files(str(tmp_path / "lake")))
    assert redis.xlen(keys.EVENT_STREAM) == 0
    assert event_stream.archived_through(redis) == ids[-1]
    assert redis.xpending(keys.EVENT_STREAM, event_stream.GROUP)["pending"] == 0
    assert redis.ttl(keys.seen_event("a")) > 86_000  # the 24 h horizon


def test_malformed_entries_land_in_the_dead_letter_stream(redis, redis_url, tmp_path) -> None:
    ids = event_stream.append(redis, [EVENTS[1], "not json", {"event_id": "x", "ts": 1, "type": "teleport"},
                                      {"event_id": "y", "ts": "1997-12-04T15:00:00Z", "type": "click",
                                       "item_id": "50"}])
    no_event = redis.xadd(keys.EVENT_STREAM, {"payload": "wrong field"}).decode()
    result = live.run(_args(redis_url, tmp_path, "--as_of", AS_OF))

    assert result.reconciles and (result["events_written"], result["dead_letters"]) == (1, 4)
    dead = {d["source"]: d for d in event_stream.dead_letters(redis)}
    assert set(dead) == {f"stream:{i}" for i in [*ids[1:], no_event]}
    assert (dead[f"stream:{ids[1]}"]["field"], dead[f"stream:{ids[1]}"]["raw"]) == ("$", "not json")
    assert dead[f"stream:{ids[2]}"]["field"] == "type" and "teleport" in dead[f"stream:{ids[2]}"]["reason"]
    assert dead[f"stream:{ids[3]}"]["field"] == "user_id"
    assert dead[f"stream:{no_event}"]["field"] == "$" and dead[f"stream:{no_event}"]["reason"]
    # Written once per source entry: the same dead letter again adds nothing.
    again = event_stream.dead_letter(redis, [dict(dead[f"stream:{ids[1]}"])])
    assert again == 0 and redis.xlen(keys.DEAD_LETTER_STREAM) == 4


def test_stream_is_trimmed_only_below_archived_and_acknowledged(redis) -> None:
    event_stream.ensure_group(redis)
    ids = event_stream.append(redis, [{"n": i} for i in range(10)])
    first, _ = event_stream.read_batch(redis, "c", count=4, block_ms=0)
    assert [e.id for e in first] == ids[:4]
    assert event_stream.trim(redis) == 0  # nothing archived yet
    event_stream.mark_archived(redis, ids[3])
    assert event_stream.trim(redis) == 0  # archived but not acknowledged
    again, redelivered = event_stream.read_batch(redis, "c", count=2, block_ms=0)
    assert redelivered and [e.id for e in again] == ids[:4]  # the whole pending batch, not `count`
    event_stream.ack(redis, ids[:2])
    assert event_stream.trim(redis) == 2 and redis.xlen(keys.EVENT_STREAM) == 8
    event_stream.ack(redis, ids[2:4])
    event_stream.mark_archived(redis, ids[9])  # archived past what was ever delivered
    assert event_stream.trim(redis) == 2
    assert [e[0].decode() for e in redis.xrange(keys.EVENT_STREAM)] == ids[4:]
    event_stream.mark_archived(redis, ids[0])  # the mark never goes back
    assert event_stream.archived_through(redis) == ids[9]


def _driver(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "pipelines.live",
           *_args(url, tmp, "--batch_size", SYN_BATCH, "--as_of", SYN_AS_OF, *extra)]
    cmd.remove("--quiet")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_crash_between_merge_and_ack_then_restart_equals_a_clean_run(
        clean_run, synthetic_lines, redis, redis_url, tmp_path) -> None:
    event_stream.append(redis, synthetic_lines)
    batch = int(SYN_BATCH)

    # 1: killed after batch 2's merge, before it was marked, archived or acknowledged.
    first = _driver(redis_url, tmp_path, "--crash_after_batches", "2", "--crash_point", "merge")
    assert first.returncode == live.CRASH_EXIT_CODE, first.stderr[-2000:]
    assert redis.xpending(keys.EVENT_STREAM, event_stream.GROUP)["pending"] == batch
    assert lake.files(str(tmp_path / "lake")) and redis.xlen(keys.EVENT_STREAM) == len(synthetic_lines) - batch

    # 2: the batch comes back whole, its merges skipped by the guards; killed again during the
    # next batch, after it was marked seen and archived but before the acknowledgement.
    second = _driver(redis_url, tmp_path, "--crash_after_batches", "2", "--crash_point", "archive")
    assert second.returncode == live.CRASH_EXIT_CODE, second.stderr[-2000:]
    redelivered = [ln for ln in second.stdout.splitlines() if "(redelivered)" in ln]
    assert len(redelivered) == 1 and re.search(r", 0 keys merged, [1-9]\d* skipped by guard", redelivered[0])
    assert redis.xpending(keys.EVENT_STREAM, event_stream.GROUP)["pending"] == batch

    # 3: runs to the end; the batch whose markers and lake files exist is processed as the same batch.
    third = _driver(redis_url, tmp_path)
    assert third.returncode == 0, third.stdout[-2000:] + third.stderr[-2000:]
    assert "(redelivered)" in third.stdout.splitlines()[1]

    state = feature_state(redis)
    assert not _diff(state, clean_run["features"]) and state == clean_run["features"]
    assert sorted(redis.scan_iter(match="pr:seen:*")) == clean_run["seen"]
    lines = Counter(lake.read_lines(str(tmp_path / "lake")))
    assert lines == clean_run["lake"] and max(lines.values()) == 1  # no line archived twice
    assert redis.xlen(keys.EVENT_STREAM) == 0 == clean_run["stream_len"]
    assert redis.xpending(keys.EVENT_STREAM, event_stream.GROUP)["pending"] == 0


@pytest.mark.slow
def test_the_lake_replays_to_the_live_state(clean_run, redis, redis_url, tmp_path) -> None:
    res = clean_run["result"]
    assert res.reconciles and res["events_written"] == sum(clean_run["lake"].values())
    assert res["seen_before"] + res["duplicates"] > 0 and len(res.batches) >= 5

    replayed = replay(["--input", lake.lake_glob(clean_run["lake_root"]), "--redis_url", redis_url,
                       "--vector_store", f"embedded://{tmp_path / 'vectors'}", "--as_of", SYN_AS_OF,
                       "--dead_letters", str(tmp_path / "dl")])
    assert replayed.reconciles and replayed["dead_letters"] == 0 and replayed["duplicates"] == 0
    assert replayed["events_read"] == res["events_written"]
    state = feature_state(redis)
    assert not _diff(state, clean_run["features"]), _diff(state, clean_run["features"])
