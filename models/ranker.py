"""The deep ranker and the small edge ranker.

The ranker is the design's contextual model f(x, θ): a DCN (cross layers beside a deep MLP) over
the user embedding, the item tower's vector, their product, the item's categories and the
context, plus the two-tower dot product and an item bias, predicting the probability of a
positive interaction. Serving uses that probability as the Thompson-sampling prior. The item
tower inside it is frozen: the ranker refines retrieval, it does not move the embedding space
the vector store was filled from.

The edge ranker re-ranks a cached candidate list at the edge with the freshest context (the last
10 interactions) beside the origin's score; it is small (two 16-d item tables and a tiny MLP) so
that it ships to edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf
import tf_keras as keras

from models.towers import ItemTower, masked_mean


@dataclass(frozen=True)
class RankerConfig:
    cross_layers: int = 2
    deep: tuple[int, ...] = (128, 64)
    category_dim: int = 16
    l2: float = 1e-6


class Ranker(keras.Model):
    def __init__(self, item_tower: ItemTower, n_items: int, n_categories: int, config: RankerConfig,
                 temperature: float, **kwargs) -> None:
        super().__init__(**kwargs)
        reg = keras.regularizers.l2(config.l2)
        self.item_tower = item_tower
        self.item_tower.trainable = False
        self.category_embedding = keras.layers.Embedding(n_categories + 1, config.category_dim,
                                                         embeddings_regularizer=reg, name="categories")
        self.item_bias = keras.layers.Embedding(n_items + 1, 1, embeddings_initializer="zeros",
                                                embeddings_regularizer=reg, name="item_bias")
        self.config = config
        self.cross = []
        self.deep = [keras.layers.Dense(width, activation="relu", kernel_regularizer=reg) for width in config.deep]
        self.head = keras.layers.Dense(1, name="head")
        self.dot_scale = tf.Variable(1.0 / temperature, trainable=True, name="dot_scale")
        self.bias = tf.Variable(0.0, trainable=True, name="bias")
        # how much the learned correction counts at inference (chosen on held-out pairs: models/blend.py)
        self.residual_weight = tf.Variable(1.0, trainable=False, name="residual_weight")

    def build(self, input_shape) -> None:
        user_dim = input_shape[0][-1]
        context_dim = input_shape[4][-1]
        width = 3 * user_dim + self.config.category_dim + context_dim
        self.cross = [keras.layers.Dense(width, kernel_regularizer=keras.regularizers.l2(self.config.l2),
                                         name=f"cross_{i}") for i in range(self.config.cross_layers)]
        super().build(input_shape)

    def call(self, inputs, training: bool = False) -> tf.Tensor:
        """Logits [N, 1] for (user embedding, item index, category indices, content, context)."""
        base, correction = self.parts(inputs, training=training)
        weight = 1.0 if training else self.residual_weight
        return base + weight * correction

    def parts(self, inputs, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """(calibrated dot product, learned correction), each [N, 1]."""
        user, item, categories, content, context = inputs
        v = self.item_tower([item, content], training=False)
        categories_vec = masked_mean(self.category_embedding(categories), categories)
        x0 = tf.concat([user, v, user * v, categories_vec, context], axis=1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        h = x0
        for layer in self.deep:
            h = layer(h)
        dot = tf.reduce_sum(user * v, axis=1, keepdims=True)
        return self.dot_scale * dot + self.bias, self.head(tf.concat([x, h], axis=1)) + self.item_bias(item)


def logit(p: tf.Tensor) -> tf.Tensor:
    p = tf.clip_by_value(p, 1e-6, 1 - 1e-6)
    return tf.math.log(p) - tf.math.log(1.0 - p)  # not log1p: tf2onnx has no Log1p


class EdgeRanker(keras.Model):
    """logit = a·logit(origin score) + f(similarity of the item to the last interactions)."""

    def __init__(self, n_items: int, dim: int = 16, **kwargs) -> None:
        super().__init__(**kwargs)
        self.recent_embedding = keras.layers.Embedding(n_items + 1, dim, name="recent")
        self.item_embedding = keras.layers.Embedding(n_items + 1, dim, name="item")
        self.hidden = keras.layers.Dense(16, activation="relu", name="hidden")
        self.head = keras.layers.Dense(1, name="head")
        self.origin_weight = tf.Variable(1.0, trainable=True, name="origin_weight")

    def call(self, inputs, training: bool = False) -> tf.Tensor:
        recent, item, origin_score = inputs
        r = masked_mean(self.recent_embedding(recent), recent)
        e = self.item_embedding(item)
        lo = logit(origin_score)
        sim = tf.reduce_sum(r * e, axis=1, keepdims=True)
        return self.origin_weight * lo + self.head(self.hidden(tf.concat([lo, sim, r * e], axis=1)))
