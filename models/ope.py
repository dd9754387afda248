"""Off-policy evaluation: a target policy's value from logged bandit feedback (plain numpy).

Each logged round t is one impression: the logging policy π_b put item a_t at position k_t with
the logged propensity p_t = π_b(a_t at k_t | x_t), and the reward r_t (a click) followed. The
target policy is given by its action distribution π_e(a at k | x) — shape (n_items, n_positions)
when it ignores the context, or (n_rounds, n_items, n_positions) per round — and the value is
the expected reward per impression, positions weighted as in the logs. This is the slate setting
of the Open Bandit Dataset, with obp's definitions (obp/ope/estimators.py): the importance weight
of a round is w_t = π_e(a_t at k_t | x_t) / p_t, and

    IPS   = mean(w·r)                                       unbiased when p_t > 0 wherever π_e > 0
    SNIPS = Σ w·r / Σ w                                     biased, consistent; bounded by max r
    DR    = mean(q̂(x_t, π_e, k_t) + w·(r − q̂(x_t, a_t, k_t)))  unbiased if either p or q̂ is right

with q̂(x, π_e, k) = Σ_a π_e(a at k | x)·q̂(x, a, k). Confidence intervals are percentile
bootstraps over rounds (seeded); one set of resamples serves every estimator. The bootstrap
treats q̂ as fixed: cross-fitting it (`cross_fit_reward_model`) keeps each round's own reward out
of its q̂, so the DR terms stay independent across folds' rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

ESTIMATORS = ("ips", "snips", "dr")
DEFAULT_SMOOTHING = 50.0  # pseudo-impressions pulling a sparse (item, position) cell to its position's CTR
_SUM_TOLERANCE = 1e-6  # how far a position's π_e may sum from 1
_BOOTSTRAP_BUDGET = 2_000_000  # resampled rows per chunk: bounds memory, not results


@dataclass(frozen=True)
class Estimate:
    """A policy-value estimate with its percentile-bootstrap interval at `level`."""

    estimator: str
    value: float
    lower: float
    upper: float
    level: float
    n_bootstrap: int

    def covers(self, truth: float) -> bool:
        return self.lower <= truth <= self.upper

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


@dataclass(frozen=True)
class Logs:
    """Validated logged feedback: float reward and propensity, int item and position per round."""

    reward: np.ndarray
    action: np.ndarray
    position: np.ndarray
    pscore: np.ndarray

    @property
    def n(self) -> int:
        return int(self.reward.shape[0])


def check_logs(reward: ArrayLike, action: ArrayLike, position: ArrayLike, pscore: ArrayLike) -> Logs:
    """The four per-round arrays, checked: 1-D, one length, finite, propensities in (0, 1]."""
    r = _floats(reward, "reward")
    a = _ints(action, "action")
    k = _ints(position, "position")
    p = _floats(pscore, "pscore")
    if r.shape[0] == 0:
        raise ValueError("reward: no rounds logged")
    for name, arr in (("action", a), ("position", k), ("pscore", p)):
        if arr.shape != r.shape:
            raise ValueError(f"{name}: expected {r.shape[0]} values (one per round, like reward), got {arr.shape[0]}")
    if np.any(a < 0):
        raise ValueError(f"action: item indices must be ≥ 0, got {int(a.min())}")
    if np.any(k < 0):
        raise ValueError(f"position: positions are 0-based, got {int(k.min())}")
    bad = np.flatnonzero(~((p > 0) & (p <= 1)))
    if bad.size:
        raise ValueError(f"pscore: propensities must be in (0, 1]; round {int(bad[0])} has {p[bad[0]]:g}")
    return Logs(r, a, k, p)


def check_action_dist(action_dist: ArrayLike, logs: Logs, name: str = "action_dist") -> np.ndarray:
    """π_e as (n_items, n_positions) or (n_rounds, n_items, n_positions), each position summing to 1."""
    d = _array(action_dist, name)
    if d.ndim == 3 and d.shape[0] != logs.n:
        raise ValueError(f"{name}: per-round distributions need {logs.n} rows (one per round), got {d.shape[0]}")
    if d.ndim not in (2, 3):
        raise ValueError(f"{name}: expected shape (n_items, n_positions) or (n_rounds, n_items, n_positions), "
                         f"got {d.shape}")
    _covers_logs(d, logs, name)
    if np.any((d < 0) | (d > 1)):
        raise ValueError(f"{name}: probabilities must lie in [0, 1]")
    worst = float(np.max(np.abs(d.sum(axis=-2) - 1.0)))
    if worst > _SUM_TOLERANCE:
        raise ValueError(f"{name}: the probabilities of each position must sum to 1 over items (off by {worst:.3g})")
    return d


def check_reward_model(q_hat: ArrayLike, logs: Logs, name: str = "q_hat") -> np.ndarray:
    """q̂ as (n_items, n_positions) or (n_rounds, n_items, n_positions), finite."""
    q = _array(q_hat, name)
    if q.ndim == 3 and q.shape[0] != logs.n:
        raise ValueError(f"{name}: per-round rewards need {logs.n} rows (one per round), got {q.shape[0]}")
    if q.ndim not in (2, 3):
        raise ValueError(f"{name}: expected shape (n_items, n_positions) or (n_rounds, n_items, n_positions), "
                         f"got {q.shape}")
    _covers_logs(q, logs, name)
    return q


# -- the estimators -----------------------------------------------------------------------------


def importance_weights(action: ArrayLike, position: ArrayLike, pscore: ArrayLike, action_dist: ArrayLike) -> np.ndarray:
    """w_t = π_e(a_t at k_t | x_t) / p_t."""
    logs = check_logs(np.zeros(np.shape(action)), action, position, pscore)
    return _weights(logs, check_action_dist(action_dist, logs))


def ips(reward: ArrayLike, action: ArrayLike, position: ArrayLike, pscore: ArrayLike, action_dist: ArrayLike) -> float:
    """Inverse propensity scoring: mean(w·r)."""
    logs = check_logs(reward, action, position, pscore)
    return float(np.mean(_weights(logs, check_action_dist(action_dist, logs)) * logs.reward))


def snips(reward: ArrayLike, action: ArrayLike, position: ArrayLike, pscore: ArrayLike,
          action_dist: ArrayLike) -> float:
    """Self-normalised IPS: Σ w·r / Σ w (nan when π_e gives no weight to any logged impression)."""
    logs = check_logs(reward, action, position, pscore)
    w = _weights(logs, check_action_dist(action_dist, logs))
    total = float(w.sum())
    return float(np.dot(w, logs.reward) / total) if total > 0 else float("nan")


def dr(reward: ArrayLike, action: ArrayLike, position: ArrayLike, pscore: ArrayLike, action_dist: ArrayLike,
       q_hat: ArrayLike) -> float:
    """Doubly robust: mean(q̂(x, π_e, k) + w·(r − q̂(x, a, k)))."""
    logs = check_logs(reward, action, position, pscore)
    d = check_action_dist(action_dist, logs)
    return float(np.mean(_dr_terms(logs, d, check_reward_model(q_hat, logs), _weights(logs, d))))


def evaluate(
    reward: ArrayLike,
    action: ArrayLike,
    position: ArrayLike,
    pscore: ArrayLike,
    action_dist: ArrayLike,
    q_hat: ArrayLike | None = None,
    *,
    estimators: Sequence[str] = ESTIMATORS,
    n_bootstrap: int = 1_000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Each estimator's value and percentile-bootstrap interval, from one set of seeded resamples.

    DR without `q_hat` uses `cross_fit_reward_model` (2 folds, seeded by `seed`; one round: no folds).
    """
    names = _estimator_names(estimators)
    n_bootstrap = _check_bootstrap(n_bootstrap, level)
    logs = check_logs(reward, action, position, pscore)
    d = check_action_dist(action_dist, logs)
    w = _weights(logs, d)
    columns = {"wr": w * logs.reward, "w": w}
    if "dr" in names:
        if q_hat is None:
            n_items, n_positions = d.shape[-2:]
            if logs.n >= 2:
                q = cross_fit_reward_model(logs.action, logs.position, logs.reward, n_items, n_positions, seed=seed)
            else:  # a single round cannot be split into folds
                q = fit_reward_model(logs.action, logs.position, logs.reward, n_items, n_positions)
        else:
            q = check_reward_model(q_hat, logs)
        columns["dr"] = _dr_terms(logs, d, q, w)
    keys = list(columns)
    x = np.column_stack([columns[c] for c in keys])
    full = x.sum(axis=0)
    boot = _bootstrap_sums(x, n_bootstrap, seed)
    col = {c: i for i, c in enumerate(keys)}
    out: dict[str, Estimate] = {}
    for name in names:
        value = _statistic(name, full[None, :], col, logs.n)[0]
        lo, hi = percentile_interval(_statistic(name, boot, col, logs.n), level)
        out[name] = Estimate(name, float(value), lo, hi, level, n_bootstrap)
    return out


