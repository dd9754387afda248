"""Training loops: the two towers (with the content tower inside), then the ranker, then the edge ranker.

Inputs are the TFT-transformed examples (vocabulary indices, encoded context) as numpy arrays.
The two towers train with a full softmax over the item vocabulary (cheap at catalogue sizes up
to ~10^5 and free of sampling bias); the content tower trains end to end inside the item tower.
The ranker learns positives against explicit negatives (skips) and sampled ones — hard
negatives from the towers' own top candidates, because those are what it re-ranks at serving,
and popularity-sampled ones. Each loop returns its per-epoch losses for the report's curves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
import tf_keras as keras

from models.ranker import EdgeRanker, Ranker, RankerConfig
from models.towers import ItemTower, TowerConfig, UserTower


@dataclass
class Examples:
    """Transformed examples: index arrays and the encoded context, one row per interaction."""

    user: np.ndarray  # [N] int
    history: np.ndarray  # [N, L] int
    item: np.ndarray  # [N] int
    categories: np.ndarray  # [N, C] int
    context: np.ndarray  # [N, K] float32
    label: np.ndarray  # [N] float32

    def take(self, rows: np.ndarray) -> Examples:
        return Examples(*(getattr(self, f)[rows] for f in ("user", "history", "item", "categories", "context",
                                                          "label")))

    def __len__(self) -> int:
        return len(self.label)


@dataclass
class ItemTable:
    """Every vocabulary item by index (row 0 = unknown/padding): content inputs and categories."""

    ids: list[str]  # index - 1 → item id
    content_feed: dict[str, np.ndarray]  # contract inputs, [V + 1, ·]
    categories: np.ndarray  # [V + 1, C] category indices

    @property
    def size(self) -> int:
        return len(self.ids)


@dataclass
class TrainConfig:
    towers: TowerConfig = field(default_factory=TowerConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    tower_epochs: int = 40
    content_epochs: int = 4
    ranker_epochs: int = 3
    edge_epochs: int = 3
    batch_size: int = 2048
    learning_rate: float = 4e-3
    hard_negatives: int = 0
    popular_negatives: int = 4
    hard_pool: int = 100
    negative_power: float = 0.0  # sampled negatives ∝ popularity^power (0: uniform, as the towers' full softmax)
    seed: int = 0


Log = Callable[[str], None]


def _batches(n: int, batch: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for start in range(0, n, batch):
        yield order[start : start + batch]


def _constant_feed(feed: dict[str, np.ndarray]) -> dict[str, tf.Tensor]:
    return {k: tf.constant(v, dtype=tf.float32) for k, v in feed.items()}


def train_towers(data: Examples, items: ItemTable, content_tower: keras.Model, n_users: int, config: TrainConfig,
                 log: Log = print) -> tuple[UserTower, ItemTower, list[float]]:
    """Full-softmax two-tower training on the positive examples; returns the towers and losses."""
    cfg = config.towers
    tf.random.set_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    pos = data.take(np.flatnonzero(data.label > 0))
    item_tower = ItemTower(items.size, cfg)
    shared = item_tower.item_embedding if cfg.share_item_embedding else None
    user_tower = UserTower(n_users, items.size, pos.context.shape[1], cfg, item_embedding=shared)
    feed = _constant_feed(items.content_feed)
    all_items = tf.range(items.size + 1, dtype=tf.int64)
    zero_content = tf.zeros([items.size + 1, content_tower.output.shape[-1]])  # known items ignore content
    user_tower([np.zeros(1, np.int64), np.zeros((1, pos.history.shape[1]), np.int64), pos.context[:1]])
    item_tower([np.zeros(1, np.int64), zero_content[:1]])
    tower_variables = list({id(w): w for w in user_tower.trainable_variables + item_tower.item_embedding.weights
                            + item_tower.bias.weights}.values())  # the item table is shared: once
    optimizer = keras.optimizers.Adam(config.learning_rate)
    inv_temp = 1.0 / cfg.temperature

    @tf.function(reduce_retracing=True)
    def step(user, history, context, target):
        with tf.GradientTape() as tape:
            v = item_tower([all_items, zero_content], training=True)[1:]
            u = user_tower([user, history, context], training=True)
            logits = tf.matmul(u, v, transpose_b=True) * inv_temp
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(target - 1, logits))
            total = loss + tf.add_n(user_tower.losses + item_tower.losses + [0.0])
        variables = tower_variables
        optimizer.apply_gradients(zip(tape.gradient(total, variables), variables, strict=True))
        return loss

    @tf.function(reduce_retracing=True)
    def content_step(user, history, context, target):
        """Cold-start path: items placed by content alone against the frozen user tower."""
        with tf.GradientTape() as tape:
            content = content_tower(feed, training=True)
            v = item_tower([all_items, content], training=True, content_only=True)[1:]
            u = user_tower([user, history, context], training=False)
            logits = tf.matmul(u, v, transpose_b=True) * inv_temp
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(target - 1, logits))
            total = loss + tf.add_n(content_tower.losses + [0.0])
        variables = content_tower.trainable_variables + item_tower.content_projection.trainable_variables
        optimizer_content.apply_gradients(zip(tape.gradient(total, variables), variables, strict=True))
        return loss

    optimizer_content = keras.optimizers.Adam(config.learning_rate)
    losses = []
    pos = pos.take(np.flatnonzero(pos.item > 0))
    phases = [("towers", step)] * config.tower_epochs
    if cfg.use_content:
        phases += [("content", content_step)] * config.content_epochs
    for epoch, (phase, fn) in enumerate(phases):
        started, total, n = time.perf_counter(), 0.0, 0
        for rows in _batches(len(pos), config.batch_size, rng):
            b = pos.take(rows)
            total += float(fn(b.user, b.history, b.context, b.item)) * len(rows)
            n += len(rows)
        losses.append(total / max(n, 1))
        log(f"  {phase} epoch {epoch + 1}/{len(phases)}: softmax loss {losses[-1]:.4f} "
            f"({time.perf_counter() - started:.1f}s)")
    return user_tower, item_tower, losses


def content_vectors(content_tower: keras.Model, feed: dict[str, np.ndarray], batch: int = 4096) -> np.ndarray:
    n = len(next(iter(feed.values())))
    parts = [content_tower({k: v[s : s + batch] for k, v in feed.items()}, training=False).numpy()
             for s in range(0, n, batch)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def user_embeddings(user_tower: UserTower, data: Examples, batch: int = 8192) -> np.ndarray:
    parts = [user_tower([data.user[s : s + batch], data.history[s : s + batch], data.context[s : s + batch]],
                        training=False).numpy() for s in range(0, len(data), batch)]
    return np.concatenate(parts)


def item_embeddings(item_tower: ItemTower, content: np.ndarray) -> np.ndarray:
    return item_tower([np.arange(len(content)), content], training=False).numpy()


def _positives_by_user(data: Examples) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for u, i, y in zip(data.user.tolist(), data.item.tolist(), data.label.tolist(), strict=True):
        if y > 0:
            out.setdefault(u, set()).add(i)
    return out


def ranker_rows(data: Examples, user_vecs: np.ndarray, item_vecs: np.ndarray, config: TrainConfig
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(example row, item index, label) for the ranker: every labelled example, plus sampled
    negatives per positive — hard ones from the towers' top candidates and popularity-sampled
    ones — never an item the user has a positive for."""
    rng = np.random.default_rng(config.seed + 1)
    positives = _positives_by_user(data)
    n_items = len(item_vecs) - 1
    counts = np.bincount(data.item[data.label > 0], minlength=n_items + 1).astype(np.float64)[1:]
    counts = np.maximum(counts, 1.0) ** config.negative_power
    popular = counts / counts.sum()
    pos_rows = np.flatnonzero(data.label > 0)
    rows, items = [np.arange(len(data))], [data.item]
    if config.hard_negatives:
        for s in range(0, len(pos_rows), 4096):
            r = pos_rows[s : s + 4096]
            scores = user_vecs[r] @ item_vecs[1:].T
            top = np.argpartition(-scores, min(config.hard_pool, n_items - 1), axis=1)[:, : config.hard_pool] + 1
            pick = rng.integers(0, top.shape[1], size=(len(r), config.hard_negatives))
            rows.append(np.repeat(r, config.hard_negatives))
            items.append(np.take_along_axis(top, pick, axis=1).ravel())
    pop_rows = np.repeat(pos_rows, config.popular_negatives)
    rows.append(pop_rows)
    items.append(rng.choice(n_items, size=len(pop_rows), p=popular) + 1)
    rows_all = np.concatenate(rows)
    items_all = np.concatenate(items).astype(np.int64)
    labels_all = np.concatenate([data.label, np.zeros(len(rows_all) - len(data), np.float32)])
    users = data.user[rows_all]
    keep = np.ones(len(rows_all), bool)
    for k in range(len(data), len(rows_all)):  # sampled negatives only
        keep[k] = items_all[k] not in positives.get(int(users[k]), ())
    return rows_all[keep], items_all[keep], labels_all[keep]


