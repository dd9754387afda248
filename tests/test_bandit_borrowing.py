"""A sparse segment borrows from the global row; a dense one keeps its own rate."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from transforms.summaries.bandit import borrowed_posterior, global_rate


def mean(ab: tuple[float, float]) -> float:
    return ab[0] / (ab[0] + ab[1])


def test_sparse_segment_follows_the_global_rate() -> None:
    glob = (300.0, 9_700.0)  # 3 % over all segments
    empty = borrowed_posterior((0.0, 0.0), glob)
    assert abs(mean(empty) - 0.03) < 0.05
    one_click = borrowed_posterior((1.0, 0.0), glob)
    assert mean(one_click) < 0.2  # one lucky click does not make a 100 % item


def test_dense_segment_keeps_its_own_rate() -> None:
    glob = (300.0, 9_700.0)
    dense = borrowed_posterior((2_000.0, 8_000.0), glob)  # 20 % in this segment
    assert abs(mean(dense) - 0.2) < 0.005


@given(st.floats(0, 1e4), st.floats(0, 1e4), st.floats(0, 1e4), st.floats(0, 1e4), st.floats(0.1, 1e3))
def test_posterior_mean_lies_between_segment_and_global(a_s: float, b_s: float, a_g: float, b_g: float,
                                                        strength: float) -> None:
    a, b = borrowed_posterior((a_s, b_s), (a_g, b_g), strength)
    seg = (a_s + 1) / (a_s + b_s + 2)
    p = global_rate(a_g, b_g)
    assert min(seg, p) - 1e-9 <= mean((a, b)) <= max(seg, p) + 1e-9
