"""Thompson-sampling slates over Beta posteriors, and the action distribution they induce.

Serving ranks by one Thompson draw per item; off-policy evaluation and the propensities serving
logs need the *distribution* of that ranking — P(item i lands at position k) — which has no
closed form for more than one slot, so it is estimated by Monte-Carlo over the same sampler
(as obp's `BernoulliTS.compute_batch_action_dist` does). Plain numpy: serving must never import
TensorFlow.

Each item's belief is Beta(n0·p + α, n0·(1 − p) + β) (ARCHITECTURE.md, serving step 5): α, β
the bandit counts (or a production prior), p an optional prior mean such as the ranker's
probability, entering as n0 pseudo-trials. With n0 = 0 (the default) it is Beta(α, β).

The serving policy (`thompson_slate`) adds an optional ε share of uniformly drawn slots and
logs, for each shown item, whether it was explored and its propensity.

The ε rule ("an optional ε share of slots from the tail"): θ is drawn once per request and
orders the candidates; slot j shows the θ-order's j-th item, except that, independently with
probability ε, it shows instead an item drawn uniformly from the tail — the candidates the
θ-order places at k or below — not shown yet (no tail left: the slot keeps its θ item). The
replaced item is dropped, not pushed down: inserting would demote every later item by one
place and, at moderate n0, *lower* the exploration share as ε grows (measured: 0.39 at ε = 0,
0.34 at ε = 0.2 for n0 = 350); replacing makes the share rise with ε.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.typing import ArrayLike

from transforms.summaries.bandit import borrowed_posterior

# Draws per Monte-Carlo chunk: bounds memory at chunk × n_items doubles.
_CHUNK = 8_192

# The ranker's probability is worth this many impressions. The smallest multiple of 50 whose
# mean Kendall τ (shown slate of 20 vs the ranker's order, empty bandit store) is ≥ 0.8 on
# calibrated-looking probabilities — logit p ~ N(−6, 2) over 500 candidates, the top 100 kept
# (median top 0.49, 20th 0.08, 100th 0.013): τ ≈ 0.80 at 300, 0.81 at 350, 0.82 at 400. Smaller
# n0 explores more and lets counts override the ranker sooner; `benchmarks/bandit_loop.py`
# prints the trade-off.
DEFAULT_N0 = 350.0


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
    epsilon: float = 0.0,
) -> np.ndarray:
    """`size` Thompson slates, int array (size, k): item indices, shown order (ε rule: module doc)."""
    a, b = beta_parameters(alpha, beta, prior_mean, n0)
    _check_k(k, a.size)
    _check_epsilon(epsilon)
    if not (isinstance(size, int | np.integer) and size >= 1):
        raise ValueError(f"size: expected a whole number ≥ 1, got {size!r}")
    return _policy_slates(a, b, k, rng, int(size), float(epsilon))


def sample_slate(
    alpha: ArrayLike,
    beta: ArrayLike,
    k: int,
    rng: np.random.Generator,
    prior_mean: ArrayLike | None = None,
    n0: float = 0.0,
    epsilon: float = 0.0,
) -> np.ndarray:
    """One Thompson slate (k item indices, ranked); k = number of items gives a full ranking."""
    return sample_slates(alpha, beta, k, rng, 1, prior_mean, n0, epsilon)[0]


def action_distribution(
    alpha: ArrayLike,
    beta: ArrayLike,
    k: int,
    n_sim: int = 100_000,
    seed: int | np.random.Generator = 0,
    prior_mean: ArrayLike | None = None,
    n0: float = 0.0,
    epsilon: float = 0.0,
) -> np.ndarray:
    """P(item i at position j) of the Thompson slate, float array (n_items, k), by `n_sim` draws.

    Each column sums to 1 (every slot holds one item). The Monte-Carlo error of an entry p is
    about sqrt(p(1 − p)/n_sim).
    """
    a, b = beta_parameters(alpha, beta, prior_mean, n0)
    _check_k(k, a.size)
    _check_epsilon(epsilon)
    _check_n_sim(n_sim)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return _cell_counts(a, b, k, int(n_sim), rng, float(epsilon)) / float(n_sim)


# -- the bandit evidence --------------------------------------------------------------------------


def _counts(x: ArrayLike, name: str, n: int | None = None, missing_ok: bool = False) -> np.ndarray:
    try:
        v = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected numbers") from None
    if v.ndim != 1 or (n is not None and v.size != n):
        want = f"{n} values (one per item)" if n is not None else "a 1-D array (one value per item)"
        raise ValueError(f"{name}: expected {want}, got shape {v.shape}")
    known = ~np.isnan(v) if missing_ok else np.ones(v.shape, bool)
    if not np.all(np.isfinite(v[known]) & (v[known] >= 0)):
        raise ValueError(f"{name}: counts must be finite and ≥ 0" + (" (NaN: no global row)" if missing_ok else ""))
    return v


def posterior(clicks: ArrayLike, non_clicks: ArrayLike, global_clicks: ArrayLike | None = None,
              global_non_clicks: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(α, β) per item, origin and edge alike: the segment's counts borrowing from the global row.

    `global_clicks`/`global_non_clicks` None: no global evidence at all; a NaN entry: that item
    has no global row. Either way the item gets the bare prior Beta(1 + clicks, 1 + non_clicks).
    """
    c = _counts(clicks, "clicks")
    nc = _counts(non_clicks, "non_clicks", c.size)
    if (global_clicks is None) != (global_non_clicks is None):
        raise ValueError("global_clicks, global_non_clicks: give both or neither")
    bare = (1.0 + c, 1.0 + nc)
    if global_clicks is None:
        return bare
    gc = _counts(global_clicks, "global_clicks", c.size, missing_ok=True)
    gn = _counts(global_non_clicks, "global_non_clicks", c.size, missing_ok=True)
    has = ~(np.isnan(gc) | np.isnan(gn))
    a, b = borrowed_posterior((c, nc), (np.where(has, gc, 0.0), np.where(has, gn, 0.0)))  # numpy broadcasts
    return np.where(has, a, bare[0]), np.where(has, b, bare[1])


