"""The ranker correction's weight: the validation hold-out and the choice made on it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from models import blend  # noqa: E402
from models.ranker import Ranker, RankerConfig  # noqa: E402
from models.towers import ItemTower, TowerConfig, UserTower  # noqa: E402
from models.trainer import Examples, ItemTable  # noqa: E402

N_ITEMS = 40


def _examples(per_user: dict[int, list[int]]) -> Examples:
    """One positive example per (user, item), in the listed order (activity = position)."""
    user, item, activity = [], [], []
    for u, items in per_user.items():
        for pos, i in enumerate(items):
            user.append(u), item.append(i), activity.append(pos)
    n = len(user)
    context = np.zeros((n, 5), np.float32)
    context[:, 0] = activity
    return Examples(np.array(user), np.zeros((n, 4), np.int64), np.array(item), np.zeros((n, 2), np.int64),
                    context, np.ones(n, np.float32))


def test_holdout_hides_a_share_of_each_users_items_and_embeds_from_the_rest() -> None:
    per_user = {1: list(range(1, 11)), 2: [5, 6, 7], 3: list(range(11, 31))}
    data = _examples(per_user)
    h = blend.holdout(data, N_ITEMS, history_len=8, seed=3)
    assert h.users.tolist() == [1, 2, 3]
    for r, u in enumerate(h.users):
        items = {i - 1 for i in per_user[int(u)]}
        kept, held = set(h.kept[r].indices), set(h.held[r].indices)
        assert kept | held == items and not kept & held
        want = 0 if len(items) < blend.MIN_ITEMS else round(blend.HOLDOUT_FRACTION * len(items))
        assert len(held) == want
        recent_kept = [i for i in reversed(per_user[int(u)]) if i - 1 in kept][:8]
        assert [i for i in h.history[r] if i] == recent_kept  # most recent first, capped
    rows_held = {(int(data.user[k]), int(data.item[k]) - 1) for k in np.flatnonzero(h.rows)}
    assert rows_held == {(int(h.users[r]), int(c)) for r, c in zip(*h.held.nonzero(), strict=True)}


def test_weight_zero_keeps_retrievals_order_and_the_best_weight_wins() -> None:
    rng = np.random.default_rng(0)
    per_user = {u: list(rng.choice(np.arange(1, N_ITEMS + 1), size=15, replace=False)) for u in range(1, 31)}
    data = _examples(per_user)
    h = blend.holdout(data, N_ITEMS, history_len=16, seed=0)
    config = TowerConfig(embedding_dim=8)
    item_tower = ItemTower(N_ITEMS, config)
    user_tower = UserTower(30, N_ITEMS, 5, config, item_embedding=item_tower.item_embedding)
    content = rng.normal(size=(N_ITEMS + 1, 4)).astype(np.float32)
    vecs = item_tower([np.arange(N_ITEMS + 1), content]).numpy()
    items = ItemTable([f"i{k}" for k in range(1, N_ITEMS + 1)], {}, rng.integers(0, 3, size=(N_ITEMS + 1, 2)))
    ranker = Ranker(item_tower, N_ITEMS, 3, RankerConfig(), temperature=1.0)
    ranker([vecs[:1], np.ones(1, np.int64), items.categories[:1], content[:1], h.context[:1]])  # builds it
    for layer in ranker.deep + [ranker.head]:  # a correction far from zero
        layer.kernel.assign(layer.kernel * 50)
    weight, ndcg = blend.choose_residual_weight(h, user_tower, vecs, ranker, items, content, retrieve=20)
    assert ndcg["0"] == pytest.approx(ndcg["retrieval"])  # the calibration alone is monotone in the dot
    assert ndcg[f"{weight:g}"] == max(ndcg[f"{w:g}"] for w in blend.GRID)
    blend.set_residual_weight(ranker, weight)
    assert float(ranker.residual_weight) == pytest.approx(weight)
