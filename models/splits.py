"""Train/test splits of the interactions for offline evaluation, as users × items CSR matrices.

Splits work on unique (user, item) pairs (first time of each pair), so a held-out item is never
also a training item of the same user.

- `random_split` (the issue's protocol): per user, a seeded random 25 % of the pairs is held out:
  `n_test = floor(0.25·n + 0.5)` clipped to [1, n − 1] for n ≥ 2; a user with one pair keeps it in
  train (nothing to evaluate). Every user keeps ≥ 1 training item.
- `temporal_split`, two modes:
  - `per_user` (default): each user's last 25 % by time is held out (same count rule; ties in time
    broken by log order). Every user is evaluated; other users' later interactions are in train.
  - `global`: one cut instant at the 75 % quantile of the pairs' times; pairs at or before it train,
    pairs after it test. Nothing from the future trains, as in deployment; users with no pair before
    the cut are cold and dropped from the test (counted in `SplitStats.cold_users`).

`TrainData.events` carries the raw positive events of the training pairs (repeats kept, with times;
under `global`, only events at or before the cut), which sequence-aware models need for histories.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp

from models.interactions import Interactions, pairs_matrix
from schemas.events import Event

TEST_FRACTION = 0.25
TemporalMode = Literal["per_user", "global"]
TEMPORAL_MODES: tuple[str, ...] = ("per_user", "global")


@dataclass(frozen=True)
class TrainData:
    """What a recommender may learn from: the train matrix, the training events and the ids."""

    matrix: sp.csr_matrix  # users × items, 1.0 per training pair
    users: np.ndarray  # int32 per training event (time-sorted)
    items: np.ndarray  # int32 per training event
    ts: np.ndarray  # int64 epoch ms per training event
    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    item_categories: tuple[tuple[str, ...], ...]
    catalog: Mapping[str, Event] = field(default_factory=dict)  # item id → its latest `item` event

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def histories(self, users: np.ndarray, length: int) -> list[list[str]]:
        """Each user's distinct training item ids, most recent first, at most `length` of them."""
        idx = np.flatnonzero(np.isin(self.users, users))
        order = idx[np.lexsort((-idx, -self.ts[idx]))]  # newest first, later log lines first
        by_user: dict[int, list[str]] = {int(u): [] for u in users}
        seen: dict[int, set[int]] = {u: set() for u in by_user}
        for i in order:
            u = int(self.users[i])
            hist = by_user.get(u)
            if hist is None or len(hist) >= length or (item := int(self.items[i])) in seen[u]:
                continue
            seen[u].add(item)
            hist.append(self.item_ids[item])
        return [by_user[int(u)] for u in users]


@dataclass(frozen=True)
class SplitStats:
    users: int
    items: int
    train_pairs: int
    test_pairs: int
    test_users: int  # users with at least one held-out item (the evaluated users)
    cold_users: int = 0  # global temporal split: users with test pairs but no training pair (dropped)
    cut_ms: int | None = None  # global temporal split: the cut instant


@dataclass(frozen=True)
class Split:
    """A named split: `train` and `test` are disjoint binary users × items CSR matrices."""

    name: str
    train: sp.csr_matrix
    test: sp.csr_matrix
    train_data: TrainData
    stats: SplitStats
    params: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        """sha256 of the train and test pairs (and the id maps): record it beside a model trained on
        this split's train part, so evaluation can tell the model never saw the test pairs."""
        h = hashlib.sha256()
        for m in (self.train, self.test):
            m = m.tocsr()
            m.sort_indices()
            h.update(np.asarray(m.indptr, dtype=np.int64).tobytes())
            h.update(np.asarray(m.indices, dtype=np.int64).tobytes())
        h.update("\x1f".join(self.train_data.user_ids).encode())
        h.update("\x1e".join(self.train_data.item_ids).encode())
        return h.hexdigest()


def _test_counts(n: np.ndarray, fraction: float) -> np.ndarray:
    n_test = np.floor(fraction * n + 0.5).astype(np.int64)
    n_test = np.clip(n_test, 1, np.maximum(n - 1, 1))
    return np.where(n >= 2, n_test, 0)


