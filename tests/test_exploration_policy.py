"""Serving's exploration policy: Thompson slates over the ranker's prior, their flags and propensities.

Everything is seeded; the closed loop runs on the synthetic world (`pipelines.bandit_sim`).
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.bandit_sim import LoopConfig, calibrated_probabilities, ranker_tau, run_all
from serving.exploration import (
    DEFAULT_N0,
    WH_MIN_SHAPE,
    Slate,
    action_distribution,
    contenders,
    exploration_share,
    theta_order_scores,
    thompson_slate,
)

K = 20


def _requests(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [calibrated_probabilities(rng) for _ in range(n)]


def _slates(requests: list[np.ndarray], seed: int, **kw) -> list[Slate]:
    """One slate per request with an empty bandit store (α = β = 1); propensities not needed."""
    rng = np.random.default_rng(seed)
    one = np.ones(100)
    return [thompson_slate(p, one, one, K, rng, n_sim=1, **kw) for p in requests]


# -- contenders: the items a draw can put in the top k -------------------------------------------


def _exact_top_k_items(a: np.ndarray, b: np.ndarray, k: int, draws: int, seed: int) -> set[int]:
    theta = np.random.default_rng(seed).beta(a, b, size=(draws, a.size))  # no pruning: every item drawn
    return set(np.argpartition(-theta, k - 1, axis=1)[:, :k].ravel().tolist())


@pytest.mark.parametrize("n0", [350.0, 23_500.0, 1e6])
def test_items_left_out_never_reach_the_top_k_of_an_exact_draw(n0: float) -> None:
    rng = np.random.default_rng(int(n0))
    left_out = 0
    for _ in range(5):
        p = calibrated_probabilities(rng)
        a, b = n0 * p + 1.0, n0 * (1.0 - p) + 1.0
        keep = contenders(a, b, K)
        kept = set(range(p.size)) if keep is None else set(keep.tolist())
        assert _exact_top_k_items(a, b, K, 20_000, seed=int(n0) + 1) <= kept
        left_out += p.size - len(kept)
    if n0 >= 23_500:
        assert left_out >= 5 * 20  # tight posteriors leave many items out
    else:
        assert left_out == 0  # the origin's n0: every item can still be explored


def test_pruned_and_exact_draws_give_the_same_action_distribution() -> None:
    p = calibrated_probabilities(np.random.default_rng(3))
    a, b = 23_500 * p + 1.0, 23_500 * (1.0 - p) + 1.0
    assert contenders(a, b, K) is not None
    pruned = action_distribution(a, b, K, n_sim=40_000, seed=1)
    theta = np.random.default_rng(2).beta(a, b, size=(40_000, a.size))
    order = np.argsort(-theta, axis=1)[:, :K]
    exact = np.zeros_like(pruned)
    for j in range(K):
        exact[:, j] = np.bincount(order[:, j], minlength=a.size) / 40_000
    se = np.sqrt(np.maximum(exact * (1 - exact), 1e-4) / 40_000)
    assert np.all(np.abs(pruned - exact) <= 5 * np.sqrt(2) * se)


# -- Wilson–Hilferty draws for tight posteriors ----------------------------------------------------


@pytest.mark.parametrize("shape", [WH_MIN_SHAPE, 1e3, 1e5, 1e6])
def test_wilson_hilferty_gamma_is_within_the_stated_distance_of_the_exact_one(shape: float) -> None:
    from scipy.special import gammainc, ndtr

    z = np.linspace(-8.0, 8.0, 40_001)
    c = 1.0 / (9.0 * shape)
    x = shape * (1.0 - c + z * np.sqrt(c)) ** 3
    assert np.max(np.abs(gammainc(shape, x) - ndtr(z))) <= 0.0055 / shape


def test_the_normal_table_is_within_its_stated_distance_of_the_normal() -> None:
    from scipy.special import ndtr

    from serving.exploration import _normal_quantiles

    table = _normal_quantiles()
    assert table.size == 1 << 16 and np.all(np.diff(table) > 0)
    # the table's CDF jumps by 1/n at each point; the normal's CDF sits halfway up every jump
    cdf = ndtr(table)
    steps = (np.arange(table.size) + 0.5) / table.size
    assert np.max(np.abs(cdf - steps)) < 1e-12
    draws = table[np.frombuffer(np.random.default_rng(0).bytes(2 * 400_000), np.uint16)]
    assert abs(draws.mean()) < 0.005 and abs(draws.std() - 1.0) < 0.005


def _distribution(scores: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-scores, axis=1)[:, :k]
    return np.stack([np.bincount(order[:, j], minlength=scores.shape[1]) for j in range(k)], axis=1) / len(scores)


def test_tight_posteriors_drawn_by_wilson_hilferty_rank_as_exact_beta_draws_do() -> None:
    rng = np.random.default_rng(5)
    p = np.sort(rng.uniform(0.02, 0.3, 30))[::-1]
    a, b = 5_000 * p + rng.poisson(5, 30) + 1.0, 5_000 * (1 - p) + rng.poisson(80, 30) + 1.0
    assert a.min() >= WH_MIN_SHAPE  # the fast path, with posteriors loose enough that many items move
    draws = 40_000
    fast = _distribution(theta_order_scores(a, b, np.random.default_rng(6), draws), 10)
    exact = _distribution(np.random.default_rng(7).beta(a, b, size=(draws, a.size)), 10)
    assert np.count_nonzero((exact > 0.05) & (exact < 0.95)) >= 20  # the ranking is really random
    se = np.sqrt(np.maximum(exact * (1 - exact), 1e-4) / draws)
    assert np.all(np.abs(fast - exact) <= 5 * np.sqrt(2) * se)


def test_loose_posteriors_are_drawn_exactly() -> None:
    a, b = np.array([3.0, 500.0]), np.array([400.0, 2.0])  # one shape under the threshold: exact θ draws
    theta = theta_order_scores(a, b, np.random.default_rng(0), 1000)
    assert np.all((theta > 0) & (theta < 1))
    assert abs(theta[:, 1].mean() - 500 / 502) < 0.002


# -- closeness to the ranker ----------------------------------------------------------------------


def test_an_empty_store_stays_close_to_the_ranker_at_the_default_n0() -> None:
    requests = _requests(0, 300)
    tau = np.mean([ranker_tau(s) for s in _slates(requests, 1)])
    assert tau >= 0.8
    # …and the criterion has teeth: a weak prior strays far from the ranker
    assert np.mean([ranker_tau(s) for s in _slates(requests, 1, n0=20.0)]) < 0.6


def test_a_large_n0_gives_the_ranker_order() -> None:
    requests = _requests(2, 20)
    taus = [np.mean([ranker_tau(s) for s in _slates(requests, 3, n0=n0)]) for n0 in (20.0, DEFAULT_N0, 1e4)]
    assert taus[0] < taus[1] < taus[2]
    # 1e12: sd ≈ sqrt(p/n0) ≈ 3e-7, below the closest gap of these probabilities (1e7 is not)
    for p, s in zip(requests, _slates(requests, 3, n0=1e12), strict=True):
        np.testing.assert_array_equal(s.order, np.argsort(-p, kind="stable")[:K])
        np.testing.assert_array_equal(s.ranker_rank, np.arange(K))
        assert not s.explored.any()


def test_strong_counts_override_the_ranker() -> None:
    # Counts of 505 impressions at 99 % outweigh a ranker worth n0 = 350 impressions: the
    # posterior mean of a p = 0.01 item is (350·0.01 + 500)/855 ≈ 0.59, above this ranker's top.
    p = calibrated_probabilities(np.random.default_rng(0))
    assert p.max() < 0.56
    low = int(np.argmin(p))
    alpha, beta = np.ones(100), np.ones(100)
    alpha[low], beta[low] = 500.0, 5.0
    rng = np.random.default_rng(4)
    slates = [thompson_slate(p, alpha, beta, K, rng, n_sim=1) for _ in range(300)]
    on_top = np.mean([s.order[0] == low for s in slates])
    assert on_top > 0.9
    assert all(s.explored[0] and s.ranker_rank[0] == 99 for s in slates if s.order[0] == low)
    # without the counts it never gets near the top
    one = np.ones(100)
    assert all(low not in thompson_slate(p, one, one, K, rng, n_sim=1).order for _ in range(100))


# -- flags -----------------------------------------------------------------------------------------


def test_explored_flags_follow_the_definition() -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        p = np.round(rng.beta(1, 8, 30), 2)  # rounded: ties, broken by index
        alpha, beta = rng.uniform(1, 20, 30), rng.uniform(1, 200, 30)
        s = thompson_slate(p, alpha, beta, 10, rng, n0=30.0, epsilon=0.1, n_sim=50)
        for pos, item in enumerate(s.order):
            rank = int(np.sum(p > p[item]) + np.sum((p == p[item]) & (np.arange(30) < item)))
            assert s.ranker_rank[pos] == rank
            assert s.explored[pos] == (pos < rank)
        assert len(set(s.order.tolist())) == 10
        assert np.all((s.propensity > 0) & (s.propensity <= 1))


def test_disabled_exploration_returns_the_ranker_order_with_propensity_one() -> None:
    p = np.array([0.2, 0.5, 0.2, 0.9, 0.5, 0.1])
    alpha = np.array([1.0, 1.0, 900.0, 1.0, 1.0, 1.0])  # counts that would win if exploring
    s = thompson_slate(p, alpha, np.ones(6), 4, np.random.default_rng(0), epsilon=0.5, explore=False)
    assert s.order.tolist() == [3, 1, 4, 0]  # ties by index
    assert s.ranker_rank.tolist() == [0, 1, 2, 3]
    assert not s.explored.any()
    np.testing.assert_array_equal(s.propensity, np.ones(4))
    assert exploration_share([s]) == 0.0


# -- propensities ----------------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [0.0, 0.2])
def test_logged_propensities_match_empirical_frequencies(epsilon: float) -> None:
    n_items, k, n = 12, 4, 10_000
    setup = np.random.default_rng(6)
    p = setup.beta(2, 6, n_items)
    alpha, beta = setup.uniform(1, 6, n_items), setup.uniform(1, 30, n_items)
    rng = np.random.default_rng(7)
    counts = np.zeros((n_items, k))
    for _ in range(n):  # what serving shows, one request at a time
        order = thompson_slate(p, alpha, beta, k, rng, n0=20.0, epsilon=epsilon, n_sim=1).order
        counts[order, np.arange(k)] += 1
    empirical = counts / n
    checked = 0
    for _ in range(6):
        s = thompson_slate(p, alpha, beta, k, rng, n0=20.0, epsilon=epsilon, n_sim=200_000)
        freq = empirical[s.order, np.arange(k)]
        sigma = np.sqrt(s.propensity * (1 - s.propensity) / n)
        assert np.all(np.abs(s.propensity - freq) <= 3 * sigma), (s.propensity, freq)
        checked += k
    assert checked == 24


def test_the_epsilon_rule_replaces_slots_with_tail_items() -> None:
    # θ1 ~ Beta(2, 1) beats θ0 ~ Beta(1, 1) with probability 2/3; a replaced slot shows the loser
    n_sim = 200_000
    for eps in (0.0, 0.3, 1.0):
        d = action_distribution([1.0, 2.0], [1.0, 1.0], 1, n_sim=n_sim, seed=8, epsilon=eps)
        expected = (1 - eps) * 2 / 3 + eps / 3
        assert abs(d[1, 0] - expected) < 4 * np.sqrt(expected * (1 - expected) / n_sim)
    # items 0, 1 always hold the θ top 2, items 2, 3 the tail: each slot is replaced half the
    # time, by a tail item drawn uniformly among those not shown yet → every cell 1/4
    strong, weak = (500.0, 1.0), (1.0, 500.0)
    alpha, beta = zip(strong, strong, weak, weak, strict=True)
    d = action_distribution(alpha, beta, 2, n_sim=n_sim, seed=9, epsilon=0.5)
    assert np.max(np.abs(d - 0.25)) < 4 * np.sqrt(0.25 * 0.75 / n_sim)
    # ε = 1: the slate is the tail, never the θ top
    d = action_distribution(alpha, beta, 2, n_sim=2_000, seed=9, epsilon=1.0)
    np.testing.assert_array_equal(d[:2], 0.0)


def test_propensities_are_floored_above_zero() -> None:
    p = np.full(50, 0.01)
    alpha, beta = np.ones(50), np.ones(50)
    alpha[7], beta[7] = 1.0, 5_000.0  # item 7 almost never wins …
    rng = np.random.default_rng(10)
    shown = [s for s in (thompson_slate(p, alpha, beta, 3, rng, n0=0.0, epsilon=1.0, n_sim=20) for _ in range(400))
             if 7 in s.order]
    assert shown  # … but a tail slot shows it now and then, at P ≈ 1/47 per slot: 20 draws often miss it
    floor = min(s.propensity.min() for s in shown)
    assert floor == 1 / 21  # (0 + 1)/(n_sim + 1): the shown slate counts as a draw


# -- the exploration share -------------------------------------------------------------------------


def test_the_exploration_share_falls_with_n0_and_rises_with_epsilon() -> None:
    requests = _requests(11, 150)
    by_n0 = [exploration_share(_slates(requests, 12, n0=n0)) for n0 in (50.0, DEFAULT_N0, 5_000.0)]
    by_eps = [exploration_share(_slates(requests, 12, epsilon=e)) for e in (0.0, 0.1, 0.3)]
    assert by_n0[0] > by_n0[1] > by_n0[2]
    assert by_eps[0] < by_eps[1] < by_eps[2]


# -- the closed loop -------------------------------------------------------------------------------


def test_closed_loop_thompson_learns_and_beats_epsilon_greedy_and_uniform() -> None:
    results = run_all(LoopConfig(rounds=3_000), ("thompson", "epsilon-greedy", "uniform"))
    thompson = results["thompson"]
    early, *_, late = thompson.click_rate(3)
    assert late > early
    thirds = [x.mean() for x in np.array_split(thompson.expected, 3)]
    assert thirds[0] < thirds[1] < thirds[2]
    regret = {name: r.cumulative_regret()[-1] for name, r in results.items()}
    assert regret["thompson"] < regret["epsilon-greedy"]
    assert regret["thompson"] < regret["uniform"]


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"p": [0.5, 0.5]}, "p"),
        ({"p": [0.5, 1.5, 0.1]}, "p"),
        ({"alpha": [1.0, -500.0, 1.0]}, "alpha"),
        ({"k": 4}, "k"),
        ({"k": 0}, "k"),
        ({"epsilon": 1.5}, "epsilon"),
        ({"n0": -1.0}, "n0"),
        ({"n_sim": 0}, "n_sim"),
        ({"explore": "yes"}, "explore"),
    ],
)
def test_bad_inputs_name_the_field(change: dict, field: str) -> None:
    args = {"p": [0.5, 0.2, 0.1], "alpha": [1.0, 1.0, 1.0], "beta": [1.0, 1.0, 1.0], "k": 2,
            "rng": np.random.default_rng(0)}
    with pytest.raises(ValueError, match=rf"^{field}:"):
        thompson_slate(**{**args, **change})
    with pytest.raises(ValueError, match="^slates:"):
        exploration_share([])