def train_ranker(data: Examples, items: ItemTable, content: np.ndarray, user_vecs: np.ndarray,
                 item_tower: ItemTower, config: TrainConfig, n_categories: int, log: Log = print
                 ) -> tuple[Ranker, list[float], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    item_vecs = item_embeddings(item_tower, content)
    rows, item_idx, labels = ranker_rows(data, user_vecs, item_vecs, config)
    ranker = Ranker(item_tower, items.size, n_categories, config.ranker, config.towers.temperature)
    optimizer = keras.optimizers.Adam(config.learning_rate)
    content_t = tf.constant(content)
    categories_t = tf.constant(items.categories)
    rng = np.random.default_rng(config.seed + 2)

    @tf.function(reduce_retracing=True)
    def step(u, item, context, y):
        with tf.GradientTape() as tape:
            logits = ranker([u, item, tf.gather(categories_t, item), tf.gather(content_t, item), context],
                            training=True)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y[:, None], logits))
            total = loss + tf.add_n(ranker.losses + [0.0])
        grads = tape.gradient(total, ranker.trainable_variables)
        optimizer.apply_gradients(zip(grads, ranker.trainable_variables, strict=True))
        return loss

    losses = []
    for epoch in range(config.ranker_epochs):
        started, total, n = time.perf_counter(), 0.0, 0
        for b in _batches(len(rows), config.batch_size * 4, rng):
            r = rows[b]
            total += float(step(user_vecs[r], item_idx[b], data.context[r], labels[b])) * len(b)
            n += len(b)
        losses.append(total / max(n, 1))
        log(f"  ranker epoch {epoch + 1}/{config.ranker_epochs}: log loss {losses[-1]:.4f} on {len(rows):,} rows "
            f"({time.perf_counter() - started:.1f}s)")
    return ranker, losses, (rows, item_idx, labels)


