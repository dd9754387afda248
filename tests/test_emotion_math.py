"""The emotion summary's math: forward-decayed mean and variance that merge in any order."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.summaries.emotion import DECAYED_AWAY, EmotionSummary, rating_to_signal

Obs = tuple[int, float | None, float | None]
YEAR_MS = 365 * 86_400_000
TS_1990, TS_2099 = 631_152_000_000, 4_102_444_799_000  # the event contract's time bounds
MAX_SPAN_TAUS = 600  # keeps every weight ≥ e^-600, well above DECAYED_AWAY (tested apart below)

taus = st.one_of(st.sampled_from([60_000.0, 3_600_000.0, 7 * 86_400_000.0]), st.floats(1_000.0, 10.0 * YEAR_MS))
valences = st.one_of(st.none(), st.floats(-1.0, 1.0))
ratings = st.one_of(st.none(), st.integers(1, 5).map(float), st.floats(1.0, 5.0))


@st.composite
def histories(
    draw: st.DrawFn, min_size: int = 1, max_size: int = 12, span_taus: float = MAX_SPAN_TAUS
) -> tuple[float, list[Obs]]:
    """τ and observations spread over at most span_taus·τ (or 100 years, if less)."""
    tau = draw(taus)
    span = int(min(span_taus * tau, 100 * YEAR_MS))
    start = draw(st.integers(TS_1990, TS_2099 - span))
    obs = draw(st.lists(st.tuples(st.integers(start, start + span), valences, ratings), min_size=min_size,
                        max_size=max_size))
    return tau, obs


def summaries(obs: list[Obs], tau: float) -> list[EmotionSummary]:
    return [EmotionSummary.from_observation(t, v, r, tau) for t, v, r in obs]


def fold(parts: list[EmotionSummary], tau: float) -> EmotionSummary:
    acc = EmotionSummary.empty()
    for s in parts:
        acc = EmotionSummary.merge(acc, s, tau)
    return acc


def tree(parts: list[EmotionSummary], tau: float, draw: st.DrawFn) -> EmotionSummary:
    """Merge along a random binary tree, as combiner lifting and re-bundling would."""
    if len(parts) == 1:
        return parts[0]
    cut = draw(st.integers(1, len(parts) - 1))
    return EmotionSummary.merge(tree(parts[:cut], tau, draw), tree(parts[cut:], tau, draw), tau)


def direct(obs: list[Obs], tau: float) -> tuple[float | None, float | None, float | None]:
    """Mean, variance (two-pass) and rating signal straight from the weights exp((t − max t)/τ)."""
    last = max(t for t, _, _ in obs)
    vw = [(math.exp((t - last) / tau), v) for t, v, _ in obs if v is not None]
    rw = [(math.exp((t - last) / tau), rating_to_signal(r)) for t, _, r in obs if r is not None]
    mean = var = sig = None
    if vw:
        sw = sum(w for w, _ in vw)
        mean = sum(w * v for w, v in vw) / sw
        var = sum(w * (v - mean) ** 2 for w, v in vw) / sw
    if rw:
        sig = sum(w * x for w, x in rw) / sum(w for w, _ in rw)
    return mean, var, sig


def same_value(a: float | None, b: float | None, tol: float = 1e-9) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, abs_tol=tol))


def same_summary(a: EmotionSummary, b: EmotionSummary, rel: float = 1e-9) -> bool:
    """Equal landmark and count; sums within `rel` of the group's weight (|Σw·x| ≤ Σw since |x| ≤ 1)."""
    def group(x: tuple[float, ...], y: tuple[float, ...]) -> bool:
        scale = max(x[0], y[0])
        return all(math.isclose(p, q, rel_tol=rel, abs_tol=rel * scale) for p, q in zip(x, y, strict=True))

    return (
        a.landmark_ms == b.landmark_ms
        and a.n == b.n
        and group((a.sw, a.swx, a.swx2), (b.sw, b.swx, b.swx2))
        and group((a.rating_sw, a.rating_swx), (b.rating_sw, b.rating_swx))
    )