def bootstrap_mean(samples: ArrayLike, n_bootstrap: int = 1_000, level: float = 0.95, seed: int = 0) -> Estimate:
    """The mean of `samples` with its percentile-bootstrap interval (e.g. an on-policy click rate)."""
    x = _floats(samples, "samples")
    if x.size == 0:
        raise ValueError("samples: empty")
    n_bootstrap = _check_bootstrap(n_bootstrap, level)
    lo, hi = percentile_interval(_bootstrap_sums(x[:, None], n_bootstrap, seed)[:, 0] / x.size, level)
    return Estimate("mean", float(x.mean()), lo, hi, level, n_bootstrap)


def percentile_interval(stats: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` interval of bootstrap statistics (undefined resamples, nan, are left out)."""
    finite = stats[np.isfinite(stats)]
    if finite.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(finite, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def effective_sample_size(weights: ArrayLike) -> float:
    """(Σw)² / Σw²: how many on-policy rounds the weighted logs are worth (Kish)."""
    w = _floats(weights, "weights")
    sq = float(np.dot(w, w))
    return float(w.sum() ** 2 / sq) if sq > 0 else 0.0


def uniform_action_dist(n_items: int, n_positions: int) -> np.ndarray:
    """The uniformly random slate: every item equally likely at every position."""
    if n_items < n_positions or n_positions < 1:
        raise ValueError(f"n_items: need at least n_positions = {n_positions} items, got {n_items}")
    return np.full((n_items, n_positions), 1.0 / n_items)


# -- the reward model for DR --------------------------------------------------------------------


def fit_reward_model(
    action: ArrayLike,
    position: ArrayLike,
    reward: ArrayLike,
    n_items: int,
    n_positions: int,
    smoothing: float = DEFAULT_SMOOTHING,
) -> np.ndarray:
    """q̂(a, k): each (item, position)'s empirical reward rate, shrunk to its position's rate.

    q̂ = (Σ r + m·ρ_k) / (shown + m), ρ_k the position's mean reward in these logs (the overall
    mean where a position was never logged): a cell seen a few times stays near ρ_k instead of 0
    or 1. Ignores the context; DR stays unbiased with a wrong q̂ (only its variance suffers).
    """
    logs = check_logs(reward, action, position, np.ones(np.shape(reward)))
    _check_space(logs, n_items, n_positions)
    if not (np.isfinite(smoothing) and smoothing >= 0):
        raise ValueError(f"smoothing: expected a finite number ≥ 0, got {smoothing!r}")
    cell = logs.position * n_items + logs.action
    shown = np.bincount(cell, minlength=n_items * n_positions).reshape(n_positions, n_items).T
    total = np.bincount(cell, weights=logs.reward, minlength=n_items * n_positions).reshape(n_positions, n_items).T
    per_position = shown.sum(axis=0)
    overall = float(logs.reward.mean())
    rho = np.where(per_position > 0, total.sum(axis=0) / np.maximum(per_position, 1), overall)
    denom = shown + smoothing
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(denom > 0, (total + smoothing * rho) / denom, rho)
    return q


def cross_fit_reward_model(
    action: ArrayLike,
    position: ArrayLike,
    reward: ArrayLike,
    n_items: int,
    n_positions: int,
    folds: int = 2,
    smoothing: float = DEFAULT_SMOOTHING,
    seed: int = 0,
) -> np.ndarray:
    """Per-round q̂, shape (n_rounds, n_items, n_positions): each round's from the other folds.

    Rounds are split into `folds` seeded random folds; a round never informs its own q̂, so the
    DR correction r − q̂ is not shrunk toward zero by overfitting.
    """
    logs = check_logs(reward, action, position, np.ones(np.shape(reward)))
    _check_space(logs, n_items, n_positions)
    if not (isinstance(folds, int | np.integer) and 2 <= folds <= logs.n):
        raise ValueError(f"folds: expected a whole number in 2..{logs.n} (the number of rounds), got {folds!r}")
    fold = np.random.default_rng(seed).permutation(logs.n) % folds
    models = np.stack([
        fit_reward_model(logs.action[fold != f], logs.position[fold != f], logs.reward[fold != f],
                         n_items, n_positions, smoothing)
        for f in range(folds)
    ])
    return models[fold]


# -- internals ----------------------------------------------------------------------------------


def _weights(logs: Logs, d: np.ndarray) -> np.ndarray:
    return _at_logged(d, logs) / logs.pscore


def _at_logged(m: np.ndarray, logs: Logs) -> np.ndarray:
    """m[(x_t,) a_t, k_t] per round."""
    if m.ndim == 2:
        return m[logs.action, logs.position]
    return m[np.arange(logs.n), logs.action, logs.position]


def _at_position(m: np.ndarray, logs: Logs) -> np.ndarray:
    """m[(x_t,) :, k_t] per round: shape (n_rounds, n_items)."""
    if m.ndim == 2:
        return m[:, logs.position].T
    return m[np.arange(logs.n), :, logs.position]


def _dr_terms(logs: Logs, d: np.ndarray, q: np.ndarray, w: np.ndarray) -> np.ndarray:
    if d.shape[-2:] != q.shape[-2:]:
        raise ValueError(f"q_hat: expected (n_items, n_positions) = {d.shape[-2:]} like action_dist, "
                         f"got {q.shape[-2:]}")
    if d.ndim == 2 and q.ndim == 2:
        direct = (d * q).sum(axis=0)[logs.position]
    else:
        direct = np.einsum("ti,ti->t", _at_position(d, logs), _at_position(q, logs))
    return direct + w * (logs.reward - _at_logged(q, logs))


def _statistic(name: str, sums: np.ndarray, col: dict[str, int], n: int) -> np.ndarray:
    if name == "ips":
        return sums[:, col["wr"]] / n
    if name == "dr":
        return sums[:, col["dr"]] / n
    num, den = sums[:, col["wr"]], sums[:, col["w"]]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _bootstrap_sums(x: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """Column sums of `n_bootstrap` resamples (with replacement) of the rows of x."""
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    chunk = max(1, _BOOTSTRAP_BUDGET // n)
    out = np.empty((n_bootstrap, x.shape[1]))
    for start in range(0, n_bootstrap, chunk):
        m = min(chunk, n_bootstrap - start)
        out[start:start + m] = x[rng.integers(0, n, size=(m, n))].sum(axis=1)
    return out


def _estimator_names(estimators: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(estimators))
    unknown = [e for e in names if e not in ESTIMATORS]
    if unknown or not names:
        raise ValueError(f"estimators: unknown {unknown!r}; choose from {', '.join(ESTIMATORS)}" if unknown
                         else "estimators: none given")
    return names


def _check_bootstrap(n_bootstrap: int, level: float) -> int:
    if not (isinstance(n_bootstrap, int | np.integer) and not isinstance(n_bootstrap, bool) and n_bootstrap >= 10):
        raise ValueError(f"n_bootstrap: expected a whole number ≥ 10, got {n_bootstrap!r}")
    if not (isinstance(level, float | int) and 0 < level < 1):
        raise ValueError(f"level: expected a confidence level in (0, 1), e.g. 0.95, got {level!r}")
    return int(n_bootstrap)


def _check_space(logs: Logs, n_items: int, n_positions: int) -> None:
    if not (isinstance(n_items, int | np.integer) and n_items >= 1):
        raise ValueError(f"n_items: expected a whole number ≥ 1, got {n_items!r}")
    if not (isinstance(n_positions, int | np.integer) and n_positions >= 1):
        raise ValueError(f"n_positions: expected a whole number ≥ 1, got {n_positions!r}")
    if int(logs.action.max()) >= n_items:
        raise ValueError(f"action: item index {int(logs.action.max())} is outside the {n_items} items")
    if int(logs.position.max()) >= n_positions:
        raise ValueError(f"position: {int(logs.position.max())} is outside the {n_positions} positions")


def _covers_logs(m: np.ndarray, logs: Logs, name: str) -> None:
    n_items, n_positions = m.shape[-2:]
    if int(logs.action.max()) >= n_items:
        raise ValueError(f"{name}: has {n_items} items, but action logs item index {int(logs.action.max())}")
    if int(logs.position.max()) >= n_positions:
        raise ValueError(f"{name}: has {n_positions} positions, but position logs {int(logs.position.max())}")


def _array(x: ArrayLike, name: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected numbers") from None
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: values must be finite")
    return a


def _floats(x: ArrayLike, name: str) -> np.ndarray:
    a = _array(x, name)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array (one value per round), got shape {a.shape}")
    return a


def _ints(x: ArrayLike, name: str) -> np.ndarray:
    a = _floats(x, name)
    if np.any(a != np.round(a)):
        raise ValueError(f"{name}: expected whole numbers (indices)")
    return a.astype(np.int64)