# -- the serving policy -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Slate:
    """What serving shows and logs for one request; every array has one entry per shown item."""

    order: np.ndarray  # int [k]: indices into the candidates, shown order (best first)
    ranker_rank: np.ndarray  # int [k]: each shown item's 0-based position in the ranker-only order
    explored: np.ndarray  # bool [k]: shown above the position the ranker alone gives it
    propensity: np.ndarray  # float [k] in (0, 1]: P(that item at that position) under the policy


def thompson_slate(
    p: ArrayLike,
    alpha: ArrayLike,
    beta: ArrayLike,
    k: int,
    rng: np.random.Generator,
    n0: float = DEFAULT_N0,
    epsilon: float = 0.0,
    explore: bool = True,
    n_sim: int = 1000,
) -> Slate:
    """Serving's exploration step: k of the candidates by Thompson sampling, with propensities.

    `p` is the ranker's probability per candidate; `alpha`, `beta` the bandit counts of the
    user's segment, already borrowed from the global row (an empty store: 1 and 1, the prior).
    θ_i ~ Beta(n0·p_i + α_i, n0·(1 − p_i) + β_i); slots are filled by θ, each one replaced with
    probability `epsilon` by a uniform draw from the θ-order's tail (module doc).
    The ranker-only order sorts by p, ties by index. `explore=False` (the request's
    `disable_exploration`) returns the ranker's top k with propensity 1.

    Propensities come from `n_sim` more draws of the same sampler, for the shown cells only.
    The shown slate is itself a draw of the policy, so it is counted with them:
    (count + 1) / (n_sim + 1) — never 0, at least 1/(n_sim + 1), and exactly 1 when every draw
    agrees. The Monte-Carlo error is about sqrt(p(1 − p)/n_sim).
    """
    prior = _vector(p, "p")
    a0 = _vector(alpha, "alpha")
    if prior.shape != a0.shape:
        raise ValueError(f"p: expected {a0.shape[0]} values (one per candidate, as alpha), got {prior.shape[0]}")
    if np.any((prior < 0) | (prior > 1)):
        raise ValueError("p: probabilities must lie in [0, 1]")
    a, b = beta_parameters(a0, beta, prior, n0)
    _check_k(k, a.size)
    _check_epsilon(epsilon)
    _check_n_sim(n_sim)
    if not isinstance(explore, bool | np.bool_):
        raise ValueError(f"explore: expected true or false, got {explore!r}")

    ranker = np.argsort(-prior, kind="stable")
    rank_of = np.empty(a.size, dtype=np.intp)
    rank_of[ranker] = np.arange(a.size)
    if explore:
        order, counts = _shown_and_counts(a, b, k, int(n_sim) + 1, rng, float(epsilon))
        propensity = counts / (int(n_sim) + 1.0)
    else:
        order = ranker[:k].copy()
        propensity = np.ones(k)
    ranker_rank = rank_of[order]
    return Slate(order, ranker_rank, np.arange(k) < ranker_rank, propensity)