@given(histories(1, 2), histories(1, 2))
def test_merge_is_commutative(h1: tuple[float, list[Obs]], h2: tuple[float, list[Obs]]) -> None:
    tau = h1[0]
    a, b = fold(summaries(h1[1], tau), tau), fold(summaries(h2[1], tau), tau)
    assert EmotionSummary.merge(a, b, tau) == EmotionSummary.merge(b, a, tau)


@given(histories(3, 9), st.data())
def test_merge_is_associative(h: tuple[float, list[Obs]], data: st.DataObject) -> None:
    tau, obs = h
    parts = summaries(obs, tau)
    i = data.draw(st.integers(1, len(parts) - 2))
    j = data.draw(st.integers(i + 1, len(parts) - 1))
    a, b, c = fold(parts[:i], tau), fold(parts[i:j], tau), fold(parts[j:], tau)
    left = EmotionSummary.merge(EmotionSummary.merge(a, b, tau), c, tau)
    right = EmotionSummary.merge(a, EmotionSummary.merge(b, c, tau), tau)
    assert same_summary(left, right), (left, right)


@settings(max_examples=300)
@given(histories(1, 12), st.data())
def test_any_merge_order_gives_the_direct_weighted_mean_and_variance(
    h: tuple[float, list[Obs]], data: st.DataObject
) -> None:
    tau, obs = h
    mean, var, sig = direct(obs, tau)
    order = data.draw(st.permutations(summaries(obs, tau)))
    for merged in (fold(order, tau), tree(order, tau, data.draw)):
        assert merged.n == len(obs)
        assert merged.landmark_ms == max(t for t, _, _ in obs)
        assert same_value(merged.valence(), mean), (merged, mean)
        assert same_value(merged.arousal(), var), (merged, var)
        assert same_value(merged.rating_signal(), sig), (merged, sig)


@given(histories(1, 8, span_taus=MAX_SPAN_TAUS / 2), st.floats(0.0, MAX_SPAN_TAUS / 2))
def test_relandmarking_keeps_values(h: tuple[float, list[Obs]], shift_taus: float) -> None:
    """Forward to any landmark within the span where nothing has decayed away, and back."""
    tau, obs = h
    s = fold(summaries(obs, tau), tau)
    later = s.relandmark(s.landmark_ms + int(shift_taus * tau), tau)
    for read in (EmotionSummary.valence, EmotionSummary.arousal, EmotionSummary.rating_signal):
        assert same_value(read(later), read(s))
    now = later.landmark_ms + 1000
    assert math.isclose(later.weight(now, tau), s.weight(now, tau), rel_tol=1e-9, abs_tol=1e-300)
    assert same_summary(later.relandmark(s.landmark_ms, tau), s, rel=1e-6)  # back again: e^±300 round trip


@given(
    st.lists(st.tuples(st.integers(TS_1990, TS_2099), valences, ratings), min_size=1, max_size=10),
    st.floats(1.0, 10.0 * YEAR_MS),
    st.data(),
)
def test_events_decades_apart_never_overflow(obs: list[Obs], tau: float, data: st.DataObject) -> None:
    """Weights stay ≤ 1 at the latest landmark: sums are bounded by the count, whatever the span."""
    merged = tree(data.draw(st.permutations(summaries(obs, tau))), tau, data.draw)
    fields = (merged.sw, merged.swx, merged.swx2, merged.rating_sw, merged.rating_swx)
    assert all(math.isfinite(f) for f in fields)
    assert 0.0 <= merged.sw <= merged.n and 0.0 <= merged.rating_sw <= merged.n
    assert merged.swx2 <= merged.sw + 1e-12
    for value in (merged.valence(), merged.rating_signal()):
        assert value is None or -1.0 <= value <= 1.0
    assert merged.arousal() is None or 0.0 <= merged.arousal() <= 1.0
    # The latest event always keeps weight 1, so its groups never decay away.
    latest = [o for o in obs if o[0] == merged.landmark_ms]
    if any(v is not None for _, v, _ in latest):
        assert merged.sw >= 1.0 - 1e-12