def _rank_within_user(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For pairs grouped by user (contiguous), each pair's rank in its group and its group's size."""
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    sizes = np.diff(np.r_[starts, len(users)])
    group_start = np.repeat(starts, sizes)
    return np.arange(len(users)) - group_start, np.repeat(sizes, sizes)


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"test fraction must be in (0, 1), got {fraction}")


def random_split(data: Interactions, seed: int = 0, fraction: float = TEST_FRACTION) -> Split:
    """Per-user seeded random hold-out of `fraction` of each user's pairs (module docstring)."""
    _check_fraction(fraction)
    users, items, ts = data.unique()  # grouped by user
    rng = np.random.default_rng(seed)
    keys = rng.random(len(users))
    order = np.lexsort((keys, users))  # within each user, a random order
    rank, size = _rank_within_user(users[order])
    is_test = np.empty(len(users), dtype=bool)
    is_test[order] = rank < _test_counts(size, fraction)
    return _build(data, users, items, ts, is_test, f"random(seed={seed})",
                  {"kind": "random", "seed": seed, "fraction": fraction})


def temporal_split(data: Interactions, mode: TemporalMode = "per_user", fraction: float = TEST_FRACTION) -> Split:
    """Hold out the latest `fraction`: per user (`per_user`) or after one global cut (`global`)."""
    _check_fraction(fraction)
    if mode not in TEMPORAL_MODES:
        raise ValueError(f"temporal mode must be one of {', '.join(TEMPORAL_MODES)}, got {mode!r}")
    users, items, ts = data.unique()  # grouped by user, time-sorted within a user
    params = {"kind": "temporal", "mode": mode, "fraction": fraction}
    if mode == "per_user":
        rank, size = _rank_within_user(users)
        is_test = rank >= size - _test_counts(size, fraction)
        return _build(data, users, items, ts, is_test, "temporal(per_user)", params)
    cut = int(np.quantile(ts, 1.0 - fraction, method="lower"))
    is_test = ts > cut
    has_train = np.zeros(data.n_users, dtype=bool)
    has_train[users[~is_test]] = True
    cold = is_test & ~has_train[users]
    keep = ~cold
    return _build(data, users[keep], items[keep], ts[keep], is_test[keep], "temporal(global)",
                  {**params, "cut_ms": cut}, cold_users=len(np.unique(users[cold])), cut_ms=cut)


def _build(data: Interactions, users: np.ndarray, items: np.ndarray, ts: np.ndarray, is_test: np.ndarray,
           name: str, params: dict, cold_users: int = 0, cut_ms: int | None = None) -> Split:
    shape = (data.n_users, data.n_items)
    train = pairs_matrix(users[~is_test], items[~is_test], shape)
    test = pairs_matrix(users[is_test], items[is_test], shape)
    # the raw training events: every event of a training pair (before the cut, for a global split)
    event_in_train = np.asarray(train[data.users, data.items]).ravel() > 0
    if cut_ms is not None:
        event_in_train &= data.ts <= cut_ms
    train_data = TrainData(
        matrix=train, users=data.users[event_in_train], items=data.items[event_in_train],
        ts=data.ts[event_in_train], user_ids=data.user_ids, item_ids=data.item_ids,
        item_categories=data.item_categories, catalog=data.catalog,
    )
    stats = SplitStats(
        users=data.n_users, items=data.n_items, train_pairs=int(train.nnz), test_pairs=int(test.nnz),
        test_users=int((np.diff(test.indptr) > 0).sum()), cold_users=cold_users, cut_ms=cut_ms,
    )
    return Split(name, train, test, train_data, stats, params)


def make_split(data: Interactions, kind: str = "random", seed: int = 0, temporal_mode: TemporalMode = "per_user",
               fraction: float = TEST_FRACTION) -> Split:
    """The split named by the CLI's `--split random|temporal`."""
    if kind == "random":
        return random_split(data, seed=seed, fraction=fraction)
    if kind == "temporal":
        return temporal_split(data, mode=temporal_mode, fraction=fraction)
    raise ValueError(f"--split must be random or temporal, got {kind!r}")