def exploration_share(slates: Iterable[Slate]) -> float:
    """Share of shown items that were explored (shown above their ranker-only position)."""
    explored = shown = 0
    for slate in slates:
        explored += int(np.count_nonzero(slate.explored))
        shown += int(slate.explored.size)
    if shown == 0:
        raise ValueError("slates: no shown items")
    return explored / shown


def epsilon_slots(ranked: ArrayLike, n_items: int, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """Apply the ε rule to slates already ranked by a score, int array (m, k).

    `ranked` holds, per row, the top k item indices by the policy's score, best first (one row
    or (m, k)); each slot, with probability ε, shows instead a uniform draw from the other
    items (the tail) not shown yet. ε-greedy is this over a deterministic score; Thompson over θ.
    """
    r = np.atleast_2d(np.asarray(ranked))
    if r.ndim != 2 or not np.issubdtype(r.dtype, np.integer):
        raise ValueError(f"ranked: expected item indices of shape (m, k), got {r.dtype} {r.shape}")
    if not (isinstance(n_items, int | np.integer) and n_items >= r.shape[1] >= 1):
        raise ValueError(f"n_items: expected a whole number ≥ k = {r.shape[1]}, got {n_items!r}")
    if r.size and (r.min() < 0 or r.max() >= n_items):
        raise ValueError(f"ranked: item indices must lie in 0..{n_items - 1}")
    _check_epsilon(epsilon)
    return r.astype(np.intp) if epsilon == 0 else _fill_slots(r.astype(np.intp), int(n_items), float(epsilon), rng)


def _policy_slates(a: np.ndarray, b: np.ndarray, k: int, rng: np.random.Generator, size: int,
                   epsilon: float) -> np.ndarray:
    """The one sampler behind shown slates and their Monte-Carlo propensities. θ is drawn only for
    the items that can reach the top k (`contenders`); the ε rule still draws from every item."""
    keep = contenders(a, b, k)
    if keep is None:
        ranked = _top_k(theta_order_scores(a, b, rng, size), k)
    else:
        ranked = keep[_top_k(theta_order_scores(a[keep], b[keep], rng, size), k)]
    return ranked if epsilon == 0 else _fill_slots(ranked, a.size, epsilon, rng)


# The smallest Beta shape (a and b) drawn through Wilson–Hilferty rather than exactly.
WH_MIN_SHAPE = 100.0


def theta_order_scores(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, n) draws that order like θ ~ Beta(a, b) per column: what a ranking needs, not θ itself.

    θ = G_a / (G_a + G_b) is increasing in r = G_a / G_b. When every shape is ≥ `WH_MIN_SHAPE`,
    each Gamma comes from one normal by Wilson–Hilferty, G ≈ a·(1 − c + z·√c)³ with c = 1/(9a),
    and the draws are ∛r = ∛(a/b)·u_a/u_b: two normals and a few array operations instead of two
    Gamma draws. Its Gamma CDF is within 0.0055/a of the exact one (Kolmogorov distance, checked
    in `tests/test_exploration_policy.py`), ≤ 5.5e-5 at the threshold. The normals come from
    `_normal_quantiles` (a third of `standard_normal`'s cost), within 7.6e-6 of N(0, 1). Both are
    far under the Monte-Carlo error of any propensity logged (~0.03). Tight posteriors — a
    calibrated n0 of 10⁵–10⁷, or many counts — take this path; otherwise (the default n0 = 350
    on small probabilities) θ is drawn exactly, for every column alike.
    """
    if not (np.all(a >= WH_MIN_SHAPE) and np.all(b >= WH_MIN_SHAPE)):
        return rng.beta(a, b, size=(size, a.size))
    ca, cb = 1.0 / (9.0 * a), 1.0 / (9.0 * b)
    z = _normal_quantiles()[np.frombuffer(rng.bytes(4 * size * a.size), np.uint16)].reshape(2, size, a.size)
    u_a = z[0] * np.sqrt(ca) + (1.0 - ca)  # > 0 unless z < −3√a + …: never at a ≥ 100 (p < 1e-180)
    u_b = z[1] * np.sqrt(cb) + (1.0 - cb)
    u_a *= np.cbrt(a / b)
    u_a /= u_b
    return u_a


@cache
def _normal_quantiles() -> np.ndarray:
    """N(0, 1) as 65,536 equiprobable points, Φ⁻¹((i + ½)/65,536), indexed by two random bytes.

    A draw is one table read, a third of `standard_normal`'s cost here. Its CDF is within
    1/131,072 (7.6e-6) of the normal's everywhere; the tails stop at ±4.3σ, which a Gaussian
    passes with probability 1.5e-5."""
    n = 1 << 16
    inv = statistics.NormalDist().inv_cdf
    return np.array([inv((i + 0.5) / n) for i in range(n)])


# The chance, per item, that `contenders` leaves out an item a draw would have put in the top k.
PRUNE_EPS = 1e-9


def contenders(a: np.ndarray, b: np.ndarray, k: int, eps: float = PRUNE_EPS) -> np.ndarray | None:
    """Indices of the items whose θ can reach the top k (all but an ε chance); None when all can.

    θ = G_a / (G_a + G_b) with G ~ Gamma(shape, 1), and Gamma(a, 1) is sub-gamma: with s = ln(2/ε),
    G_a < a + sqrt(2as) + s and G_a > a − sqrt(2as), each but for an ε/2 chance (Boucheron,
    Lugosi & Massart, Concentration Inequalities, §2.4). So θ stays under an upper bound U (and
    over a lower bound L) built from them but for an ε chance. Let F be the k-th largest L: but
    for a kε chance those k items' θ are ≥ F, so the top k's last θ is ≥ F, and an item with
    U < F gets there with probability ≤ ε. Leaving such items out changes a draw with
    probability ≤ (n + k)ε — 1.2e-7 for 100 items, far under the Monte-Carlo error of any
    propensity. Tight posteriors (the edge's calibrated n0, or many counts) leave most of a pool
    out; the origin's n0 of 350 leaves few or none.
    """
    n = a.size
    if k >= n:
        return None
    s = np.log(2.0 / eps)
    spread_a, spread_b = np.sqrt(2.0 * a * s), np.sqrt(2.0 * b * s)
    a_hi, a_lo = a + spread_a + s, np.maximum(a - spread_a, 0.0)
    b_hi, b_lo = b + spread_b + s, np.maximum(b - spread_b, 0.0)
    upper = a_hi / (a_hi + b_lo)
    lower = a_lo / (a_lo + b_hi)
    floor = np.partition(lower, n - k)[n - k]  # the k-th largest lower bound
    keep = np.flatnonzero(upper >= floor)
    return None if keep.size == n else keep


def _fill_slots(ranked: np.ndarray, n_items: int, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """The ε rule (module doc) over rows of top-k indices: replaced slots get uniform tail items.

    A tail draw redraws until it hits an item neither in the row's top k nor shown yet, which
    is exactly uniform over those.
    """
    m, k = ranked.shape
    out = ranked.copy()
    if n_items == k:
        return out
    rows = np.arange(m)
    coin = rng.random((m, k)) < epsilon
    taken = np.zeros((m, n_items), dtype=bool)
    taken[rows[:, None], ranked] = True
    tail_left = np.full(m, n_items - k)
    for j in range(k):
        r = np.flatnonzero(coin[:, j] & (tail_left > 0))
        if not r.size:
            continue
        draw = rng.integers(n_items, size=r.size)
        redo = np.flatnonzero(taken[r, draw])
        while redo.size:
            draw[redo] = rng.integers(n_items, size=redo.size)
            redo = redo[taken[r[redo], draw[redo]]]
        out[r, j] = draw
        taken[r, draw] = True
        tail_left[r] -= 1
    return out


def _cell_counts(a: np.ndarray, b: np.ndarray, k: int, n_sim: int, rng: np.random.Generator,
                 epsilon: float) -> np.ndarray:
    """How often each (item, position) occurs in `n_sim` policy draws: (n_items, k)."""
    counts = np.zeros(a.size * k, dtype=np.int64)
    cells = np.arange(k) * a.size  # column-major cell of (item, position): position·n_items + item
    done = 0
    while done < n_sim:
        m = min(_CHUNK, n_sim - done)
        counts += np.bincount((_policy_slates(a, b, k, rng, m, epsilon) + cells).ravel(), minlength=a.size * k)
        done += m
    return counts.reshape(k, a.size).T


def _shown_and_counts(a: np.ndarray, b: np.ndarray, k: int, draws: int, rng: np.random.Generator,
                      epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """The shown slate (the first of `draws` policy draws) and, per shown cell, how many of the
    draws — itself included — put that item at that position. One batch: the shown draw is one
    more row of the Monte-Carlo draws, not a call of its own."""
    shown, counts, done = None, np.zeros(k, dtype=np.int64), 0
    while done < draws:
        m = min(_CHUNK, draws - done)
        slates = _policy_slates(a, b, k, rng, m, epsilon)
        if shown is None:
            shown = slates[0].copy()
        counts += np.count_nonzero(slates == shown, axis=0)
        done += m
    return shown, counts


def slate_propensities(slate: ArrayLike, distribution: np.ndarray) -> np.ndarray:
    """The propensity to log for each shown item: P(that item at its position) from `distribution`."""
    s = np.asarray(slate)
    if s.ndim != 1 or s.size > distribution.shape[1]:
        raise ValueError(f"slate: expected at most {distribution.shape[1]} item indices, got shape {s.shape}")
    return distribution[s, np.arange(s.size)]


# Up to this many columns `_top_k` sorts whole rows; above, it partitions first (measured at 250 rows).
_SORT_MAX = 256


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's k largest scores, largest first (ties: the higher index first)."""
    if scores.shape[1] <= _SORT_MAX:  # a whole ascending sort, read backwards, is the fastest here
        return np.argsort(scores, axis=1)[:, : -k - 1 : -1]
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


def _check_epsilon(epsilon: float) -> None:
    if not (isinstance(epsilon, int | float | np.number) and 0.0 <= epsilon <= 1.0):
        raise ValueError(f"epsilon: expected a share of slots in [0, 1], got {epsilon!r}")


def _check_n_sim(n_sim: int) -> None:
    if not (isinstance(n_sim, int | np.integer) and n_sim >= 1):
        raise ValueError(f"n_sim: expected a whole number ≥ 1, got {n_sim!r}")


def _check_k(k: int, n_items: int) -> None:
    if not (isinstance(k, int | np.integer) and 1 <= k <= n_items):
        raise ValueError(f"k: expected a whole number in 1..{n_items} (the number of items), got {k!r}")
