"""How much the ranker's learned correction counts, chosen on pairs the ranker never trained on.

The ranker's logit is a calibration of the two-tower dot product plus a learned correction (the
DCN and an item bias), scaled by `Ranker.residual_weight`. The correction learns from
point-in-time examples against sampled negatives; re-ordering the towers' top candidates is a
different task, and on MovieLens-100K the correction at full weight ranked them worse than the
dot product alone. So the weight is measured, not assumed: a share of each user's positive items
is held out of the ranker's training, the user is embedded from the rest (as serving embeds a
user), the towers retrieve the top candidates, and the weight whose re-ranking gives the best
NDCG@10 on the held-out items wins. A weight of 0 keeps retrieval's order, and the probability is
then a monotone calibration of the dot product — still the Thompson-sampling prior serving needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from models.metrics import ranking_metrics
from models.ranker import Ranker
from models.towers import UserTower
from models.trainer import Examples, ItemTable

GRID = (0.0, 0.1, 0.25, 0.5, 1.0)
HOLDOUT_FRACTION = 0.2
MIN_ITEMS = 5  # users with fewer positives keep them all
MAX_USERS = 2000


@dataclass
class Holdout:
    """Validation lists: users (vocabulary indices) with kept and held-out items (item index − 1)."""

    users: np.ndarray  # [U]
    history: np.ndarray  # [U, L] kept items, most recent first, 0-padded
    context: np.ndarray  # [U, K] the encoded context of the user's latest example
    kept: sp.csr_matrix  # U × items
    held: sp.csr_matrix  # U × items
    rows: np.ndarray  # bool per example row: its (user, item) is held out


def holdout(data: Examples, n_items: int, history_len: int, seed: int = 0,
            fraction: float = HOLDOUT_FRACTION, max_users: int = MAX_USERS) -> Holdout:
    """A per-user random share of positive items, for users with at least MIN_ITEMS of them."""
    rng = np.random.default_rng(seed)
    positive = np.flatnonzero((data.label > 0) & (data.item > 0))
    order = positive[np.lexsort((data.context[positive, 0], data.user[positive]))]  # by user, oldest first
    users = np.unique(data.user[order])
    if len(users) > max_users:
        users = np.sort(rng.choice(users, size=max_users, replace=False))
    chosen = np.isin(data.user[order], users)
    order = order[chosen]
    starts = np.flatnonzero(np.r_[True, data.user[order][1:] != data.user[order][:-1]])
    ends = np.r_[starts[1:], len(order)]
    history = np.zeros((len(users), history_len), np.int64)
    context = np.zeros((len(users), data.context.shape[1]), np.float32)
    kept_pairs, held_pairs, held_rows = [], [], np.zeros(len(data), bool)
    for r, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
        rows = order[lo:hi]
        items = list(dict.fromkeys(data.item[rows].tolist()))  # distinct, oldest first
        hidden = set()
        if len(items) >= MIN_ITEMS:
            hidden = set(rng.choice(items, size=max(1, int(round(fraction * len(items)))), replace=False).tolist())
        kept = [i for i in items if i not in hidden]
        recent = kept[::-1][:history_len]
        history[r, : len(recent)] = recent
        context[r] = data.context[rows[-1]]
        kept_pairs += [(r, i - 1) for i in kept]
        held_pairs += [(r, i - 1) for i in hidden]
        held_rows[rows[np.isin(data.item[rows], list(hidden))]] = True

    def matrix(pairs: list[tuple[int, int]]) -> sp.csr_matrix:
        rc = np.array(pairs, np.int64).reshape(-1, 2)
        return sp.csr_matrix((np.ones(len(rc)), (rc[:, 0], rc[:, 1])), shape=(len(users), n_items))

    return Holdout(users, history, context, matrix(kept_pairs), matrix(held_pairs), held_rows)


def choose_residual_weight(h: Holdout, user_tower: UserTower, item_vecs: np.ndarray, ranker: Ranker,
                           items: ItemTable, content: np.ndarray, retrieve: int = 200, k: int = 10,
                           grid: tuple[float, ...] = GRID) -> tuple[float, dict[str, float]]:
    """(the best weight, NDCG@k per weight and for retrieval alone) on the held-out lists."""
    u = user_tower([h.users, h.history, h.context], training=False).numpy()
    scores = u @ item_vecs[1:].T
    out = {"retrieval": ranking_metrics(scores, h.kept, h.held, k)[f"ndcg@{k}"]}
    masked = scores.copy()
    masked[h.kept.nonzero()] = -np.inf
    n = min(retrieve, masked.shape[1])
    top = np.argpartition(-masked, n - 1, axis=1)[:, :n]
    rows, cols = np.repeat(np.arange(len(u)), n), top.ravel()
    base, residual = [], []
    for s in range(0, len(rows), 16384):
        r, i = rows[s : s + 16384], cols[s : s + 16384] + 1
        b, c = ranker.parts([u[r], i, items.categories[i], content[i], h.context[r]])
        base.append(b.numpy()[:, 0])
        residual.append(c.numpy()[:, 0])
    base, residual = np.concatenate(base), np.concatenate(residual)
    below = scores - scores.max(axis=1, keepdims=True) - 1.0
    for w in grid:
        ranked = below.copy()
        logit = base + w * residual
        ranked[rows, cols] = logit - logit.min() if len(logit) else logit  # ≥ 0: above the rest
        out[f"{w:g}"] = ranking_metrics(ranked, h.kept, h.held, k)[f"ndcg@{k}"]
    best = max(grid, key=lambda w: (out[f"{w:g}"], -w))
    return float(best), out


def set_residual_weight(ranker: Ranker, weight: float) -> None:
    ranker.residual_weight.assign(tf.constant(weight, tf.float32))
