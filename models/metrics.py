"""Top-k ranking metrics over the full catalogue, vectorised over users.

Protocol: a user's training items are excluded (score −inf), every held-out item is relevant
(binary relevance), and users with no held-out item are not evaluated. Definitions, per user with
relevant set R, top-k list L and hits h_i = [L_i ∈ R] (i = 1..k):

- Precision@k = Σ h_i / k
- Recall@k    = Σ h_i / |R|                        (the common denominator |R|, as in RecBole and
                                                    Microsoft Recommenders; not min(|R|, k))
- HR@k        = 1 if Σ h_i > 0 else 0
- NDCG@k      = Σ h_i / log2(i + 1)  ÷  Σ_{i ≤ min(|R|, k)} 1 / log2(i + 1)
- MAP@k       = mean over users of AP@k = Σ_i Precision@i · h_i / min(|R|, k)   (truncated at k)

Ties in score are broken by the lower item index, so results are deterministic.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

METRICS = ("ndcg", "recall", "precision", "hr", "map")


def metric_names(k: int) -> list[str]:
    """The keys `ranking_metrics` returns, e.g. `ndcg@10`."""
    return [f"{m}@{k}" for m in METRICS]


def exclude(scores: np.ndarray, seen: sp.csr_matrix) -> np.ndarray:
    """A copy of `scores` (users × items) with each user's seen items at −inf; NaN scores are refused."""
    out = np.array(scores, dtype=np.float64, copy=True)
    if np.isnan(out).any():
        raise ValueError("scores contain NaN: a recommender must score every item (use -inf to rule one out)")
    rows, cols = seen.nonzero()
    out[rows, cols] = -np.inf
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's k highest scores, best first (ties → lower index first)."""
    n_rows, n_items = scores.shape
    if not 1 <= k <= n_items:
        raise ValueError(f"k must be in 1..{n_items} (the catalogue size), got {k}")
    if n_rows == 0:
        return np.zeros((0, k), dtype=np.int64)
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]  # each row's k-th highest score
    greater = scores > kth
    tied = scores == kth
    need = k - greater.sum(axis=1, keepdims=True)  # tied items to take, lowest index first
    take = greater | (tied & (np.cumsum(tied, axis=1) <= need))
    part = np.nonzero(take)[1].reshape(n_rows, k)
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1)


def hits_at_k(topk: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """Boolean users × k: whether each recommended item is relevant for its user (row r of `topk`
    against row r of `relevant`)."""
    rel = relevant.tocsr()
    n_items = rel.shape[1]
    rel_keys = np.repeat(np.arange(rel.shape[0], dtype=np.int64), np.diff(rel.indptr)) * n_items + rel.indices
    top_keys = np.arange(topk.shape[0], dtype=np.int64)[:, None] * n_items + topk
    return np.isin(top_keys, rel_keys)


def metrics_from_hits(hits: np.ndarray, n_relevant: np.ndarray) -> dict[str, np.ndarray]:
    """Per-user metrics from a users × k hit matrix and each user's |R| (> 0)."""
    k = hits.shape[1]
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    h = hits.astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.minimum(n_relevant, k).astype(np.int64) - 1]
    n_hits = h.sum(axis=1)
    precision_at_i = np.cumsum(h, axis=1) / np.arange(1, k + 1)
    return {
        f"ndcg@{k}": (h @ discounts) / ideal,
        f"recall@{k}": n_hits / n_relevant,
        f"precision@{k}": n_hits / k,
        f"hr@{k}": (n_hits > 0).astype(np.float64),
        f"map@{k}": (precision_at_i * h).sum(axis=1) / np.minimum(n_relevant, k),
    }


def ranking_metrics(scores: np.ndarray, train: sp.csr_matrix, test: sp.csr_matrix, k: int = 10
                    ) -> dict[str, float]:
    """Mean metrics over the users (rows) with held-out items; rows of `train`/`test` match `scores`."""
    per_user, _ = per_user_metrics(scores, train, test, k)
    return {name: float(v.mean()) if len(v) else float("nan") for name, v in per_user.items()}


def per_user_metrics(scores: np.ndarray, train: sp.csr_matrix, test: sp.csr_matrix, k: int = 10
                     ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(per-user metrics, the evaluated row indices): rows with no held-out item are skipped."""
    test = test.tocsr()
    n_rel = np.diff(test.indptr)
    rows = np.flatnonzero(n_rel > 0)
    if scores.shape != test.shape or train.shape != test.shape:
        raise ValueError(f"scores {scores.shape}, train {train.shape} and test {test.shape} must have one shape")
    topk = top_k(exclude(scores[rows], train.tocsr()[rows]), k)
    return metrics_from_hits(hits_at_k(topk, test[rows]), n_rel[rows]), rows
