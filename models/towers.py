"""The two-tower retrieval model: a user tower and an item tower meeting in one embedding space.

User tower: a bag of the user's recent positive items read from the item tower's own id table
(so items that co-occur end up close, which is what transfers to unseen items of the user), plus
optionally the user id and an MLP over the bag and the encoded context. Item tower: the item id
embedding and a bias (the last coordinate; the user side carries a 1 there, so a plain inner
product — what the vector store searches — includes it). An item unknown to the vocabulary
(index 0) is placed by a projection of its content vector instead: that is the cold start, and
`content_only` trains that path against the frozen user tower. Both towers take vocabulary
indices; the exported models put the TFT layer in front.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf
import tf_keras as keras


@dataclass(frozen=True)
class TowerConfig:
    """Defaults measured on MovieLens-100K (README, "Models"): a shared item table read by a bag of
    the history, raw dot products with an item bias. The user-id path and the MLP over the bag
    and context overfit there (NDCG@10 fell from 0.35 to 0.18-0.21), so they are off by default."""

    embedding_dim: int = 64
    hidden: int = 256
    user_id_dropout: float = 1.0  # share of steps a user's id embedding is hidden (1: the id path is off)
    item_id_dropout: float = 0.0  # share of items placed by content alone in a step
    temperature: float = 1.0
    l2: float = 1e-6
    share_item_embedding: bool = True  # the history bag reads the item tower's id table
    use_content: bool = True  # unknown (cold) items are placed by their content vector
    mlp: bool = False  # an MLP over bag, user id and context (False: bag + user id)
    normalize: bool = False  # unit vectors (cosine) instead of raw dot products
    history_dropout: float = 0.5  # share of history items hidden in a step (denoising)
    item_bias: bool = True  # a per-item bias as the last coordinate (the user side carries a 1)


def _l2_normalize(x: tf.Tensor) -> tf.Tensor:
    return tf.math.l2_normalize(x, axis=-1, epsilon=1e-12)


def masked_mean(embeddings: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """Mean of the embeddings of non-zero indices ([N, L, D] → [N, D]; zeros for an empty bag)."""
    mask = tf.cast(tf.not_equal(indices, 0), embeddings.dtype)[..., None]
    total = tf.reduce_sum(embeddings * mask, axis=1)
    return total / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


class UserTower(keras.Model):
    def __init__(self, n_users: int, n_items: int, context_width: int, config: TowerConfig,
                 item_embedding: keras.layers.Embedding | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        reg = keras.regularizers.l2(config.l2)
        d = config.embedding_dim
        self.config = config
        self.user_embedding = keras.layers.Embedding(n_users + 1, d, embeddings_regularizer=reg, name="user_id")
        self.history_embedding = item_embedding or keras.layers.Embedding(n_items + 1, d, embeddings_regularizer=reg,
                                                                          name="history")
        self.hidden = keras.layers.Dense(config.hidden, activation="relu", name="hidden")
        self.out = keras.layers.Dense(d, name="out")
        self.context_width = context_width

    def call(self, inputs, training: bool = False) -> tf.Tensor:
        user, history, context = inputs
        u = self.user_embedding(user)
        keep = tf.cast(tf.not_equal(user, 0), u.dtype)[:, None]
        if training and self.config.user_id_dropout > 0:
            keep *= tf.cast(tf.random.uniform(tf.shape(keep)) >= self.config.user_id_dropout, u.dtype)
        if training and self.config.history_dropout > 0:
            hide = tf.random.uniform(tf.shape(history)) < self.config.history_dropout
            history = tf.where(hide, tf.zeros_like(history), history)
        bag = masked_mean(self.history_embedding(history), history)
        x = tf.concat([bag, u * keep, context], axis=1)
        out = self.out(self.hidden(x)) + bag if self.config.mlp else bag + u * keep
        out = _l2_normalize(out) if self.config.normalize else out
        if self.config.item_bias:
            out = tf.concat([out, tf.ones_like(out[:, :1])], axis=1)
        return out


class ItemTower(keras.Model):
    def __init__(self, n_items: int, config: TowerConfig, **kwargs) -> None:
        super().__init__(**kwargs)
        reg = keras.regularizers.l2(config.l2)
        self.config = config
        self.item_embedding = keras.layers.Embedding(n_items + 1, config.embedding_dim, embeddings_regularizer=reg,
                                                     name="item_id")
        self.content_projection = keras.layers.Dense(config.embedding_dim, name="content_projection")
        self.bias = keras.layers.Embedding(n_items + 1, 1, embeddings_initializer="zeros", name="item_bias")

    def call(self, inputs, training: bool = False, content_only: bool = False) -> tf.Tensor:
        item, content = inputs
        e = self.item_embedding(item)
        known = tf.cast(tf.not_equal(item, 0), e.dtype)[:, None]
        if content_only:
            known = tf.zeros_like(known)
        elif training and self.config.item_id_dropout > 0:
            known *= tf.cast(tf.random.uniform(tf.shape(known)) >= self.config.item_id_dropout, e.dtype)
        out = e * known
        if self.config.use_content:
            out += self.content_projection(content) * (1.0 - known)
        out = _l2_normalize(out) if self.config.normalize else out
        if self.config.item_bias:
            out = tf.concat([out, self.bias(item) * known], axis=1)
        return out
