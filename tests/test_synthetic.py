"""The synthetic world: deterministic files, valid events, and ground truth that holds up.

The default world (seed 0) is generated once per module; determinism and corruption checks
use a small world, the propensity check an impression-heavy one.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from pipelines.datasets import FetchOptions, fetch
from pipelines.datasets.synthetic import (
    LOGGING_POLICY,
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    SyntheticConfig,
    SyntheticWorld,
    generate,
    plackett_luce_marginals,
)
from schemas.clock import parse_instant
from schemas.events import EventType, parse_event

FILES = ("items.jsonl", "events.jsonl", "truth.json", "session_shifts.jsonl", "manifest.json")
SMALL = SyntheticConfig(n_users=120, n_items=96)


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def digests(out: Path) -> dict[str, str]:
    return {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in FILES}


def late_share(ts: list[int]) -> float:
    """Share of lines whose ts is below the maximum ts of the lines before them."""
    running = np.maximum.accumulate(np.array(ts))
    return float(np.mean(np.array(ts[1:]) < running[:-1]))


@pytest.fixture(scope="module")
def default_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic-default")
    generate(out, seed=0)
    return out


@pytest.fixture(scope="module")
def events(default_out: Path) -> list[dict]:
    return read_jsonl(default_out / "events.jsonl")


@pytest.fixture(scope="module")
def world(default_out: Path) -> SyntheticWorld:
    return SyntheticWorld.load(default_out)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = (generate(tmp_path / name, seed, SMALL) for name, seed in (("a", 7), ("b", 7), ("c", 8)))
    assert a == b
    da, db, dc = digests(tmp_path / "a"), digests(tmp_path / "b"), digests(tmp_path / "c")
    assert da == db
    assert all(da[name] != dc[name] for name in FILES)


def test_every_line_is_a_valid_event_and_every_type_occurs(default_out: Path, events: list[dict]) -> None:
    items = [parse_event(line) for line in (default_out / "items.jsonl").read_text().splitlines()]
    user_events = [parse_event(line) for line in (default_out / "events.jsonl").read_text().splitlines()]
    assert {e.type for e in items} == {EventType.ITEM}
    assert {e.type for e in items + user_events} == set(EventType)
    # Item events come first in time; user events are sorted by (ts, event_id) and unique.
    assert max(e.ts for e in items) < min(e.ts for e in user_events)
    keys = [(e.ts, e.event_id) for e in user_events]
    assert keys == sorted(keys)
    assert len({e.event_id for e in user_events}) == len(user_events)
    manifest = json.loads((default_out / "manifest.json").read_text())
    counted = Counter(e.type.value for e in items + user_events)
    assert manifest["types"] == dict(counted)
    assert manifest["files"]["events.jsonl"]["events"] == len(user_events)
    # Impressions carry the logging policy; every impression click points at its request.
    impressions = {(e.request_id, e.item_id) for e in user_events if e.type is EventType.IMPRESSION}
    assert all(e.variant == LOGGING_POLICY and 0 < e.propensity <= 1 for e in user_events
               if e.type is EventType.IMPRESSION)
    assert all((e.request_id, e.item_id) in impressions for e in user_events
               if e.type is EventType.CLICK and e.request_id is not None)


def test_session_shifts_match_the_browsed_categories(
    default_out: Path, events: list[dict], world: SyntheticWorld
) -> None:
    shifts = read_jsonl(default_out / "session_shifts.jsonl")
    manifest = json.loads((default_out / "manifest.json").read_text())
    assert 0.55 < len(shifts) / manifest["sessions"] < 0.85  # shift_probability 0.7, less 1-step sessions
    assert len({s["session_id"] for s in shifts}) == len(shifts)
    views: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        if e["type"] == "view":  # browse events follow the intent; impressions follow the policy
            views[e["context"]["session_id"]].append(e)
    for shift in shifts:
        assert shift["intent_before"] != shift["intent_after"]
        at = parse_instant(shift["ts"])
        cats = [(parse_instant(v["ts"]), world.category_names[world.item_category[world.item_index(v["item_id"])]])
                for v in views[shift["session_id"]]]
        before = [c for t, c in cats if t < at]
        after = [c for t, c in cats if t >= at]
        assert before and after
        assert set(before) == {shift["intent_before"]}
        assert set(after) == {shift["intent_after"]}


def _opportunities(events: list[dict], world: SyntheticWorld) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    imps = [e for e in events if e["type"] == "impression"]
    users = np.array([world.user_index(e["user_id"]) for e in imps])
    positions = np.array([e["position"] for e in imps])
    segments = np.array([world.segment_index(e["context"]["segment"]) for e in imps])
    return users, positions, segments


def test_oracle_policy_gets_at_least_three_times_the_uniform_click_rate(
    events: list[dict], world: SyntheticWorld
) -> None:
    users, positions, segments = _opportunities(events, world)
    rng = np.random.default_rng(1234)
    p_uniform = np.zeros(len(users))
    p_oracle = np.zeros(len(users))
    p_uniform_pick = np.zeros(len(users))
    for g in np.unique(segments):
        m = segments == g
        pool = world.candidate_pool(g)
        grid = world.click_probability(users[m][:, None], pool[None, :], positions[m][:, None])
        p_uniform[m] = grid.mean(axis=1)
        p_oracle[m] = grid.max(axis=1)
        p_uniform_pick[m] = grid[np.arange(m.sum()), rng.integers(len(pool), size=m.sum())]
    ratio = p_oracle.mean() / p_uniform.mean()
    assert ratio >= 3.0, ratio  # measured ~5.0 on the default world
    oracle_clicks = (rng.random(len(users)) < p_oracle).sum()
    uniform_clicks = (rng.random(len(users)) < p_uniform_pick).sum()
    assert oracle_clicks >= 3.0 * uniform_clicks, (oracle_clicks, uniform_clicks)

    # The logged clicks follow the same click model: rate within 4 standard errors.
    items = np.array([world.item_index(e["item_id"]) for e in events if e["type"] == "impression"])
    expected = world.click_probability(users, items, positions)
    clicks = sum(1 for e in events if e["type"] == "click" and "request_id" in e)
    se = np.sqrt((expected * (1 - expected)).sum())
    assert abs(clicks - expected.sum()) < 4 * se, (clicks, expected.sum(), se)


def test_logged_propensities_match_the_logging_policy_frequencies(tmp_path: Path) -> None:
    # Impression-heavy world: 2 segments × 3 positions, ≥ 15k requests per (segment, position).
    # The standard error of a frequency with p ≤ 0.14 (asserted below) at n ≥ 15k is
    # ≤ sqrt(0.14·0.86/15000) ≈ 0.0028, so 1 percentage point is ≥ 3.5 SE in every cell
    # (measured for seed 3: worst cell 0.48 pp, mean 0.09 pp, max |z| 2.6 over 240 cells).
    config = SyntheticConfig(
        n_users=2700, n_segments=2, sessions_per_user=(1, 2), steps_per_session=(1, 1),
        requests_per_session=(8, 8), skip_rate=0.0, rating_rate=0.0,
    )
    out = tmp_path / "impressions"
    generate(out, seed=3, config=config)
    world = SyntheticWorld.load(out)
    assert max(world.logging_propensities(g).max() for g in range(2)) <= 0.14
    counts: dict[tuple[str, int], Counter[str]] = defaultdict(Counter)
    logged: dict[tuple[str, int, str], float] = {}
    with (out / "events.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            if '"impression"' not in line:
                continue
            e = json.loads(line)
            key = (e["context"]["segment"], e["position"])
            counts[key][e["item_id"]] += 1
            assert logged.setdefault((*key, e["item_id"]), e["propensity"]) == e["propensity"]
    assert sum(c.total() for c in counts.values()) >= 90_000
    worst = 0.0
    for (segment, position), counter in counts.items():
        n = counter.total()
        assert n >= 15_000
        exact = world.logging_propensities(world.segment_index(segment))[position]
        for i in world.candidate_pool(world.segment_index(segment)):
            item_id = world.item_id(i)
            freq = counter[item_id] / n
            if (segment, position, item_id) in logged:  # an item never drawn logs nothing
                assert logged[(segment, position, item_id)] == pytest.approx(exact[i], abs=1e-6)
            worst = max(worst, abs(freq - exact[i]))
        assert set(counter) <= {world.item_id(i) for i in world.candidate_pool(world.segment_index(segment))}
    assert worst < 0.01, worst


def test_plackett_luce_marginals_are_distributions() -> None:
    w = np.array([0.5, 0.3, 0.15, 0.05])
    m = plackett_luce_marginals(w, 3)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    np.testing.assert_allclose(m[0], w)
    assert (m.sum(axis=0) <= 1.0 + 1e-12).all()
    # Position 1 of item 0: it is second when another item comes first.
    assert m[1, 0] == pytest.approx(sum(w[j] * w[0] / (1 - w[j]) for j in (1, 2, 3)))


def _nearest_centroid_accuracy(vectors: list[list[float]], labels: list[int], n_classes: int) -> float:
    x, y = np.array(vectors), np.array(labels)
    train = np.arange(len(y)) % 2 == 0
    centroids = np.array([x[train & (y == c)].mean(axis=0) for c in range(n_classes)])
    pred = np.argmin(((x[~train][:, None, :] - centroids[None]) ** 2).sum(axis=-1), axis=1)
    return float((pred == y[~train]).mean())


def test_informative_modalities_predict_the_category_and_some_are_missing(
    default_out: Path, world: SyntheticWorld
) -> None:
    items = read_jsonl(default_out / "items.jsonl")
    truth = json.loads((default_out / "truth.json").read_text())
    order = truth["modality_informativeness"]
    assert order == ["image", "text", "audio", "video"]
    accuracy = {}
    for modality in order:
        rows = [it["attributes"] for it in items if modality in it["attributes"].get("vectors", {})]
        assert 0 < len(rows) < len(items)  # present for some items, missing for others
        labels = [world.category_names.index(r["categories"][0]) for r in rows]
        accuracy[modality] = _nearest_centroid_accuracy(
            [r["vectors"][modality] for r in rows], labels, world.config.n_categories
        )
    chance = 1 / world.config.n_categories
    assert accuracy["image"] > 0.9
    assert accuracy["image"] > accuracy["text"] > max(accuracy["audio"], accuracy["video"])
    assert accuracy["video"] < chance + 0.15  # pure noise
    assert accuracy["image"] - accuracy["video"] > 0.5, accuracy


def test_reviews_carry_sentiment_by_rating(events: list[dict]) -> None:
    score: dict[int, list[int]] = defaultdict(list)
    for e in events:
        if e["type"] == "review":
            words = e["text"].split()
            score[int(e["value"])].append(sum(w in POSITIVE_WORDS for w in words)
                                          - sum(w in NEGATIVE_WORDS for w in words))
    means = [np.mean(score[r]) for r in range(1, 6)]
    assert means == sorted(means) and means[0] < 0 < means[-1]


def test_load_rebuilds_the_same_world(default_out: Path, world: SyntheticWorld) -> None:
    original = SyntheticWorld(0, SyntheticConfig())
    users = np.arange(original.n_users)[:, None]
    items = np.arange(original.n_items)[None, :]
    for position in range(original.config.slate_size):
        np.testing.assert_array_equal(
            world.click_probability(users, items, position), original.click_probability(users, items, position)
        )
    for g in range(original.config.n_segments):
        np.testing.assert_array_equal(world.logging_propensities(g), original.logging_propensities(g))
    truth = json.loads((default_out / "truth.json").read_text())
    assert truth["seed"] == 0 and SyntheticConfig.from_dict(truth["config"]) == SyntheticConfig()
    np.testing.assert_allclose([u["taste"] for u in truth["users"]], original.user_taste, atol=1e-6)
    np.testing.assert_allclose([i["latent"] for i in truth["items"]], original.item_latent, atol=1e-6)


def test_duplicate_and_disorder_rates_are_honoured(tmp_path: Path) -> None:
    clean_out, noisy_out = tmp_path / "clean", tmp_path / "noisy"
    generate(clean_out, 5, SMALL)
    config = SyntheticConfig(n_users=SMALL.n_users, n_items=SMALL.n_items, duplicate_rate=0.05, disorder_rate=0.1)
    generate(noisy_out, 5, config)
    clean = (clean_out / "events.jsonl").read_text().splitlines()
    noisy = (noisy_out / "events.jsonl").read_text().splitlines()
    assert (clean_out / "items.jsonl").read_bytes() == (noisy_out / "items.jsonl").read_bytes()
    # The same events, some twice (same event_id, same content), some late.
    assert set(noisy) == set(clean)
    assert (len(noisy) - len(clean)) / len(clean) == pytest.approx(0.05, abs=0.002)
    ts = [parse_instant(json.loads(line)["ts"]) for line in noisy]
    assert late_share(ts) == pytest.approx(0.1, abs=0.01)
    assert late_share([parse_instant(json.loads(line)["ts"]) for line in clean]) == 0.0


def test_fetch_entry_point_scales_the_world(tmp_path: Path) -> None:
    manifest = fetch("synthetic", tmp_path, FetchOptions(seed=2, scale=0.2))
    assert manifest["users"] == 100 and manifest["items"] == 60
    assert manifest["dataset"] == "synthetic" and manifest["seed"] == 2
    assert set(manifest["files"]) == {"items.jsonl", "events.jsonl"}  # event logs only
    assert manifest["ground_truth"]["shifts"] == sum(1 for _ in (tmp_path / "session_shifts.jsonl").open())
