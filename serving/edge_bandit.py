"""The edge's exploration: the origin's Thompson slate over a cached pool, calibrated to a target share.

Same mechanism and same definition of *explored* as the origin (`serving.personalize.Personalizer
.explore`): per item, the segment's (clicks, non_clicks) borrow from the global row "*" through
`transforms.summaries.bandit.borrowed_posterior` (the bare Beta(1 + clicks, 1 + non_clicks) when
the item has no global row: borrowing would add 20 pseudo-trials at 0.5), then
`serving.exploration.thompson_slate` draws the slate, its propensities and which items were
explored (shown above the position the ranker's probability alone gives them). At the edge the
counts are the origin's synced snapshot plus this edge's local counts since, so a local click
moves an item before the next sync; `p` is the edge ranker's probability.

The issue asks for a configured exploration share (10–15 %), not a configured n0: the share n0
gives depends on how the pools' probabilities spread. `calibrate` measures it over sample pools
(the ones the edge holds, or a stated distribution) and searches n0 — larger n0 keeps θ closer to
p, so fewer items jump up — and only when even n0 = 0 (θ ignores p) explores too little, ε (the
share of slots drawn uniformly from the tail) at n0 = 0.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from serving.exploration import Slate, posterior, sample_slates, thompson_slate

log = logging.getLogger(__name__)

DEFAULT_TARGET_SHARE = 0.12  # the design's 10–15 %
# What `calibrate(0.12, …, k=20)` finds on the stated distribution the origin's n0 was chosen on
# (`pipelines.bandit_sim.calibrated_probabilities`: logit p ~ N(−6, 2) over 500, the top 100 kept;
# 1,000 pools, 100,000 slates): 23,500 (10 %: 36,000; 15 %: 13,000; the origin's n0 = 350 gives
# 39 %). A starting point until the edge calibrates on the pools it actually holds.
DEFAULT_N0 = 23_500.0


@dataclass(frozen=True)
class EdgeExploration:
    """The edge policy's knobs: n0 (pseudo-trials the ranker's probability is worth) and ε."""

    n0: float
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.n0, int | float | np.number) and math.isfinite(self.n0) and self.n0 >= 0):
            raise ValueError(f"n0: must be a finite number ≥ 0, got {self.n0!r}")
        if not (isinstance(self.epsilon, int | float | np.number) and 0.0 <= self.epsilon <= 1.0):
            raise ValueError(f"epsilon: expected a share of slots in [0, 1], got {self.epsilon!r}")


DEFAULT_EXPLORATION = EdgeExploration(DEFAULT_N0)


def edge_slate(p: np.ndarray, clicks: np.ndarray, non_clicks: np.ndarray, global_clicks: ArrayLike | None,
               global_non_clicks: ArrayLike | None, k: int, rng: np.random.Generator, exploration: EdgeExploration,
               explore: bool = True, n_sim: int = 250) -> Slate:
    """k of the cached pool by Thompson sampling, with propensities and `explored`, as the origin does.

    `p`: the edge ranker's probability per item; counts as in `posterior`. `explore=False` (the
    request's `disable_exploration`) returns the top k by p with propensity 1.
    """
    alpha, beta = posterior(clicks, non_clicks, global_clicks, global_non_clicks)
    prob = np.asarray(p, dtype=np.float64)
    if prob.shape != alpha.shape:
        raise ValueError(f"p: expected {alpha.size} values (one per item, as clicks), got shape {prob.shape}")
    return thompson_slate(np.clip(prob, 0.0, 1.0), alpha, beta, k, rng, n0=exploration.n0,
                          epsilon=exploration.epsilon, explore=explore, n_sim=n_sim)


def _explored_share(pools: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], k: int, n0: float,
                    epsilon: float, draws: int, seed: int) -> float:
    """The share of shown items explored over `draws` slates per pool (common random numbers by seed).

    Explored exactly as `thompson_slate` defines it: position < the item's 0-based rank in the
    stable order by p. The slates come from the same sampler (`sample_slates`)."""
    rng = np.random.default_rng(seed)
    explored = shown = 0
    positions = np.arange(k)
    for p, alpha, beta, rank_of in pools:
        slates = sample_slates(alpha, beta, k, rng, draws, prior_mean=p, n0=n0, epsilon=epsilon)
        explored += int(np.count_nonzero(positions < rank_of[slates]))
        shown += slates.size
    return explored / shown


def calibrate(target_share: float, p_samples: Sequence[np.ndarray], k: int, seed: int = 0, *,
              posteriors: Sequence[tuple[np.ndarray, np.ndarray]] | None = None, slates: int = 20_000,
              n0_max: float = 1e6, tolerance: float = 0.001, max_iter: int = 40) -> EdgeExploration:
    """The n0 (ε = 0) whose measured exploration share over the pools is `target_share`; when even
    n0 = 0 explores less than that, n0 = 0 and the ε that reaches it.

    `p_samples`: pools of ranker probabilities as the edge will hold them (k shown of each).
    `posteriors`: (α, β) per pool (`posterior`'s output); default the empty store's Beta(1, 1).
    `slates`: slates drawn per evaluation, split over the pools. Bisection (on log(1 + n0), or on
    ε) with the same random numbers at every step, until the share is within `tolerance`.
    Raises ValueError when no n0 ≤ `n0_max` and no ε reaches the target.
    """
    if not (isinstance(target_share, int | float) and 0.0 < target_share < 1.0):
        raise ValueError(f"target_share: expected a share in (0, 1), got {target_share!r}")
    if not p_samples:
        raise ValueError("p_samples: no pools to calibrate on")
    if posteriors is not None and len(posteriors) != len(p_samples):
        raise ValueError(f"posteriors: expected {len(p_samples)} (α, β) pairs (one per pool), got {len(posteriors)}")
    if not (isinstance(slates, int) and slates >= 1):
        raise ValueError(f"slates: expected a whole number ≥ 1, got {slates!r}")
    pools = []
    for i, sample in enumerate(p_samples):
        p = np.asarray(sample, dtype=np.float64)
        if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
            raise ValueError(f"p_samples[{i}]: expected a 1-D array of probabilities in [0, 1]")
        if not (isinstance(k, int | np.integer) and 1 <= k <= p.size):
            raise ValueError(f"k: expected a whole number in 1..{p.size} (the size of p_samples[{i}]), got {k!r}")
        alpha, beta = (np.ones(p.size), np.ones(p.size)) if posteriors is None else map(np.asarray, posteriors[i])
        rank_of = np.empty(p.size, dtype=np.intp)
        rank_of[np.argsort(-p, kind="stable")] = np.arange(p.size)
        pools.append((p, alpha, beta, rank_of))
    draws = max(1, -(-slates // len(pools)))

    def share(n0: float, epsilon: float = 0.0) -> float:
        return _explored_share(pools, int(k), n0, epsilon, draws, seed)

    most = share(0.0)  # θ ignores p: the most n0 alone can explore
    if target_share > most + tolerance:
        if share(0.0, 1.0) < target_share - tolerance:
            raise ValueError(f"target_share: {target_share:g} is out of reach (ε = 1 explores {share(0.0, 1.0):.3f})")
        eps = _bisect(lambda e: share(0.0, e), 0.0, 1.0, target_share, tolerance, max_iter, increasing=True)
        return EdgeExploration(0.0, eps)
    if share(n0_max) > target_share + tolerance:
        raise ValueError(f"target_share: {target_share:g} is out of reach (n0 = {n0_max:g} still explores "
                         f"{share(n0_max):.3f}; ties in p?)")
    x = _bisect(lambda v: share(math.expm1(v)), 0.0, math.log1p(n0_max), target_share, tolerance, max_iter,
                increasing=False)
    return EdgeExploration(math.expm1(x))


def _bisect(f, lo: float, hi: float, target: float, tolerance: float, max_iter: int, increasing: bool) -> float:
    """The x in [lo, hi] with f(x) ≈ target for a monotone f; the closest one seen when it stops."""
    best, best_err = lo, math.inf
    for _ in range(max_iter):
        mid = (lo + hi) / 2
        value = f(mid)
        err = abs(value - target)
        if err < best_err:
            best, best_err = mid, err
        if err <= tolerance:
            break
        if (value < target) == increasing:
            lo = mid
        else:
            hi = mid
    return best


class ShareCalibrator:
    """The pools a Thompson policy drew from lately, and the n0 that gives a target share on them.

    Origin and edge alike: the share a given n0 gives depends on how the serving ranker's
    probabilities spread, which no stated distribution knows (the suite's trained models need n0 of
    10⁶–10⁷ where the stated one needs 23,500), so each tier measures the pools it serves. Pools are
    kept as counts; their posteriors are derived only when a calibration runs, off the request path.
    """

    def __init__(self, share: float, min_pools: int = 64, every_s: float = 600.0, keep: int = 256) -> None:
        self.share, self.min_pools, self.every_s = share, min_pools, every_s
        self.pools: deque = deque(maxlen=keep)  # (p, k, clicks, non_clicks, global_clicks, global_non_clicks)
        self.last: tuple[str, float] | None = None  # (model version, monotonic time) of the last calibration

    def observe(self, p: np.ndarray, k: int, clicks: ArrayLike, non_clicks: ArrayLike,
                global_clicks: ArrayLike | None, global_non_clicks: ArrayLike | None) -> None:
        self.pools.append((p, k, clicks, non_clicks, global_clicks, global_non_clicks))

    def due(self, version: str | None) -> bool:
        """Once `min_pools` were seen, then again for each new model version and every `every_s`."""
        if version is None or len(self.pools) < self.min_pools:
            return False
        if self.last is None or self.last[0] != version:
            return True
        return time.monotonic() - self.last[1] >= self.every_s

    def run(self, version: str, apply: Callable[[EdgeExploration], None]) -> EdgeExploration | None:
        """The policy for `share` on the kept pools (k: their median slate size), handed to `apply`
        before `last` records the run; None when out of reach (logged, not retried before `every_s`).
        Blocking — a second or so of draws: servers run it in a thread."""
        pools = list(self.pools)
        if not pools:
            return None
        k = int(np.median([pool[1] for pool in pools]))
        pools = [pool for pool in pools if pool[0].size >= k]
        found = None
        try:
            found = calibrate(self.share, [pool[0] for pool in pools], k,
                              posteriors=[posterior(*pool[2:]) for pool in pools], slates=4_000, n0_max=1e10)
            apply(found)
        except ValueError as exc:
            log.warning("exploration: no n0 for a %.0f %% share on %s's pools (%s)", 100 * self.share, version, exc)
        self.last = (version, time.monotonic())
        return found