def ranker_probability(ranker: Ranker, user_vecs: np.ndarray, item_idx: np.ndarray, items: ItemTable,
                       content: np.ndarray, context: np.ndarray, batch: int = 16384) -> np.ndarray:
    out = []
    for s in range(0, len(item_idx), batch):
        i = item_idx[s : s + batch]
        logits = ranker([user_vecs[s : s + batch], i, items.categories[i], content[i], context[s : s + batch]],
                        training=False)
        out.append(tf.sigmoid(logits).numpy()[:, 0])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def train_edge_ranker(data: Examples, ranker_data: tuple[np.ndarray, np.ndarray, np.ndarray],
                      origin_scores: np.ndarray, n_items: int, recent_len: int, config: TrainConfig,
                      log: Log = print) -> tuple[EdgeRanker, list[float]]:
    rows, item_idx, labels = ranker_data
    edge = EdgeRanker(n_items)
    optimizer = keras.optimizers.Adam(config.learning_rate)
    rng = np.random.default_rng(config.seed + 3)
    recent = data.history[:, :recent_len]

    @tf.function(reduce_retracing=True)
    def step(rec, item, origin, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y[:, None], edge([rec, item, origin])))
        grads = tape.gradient(loss, edge.trainable_variables)
        optimizer.apply_gradients(zip(grads, edge.trainable_variables, strict=True))
        return loss

    losses = []
    for epoch in range(config.edge_epochs):
        total, n = 0.0, 0
        for b in _batches(len(rows), config.batch_size * 4, rng):
            r = rows[b]
            total += float(step(recent[r], item_idx[b], origin_scores[b][:, None], labels[b])) * len(b)
            n += len(b)
        losses.append(total / max(n, 1))
        log(f"  edge ranker epoch {epoch + 1}/{config.edge_epochs}: log loss {losses[-1]:.4f}")
    return edge, losses
