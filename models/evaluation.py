"""Offline evaluation: rank the full catalogue for every test user, score it, and run a leakage canary.

A `Recommender` is anything with `fit(train)` and `score(users)`; the baselines and the trained
model (ONNX, `models.onnx_recommender`) are evaluated by the same loop on the same split.

The canary re-scores the *same* rankings against test sets shuffled across users (a derangement:
user a is judged on user b's held-out items, minus those already in a's training items). A model
that ranks from what it learnt about a user can then only score what popularity explains; if it
still scores above MostPop's real score, its rankings carry knowledge of the held-out items as a
whole (e.g. future popularity leaking into a temporal split's training data: a model scoring by
test-set counts keeps 0.24 NDCG@10 under the canary on ML-100K's global temporal split, where
MostPop really scores 0.16). What it cannot see is per-user leakage: a model that memorised each
user's own test pairs scores 1.0 for real and falls under the canary like an honest one. That is
guarded by checking that a model was trained with the evaluated split's holdout
(`pipelines.evaluate`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from models.metrics import exclude, hits_at_k, metrics_from_hits, top_k
from models.splits import Split, TrainData

DEFAULT_BATCH = 1024


@runtime_checkable
class Recommender(Protocol):
    """Scores every catalogue item for the given user indices; higher = better."""

    def fit(self, train: TrainData) -> None: ...

    def score(self, users: np.ndarray) -> np.ndarray: ...  # float[len(users), n_items]


@dataclass(frozen=True)
class RecommenderResult:
    name: str
    metrics: dict[str, float]  # mean over the evaluated users, e.g. {"ndcg@10": ...}
    canary: dict[str, float]  # the same metrics against test sets shuffled across users
    fit_seconds: float
    score_seconds: float  # scoring + ranking all evaluated users
    top_items: np.ndarray = field(repr=False)  # evaluated users × k recommended item indices


@dataclass(frozen=True)
class EvaluationResult:
    """Every recommender's result on one split; `users` are the evaluated rows (with test items)."""

    split: Split
    k: int
    users: np.ndarray
    canary_users: int
    results: dict[str, RecommenderResult]

    def table(self) -> list[dict]:
        return [{"recommender": r.name, **r.metrics} for r in self.results.values()]


def shuffled_test(split: Split, users: np.ndarray, seed: int = 0) -> sp.csr_matrix:
    """The canary's labels: the evaluated users' (sorted `users`) test rows deranged by a seeded random
    cycle, so no user keeps its own, minus items the receiving user has in train."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(users))
    donor = np.empty(len(users), dtype=np.int64)
    donor[order] = np.roll(order, -1)  # each user takes the next one's row in a random cycle
    moved = split.test.tocsr()[users[donor]]
    out = sp.csr_matrix((moved.data, moved.indices, _place_rows(moved.indptr, users, split.test.shape[0])),
                        shape=split.test.shape)
    out = out - out.multiply(split.train)  # drop items the receiving user trained on
    out.eliminate_zeros()
    return out.tocsr()


def _place_rows(indptr: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    """indptr of a matrix whose rows `rows` (sorted) hold the consecutive rows of `indptr`'s matrix."""
    counts = np.zeros(n_rows, dtype=np.int64)
    counts[rows] = np.diff(indptr)
    return np.r_[0, np.cumsum(counts)]


def evaluate(recommenders: Mapping[str, Recommender], split: Split, k: int = 10, canary_seed: int = 0,
             batch: int = DEFAULT_BATCH) -> EvaluationResult:
    """Fit each recommender on the split's training data, rank the full catalogue minus each user's
    training items, and score against the held-out items (and against the canary's shuffled ones)."""
    test = split.test.tocsr()
    train = split.train.tocsr()
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    if len(users) == 0:
        raise ValueError(f"split {split.name} holds out no item: nothing to evaluate")
    canary = shuffled_test(split, users, canary_seed)
    canary_rows = np.diff(canary.indptr)[users] > 0
    n_rel = np.diff(test.indptr)[users]
    results: dict[str, RecommenderResult] = {}
    for name, rec in recommenders.items():
        started = time.perf_counter()
        rec.fit(split.train_data)
        fitted = time.perf_counter()
        tops = []
        for lo in range(0, len(users), batch):
            chunk = users[lo:lo + batch]
            scores = np.asarray(rec.score(chunk))
            if scores.shape != (len(chunk), split.train.shape[1]):
                raise ValueError(f"{name}.score returned shape {scores.shape}, expected "
                                 f"({len(chunk)}, {split.train.shape[1]}) (users × catalogue items)")
            tops.append(top_k(exclude(scores, train[chunk]), k))
        top = np.concatenate(tops)
        scored = time.perf_counter()
        real = metrics_from_hits(hits_at_k(top, test[users]), n_rel)
        fake_top = top[canary_rows]
        fake_rel = canary[users[canary_rows]]
        fake = metrics_from_hits(hits_at_k(fake_top, fake_rel), np.diff(fake_rel.indptr))
        results[name] = RecommenderResult(
            name=name,
            metrics={m: float(v.mean()) for m, v in real.items()},
            canary={m: float(v.mean()) if len(v) else float("nan") for m, v in fake.items()},
            fit_seconds=fitted - started,
            score_seconds=scored - fitted,
            top_items=top,
        )
    return EvaluationResult(split=split, k=k, users=users, canary_users=int(canary_rows.sum()), results=results)
