"""The edge bandit: the origin's posterior and Thompson slate, calibrated to a configured exploration share.

Pools: (1) the stated distribution the origin's n0 was chosen on — `pipelines.bandit_sim
.calibrated_probabilities`: logit p ~ N(−6, 2) over 500 retrieved, the top 100 kept (what an edge
caches: the origin's top ~100); (2) the suite's trained model: the origin ranker's probabilities
for every catalogue item per synthetic user, re-scored by the edge ranker with the user's last
10 interactions (what the edge bandit reads). Calibration and measurement use disjoint pools
and independent random numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.bandit_sim import calibrated_probabilities
from serving.edge_bandit import (
    DEFAULT_EXPLORATION,
    DEFAULT_TARGET_SHARE,
    EdgeExploration,
    calibrate,
    edge_slate,
    posterior,
)
from serving.edge_scorer import EdgeScorer
from serving.exploration import exploration_share, thompson_slate
from tests.test_edge_scorer import fixture_pools
from transforms.summaries.bandit import borrowed_posterior

K = 20


def _stated_pools(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [calibrated_probabilities(rng) for _ in range(n)]


def _measured_share(pools: list[np.ndarray], exploration: EdgeExploration, requests: int, seed: int) -> float:
    """The share over `requests` edge slates, an empty store (α = β = 1), pools taken in turn."""
    rng = np.random.default_rng(seed)
    zeros = np.zeros(pools[0].size)
    return exploration_share(edge_slate(pools[i % len(pools)], zeros, zeros, None, None, K, rng, exploration,
                                        n_sim=10) for i in range(requests))


@pytest.mark.parametrize("target", [0.10, 0.12, 0.15])
def test_measured_share_matches_the_configured_one_on_the_stated_distribution(target) -> None:
    exploration = calibrate(target, _stated_pools(200, seed=1), K)
    assert exploration.epsilon == 0.0  # n0 alone reaches 10–15 % on these pools
    share = _measured_share(_stated_pools(500, seed=2), exploration, requests=1500, seed=3)
    assert abs(share - target) <= 0.02, (exploration, share)


def test_the_default_policy_explores_the_default_share_on_the_stated_distribution() -> None:
    share = _measured_share(_stated_pools(500, seed=14), DEFAULT_EXPLORATION, requests=1500, seed=15)
    assert abs(share - DEFAULT_TARGET_SHARE) <= 0.02, share


def test_measured_share_matches_the_configured_one_on_the_trained_models_pools(trained_registry) -> None:
    pools = fixture_pools(trained_registry.root, str(trained_registry.data_dir))
    scorer = EdgeScorer(trained_registry.root)
    p = [scorer.score(q.recent, q.item_ids, q.origin).astype(np.float64) for q in pools]
    exploration = calibrate(0.12, p[:100], K, n0_max=1e10)
    share = _measured_share(p[100:], exploration, requests=1500, seed=4)
    assert abs(share - 0.12) <= 0.02, (exploration, share)


def test_epsilon_is_used_only_when_n0_alone_cannot_reach_the_share() -> None:
    # a store that has learned what the ranker knows (posteriors agree with p, 10⁵ trials each):
    # even n0 = 0 barely explores, so the share must come from ε at n0 = 0
    train, test = _stated_pools(100, seed=5), _stated_pools(300, seed=6)

    def learned(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return 1.0 + 1e5 * p, 1.0 + 1e5 * (1.0 - p)

    exploration = calibrate(0.12, train, K, posteriors=[learned(p) for p in train])
    assert exploration.n0 == 0.0 and 0.0 < exploration.epsilon < 1.0
    rng = np.random.default_rng(7)
    slates = []
    for i in range(1500):
        p = test[i % len(test)]
        a, b = learned(p)  # clicks and non-clicks whose bare posterior is (a, b)
        slates.append(edge_slate(p, a - 1.0, b - 1.0, None, None, K, rng, exploration, n_sim=10))
    assert abs(exploration_share(slates) - 0.12) <= 0.02


def test_unreachable_targets_are_refused_by_name() -> None:
    pools = _stated_pools(20, seed=8)
    with pytest.raises(ValueError, match="target_share"):
        calibrate(0.99, pools, K, slates=2000)
    with pytest.raises(ValueError, match="target_share"):
        calibrate(0.0, pools, K)
    with pytest.raises(ValueError, match="k"):
        calibrate(0.12, pools, 101)


def test_posterior_is_the_origins_borrowing_rule() -> None:
    clicks, non_clicks = np.array([0.0, 3.0, 7.0]), np.array([0.0, 40.0, 1.0])
    gc, gn = np.array([np.nan, 30.0, 0.0]), np.array([np.nan, 900.0, 0.0])
    alpha, beta = posterior(clicks, non_clicks, gc, gn)
    assert (alpha[0], beta[0]) == (1.0, 1.0)  # no global row: the bare prior, not 20 trials at 0.5
    for i in (1, 2):  # a global row, even an empty one, is borrowed from (as Personalizer.explore does)
        assert (alpha[i], beta[i]) == pytest.approx(borrowed_posterior((clicks[i], non_clicks[i]), (gc[i], gn[i])))
    np.testing.assert_array_equal(np.stack(posterior(clicks, non_clicks)), np.stack([1 + clicks, 1 + non_clicks]))
    with pytest.raises(ValueError, match="non_clicks"):
        posterior(clicks, non_clicks[:2])
    with pytest.raises(ValueError, match="global_clicks"):
        posterior(clicks, non_clicks, gc, None)
    with pytest.raises(ValueError, match="clicks"):
        posterior(-clicks - 1, non_clicks)


def test_the_slate_is_the_origins_thompson_slate() -> None:
    p = _stated_pools(1, seed=9)[0]
    c, n = np.arange(100.0), np.arange(100.0)[::-1].copy()
    gc, gn = np.full(100, 50.0), np.full(100, 950.0)
    exploration = EdgeExploration(500.0, 0.05)
    edge = edge_slate(p, c, n, gc, gn, K, np.random.default_rng(0), exploration)
    a, b = posterior(c, n, gc, gn)
    origin = thompson_slate(p, a, b, K, np.random.default_rng(0), n0=500.0, epsilon=0.05, n_sim=250)
    for field in ("order", "ranker_rank", "explored", "propensity"):
        np.testing.assert_array_equal(getattr(edge, field), getattr(origin, field))
    off = edge_slate(p, c, n, gc, gn, K, np.random.default_rng(0), exploration, explore=False)
    assert list(off.order) == list(np.argsort(-p, kind="stable")[:K]) and not off.explored.any()


def test_local_clicks_move_an_item_up_and_non_clicks_down() -> None:
    pools = _stated_pools(200, seed=10)
    exploration = calibrate(0.12, pools, K)  # the edge's calibrated policy, not a convenient n0
    p = pools[0]
    item = int(np.argsort(-p, kind="stable")[7])  # 8th by the ranker
    zeros = np.zeros(p.size)

    def positions(clicks: float, non_clicks: float, seed: int) -> np.ndarray:
        c, n = zeros.copy(), zeros.copy()
        c[item], n[item] = clicks, non_clicks
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(600):
            order = list(edge_slate(p, c, n, None, None, K, rng, exploration, n_sim=10).order)
            out.append(order.index(item) if item in order else K)
        return np.array(out)

    # clicks since the last sync: the posterior mean rises by about clicks / n0 (n0 ≈ 2·10⁴ here)
    base, clicked, skipped = positions(0, 0, 11), positions(400, 0, 12), positions(0, 4000, 13)
    assert clicked.mean() < base.mean() - 1.0, (clicked.mean(), base.mean())
    assert np.mean(clicked < 7) > np.mean(base < 7) + 0.3  # shown above its ranker position more often
    assert skipped.mean() > base.mean() + 1.0, (skipped.mean(), base.mean())
