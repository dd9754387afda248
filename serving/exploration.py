"""Thompson-sampling slates over Beta posteriors, and the action distribution they induce.

Serving ranks by one Thompson draw per item; off-policy evaluation and the propensities serving
logs need the *distribution* of that ranking — P(item i lands at position k) — which has no
closed form for more than one slot, so it is estimated by Monte-Carlo over the same sampler
(as obp's `BernoulliTS.compute_batch_action_dist` does). Plain numpy: serving must never import
TensorFlow.

Each item's belief is Beta(n0·p + α, n0·(1 − p) + β) (ARCHITECTURE.md, serving step 5): α, β
the bandit counts (or a production prior), p an optional prior mean such as the ranker's
probability, entering as n0 pseudo-trials. With n0 = 0 (the default) it is Beta(α, β).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

# Draws per Monte-Carlo chunk: bounds memory at chunk × n_items doubles.
_CHUNK = 8_192


def beta_parameters(
    alpha: ArrayLike, beta: ArrayLike, prior_mean: ArrayLike | None = None, n0: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) = (n0·p + α, n0·(1 − p) + β) per item, checked: every a and b must be positive."""
    a = _vector(alpha, "alpha")
    b = _vector(beta, "beta")
    if a.shape != b.shape:
        raise ValueError(f"alpha and beta: shapes differ, {a.shape} vs {b.shape}")
    if a.size == 0:
        raise ValueError("alpha: no items")
    if not (isinstance(n0, int | float | np.number) and np.isfinite(n0) and n0 >= 0):
        raise ValueError(f"n0: must be a finite number ≥ 0, got {n0!r}")
    if prior_mean is not None:
        p = _vector(prior_mean, "prior_mean")
        if p.shape != a.shape:
            raise ValueError(f"prior_mean: expected {a.shape[0]} values (one per item), got {p.shape[0]}")
        if np.any((p < 0) | (p > 1)):
            raise ValueError("prior_mean: probabilities must lie in [0, 1]")
        a, b = n0 * p + a, n0 * (1.0 - p) + b
    for name, v in (("alpha", a), ("beta", b)):
        bad = np.flatnonzero(v <= 0)
        if bad.size:
            i = int(bad[0])
            after = " after adding n0·p" if prior_mean is not None else ""
            raise ValueError(f"{name}: item {i} has Beta parameter {v[i]:g}{after}; it must be positive")
    return a, b


def sample_slates(
    alpha: ArrayLike,
    beta: ArrayLike,
    k: int,
    rng: np.random.Generator,
    size: int = 1,
    prior_mean: ArrayLike | None = None,
    n0: float = 0.0,
) -> np.ndarray:
    """`size` Thompson slates, int array (size, k): item indices, best sampled score first."""
    a, b = beta_parameters(alpha, beta, prior_mean, n0)
    _check_k(k, a.size)
    if not (isinstance(size, int | np.integer) and size >= 1):
        raise ValueError(f"size: expected a whole number ≥ 1, got {size!r}")
    return _top_k(rng.beta(a, b, size=(int(size), a.size)), k)


def sample_slate(
    alpha: ArrayLike,
    beta: ArrayLike,
    k: int,
    rng: np.random.Generator,
    prior_mean: ArrayLike | None = None,
    n0: float = 0.0,
) -> np.ndarray:
    """One Thompson slate (k item indices, ranked); k = number of items gives a full ranking."""
    return sample_slates(alpha, beta, k, rng, 1, prior_mean, n0)[0]


def action_distribution(
    alpha: ArrayLike,
    beta: ArrayLike,
    k: int,
    n_sim: int = 100_000,
    seed: int | np.random.Generator = 0,
    prior_mean: ArrayLike | None = None,
    n0: float = 0.0,
) -> np.ndarray:
    """P(item i at position j) of the Thompson slate, float array (n_items, k), by `n_sim` draws.

    Each column sums to 1 (every slot holds one item). The Monte-Carlo error of an entry p is
    about sqrt(p(1 − p)/n_sim).
    """
    a, b = beta_parameters(alpha, beta, prior_mean, n0)
    _check_k(k, a.size)
    if not (isinstance(n_sim, int | np.integer) and n_sim >= 1):
        raise ValueError(f"n_sim: expected a whole number ≥ 1, got {n_sim!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    counts = np.zeros(a.size * k, dtype=np.int64)
    cells = np.arange(k) * a.size  # column-major cell of (item, position): position·n_items + item
    done = 0
    while done < n_sim:
        m = min(_CHUNK, int(n_sim) - done)
        slates = _top_k(rng.beta(a, b, size=(m, a.size)), k)
        counts += np.bincount((slates + cells).ravel(), minlength=a.size * k)
        done += m
    return counts.reshape(k, a.size).T / float(n_sim)


def slate_propensities(slate: ArrayLike, distribution: np.ndarray) -> np.ndarray:
    """The propensity to log for each shown item: P(that item at its position) from `distribution`."""
    s = np.asarray(slate)
    if s.ndim != 1 or s.size > distribution.shape[1]:
        raise ValueError(f"slate: expected at most {distribution.shape[1]} item indices, got shape {s.shape}")
    return distribution[s, np.arange(s.size)]


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's k largest scores, largest first."""
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _vector(x: ArrayLike, name: str) -> np.ndarray:
    try:
        v = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected numbers") from None
    if v.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array (one value per item), got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name}: values must be finite")
    return v


def _check_k(k: int, n_items: int) -> None:
    if not (isinstance(k, int | np.integer) and 1 <= k <= n_items):
        raise ValueError(f"k: expected a whole number in 1..{n_items} (the number of items), got {k!r}")