def test_decades_apart_with_a_short_tau_keeps_only_the_recent() -> None:
    hour = 3_600_000.0
    old = EmotionSummary.from_observation(TS_1990, -1.0, 1.0, hour)
    new = EmotionSummary.from_observation(TS_2099, 0.5, 5.0, hour)
    merged = EmotionSummary.merge(old, new, hour)
    assert merged == EmotionSummary.merge(new, old, hour)
    assert (merged.valence(), merged.arousal(), merged.rating_signal(), merged.n) == (0.5, 0.0, 1.0, 2)
    # A landmark fixed at the epoch would need weights of e^(4.1e12 / 3.6e6): far beyond float range.
    with pytest.raises(OverflowError):
        math.exp(TS_2099 / hour)


def test_a_group_that_decayed_away_reads_as_none() -> None:
    tau = 1000.0
    old_review = EmotionSummary.from_observation(0, 0.8, None, tau)
    new_rating = EmotionSummary.from_observation(700_000, None, 4.0, tau)  # 700 τ later
    merged = EmotionSummary.merge(old_review, new_rating, tau)
    assert merged.sw == 0.0 < DECAYED_AWAY and merged.valence() is None and merged.arousal() is None
    assert merged.rating_signal() == 0.5 and merged.n == 2


def test_values_of_small_histories() -> None:
    tau = 7 * 86_400_000.0
    t = 1_700_000_000_000
    a = EmotionSummary.from_observation(t, 1.0, 5.0, tau)
    b = EmotionSummary.from_observation(t, -1.0, 1.0, tau)
    both = EmotionSummary.merge(a, b, tau)
    assert (both.valence(), both.arousal(), both.rating_signal()) == (0.0, 1.0, 0.0)
    older = EmotionSummary.from_observation(t - int(tau), 1.0, None, tau)  # weight 1/e
    c = EmotionSummary.merge(older, EmotionSummary.from_observation(t, 0.0, None, tau), tau)
    assert c.valence() == pytest.approx(math.exp(-1) / (1 + math.exp(-1)))
    assert c.rating_signal() is None
    assert a.weight(t + int(tau), tau) == pytest.approx(math.exp(-1))
    assert a.weight(t - 5, tau) == 1.0  # reading before the landmark never inflates
    assert [rating_to_signal(r) for r in (1, 2, 3, 4, 5)] == [-1.0, -0.5, 0.0, 0.5, 1.0]


def test_empty_is_the_identity() -> None:
    e = EmotionSummary.empty()
    s = EmotionSummary.from_observation(TS_1990, 0.3, None, 1000.0)
    assert EmotionSummary.merge(e, s, 1000.0) == s == EmotionSummary.merge(s, e, 1000.0)
    assert (e.valence(), e.arousal(), e.rating_signal(), e.weight(TS_1990, 1000.0)) == (None, None, None, 0.0)


@given(histories(1, 6))
def test_dict_round_trip_through_json(h: tuple[float, list[Obs]]) -> None:
    tau, obs = h
    s = fold(summaries(obs, tau), tau)
    assert EmotionSummary.from_dict(json.loads(json.dumps(s.to_dict()))) == s


@pytest.mark.parametrize(
    "bad",
    [{}, {"landmark_ms": 1}, {**EmotionSummary().to_dict(), "sw": -1.0}, {**EmotionSummary().to_dict(), "swx": "x"},
     {**EmotionSummary().to_dict(), "swx2": float("inf")}, {**EmotionSummary().to_dict(), "n": -1}],
)
def test_from_dict_refuses_what_is_not_a_summary(bad: dict) -> None:
    with pytest.raises(ValueError):
        EmotionSummary.from_dict(bad)


@pytest.mark.parametrize(
    "valence, rating, tau",
    [(1.5, None, 1.0), (math.nan, None, 1.0), (None, 0.0, 1.0), (None, 5.5, 1.0), (0.0, None, 0.0),
     (0.0, None, -1.0), (0.0, None, math.inf)],
)
def test_observation_validates(valence: float | None, rating: float | None, tau: float) -> None:
    with pytest.raises(ValueError):
        EmotionSummary.from_observation(TS_1990, valence, rating, tau)
