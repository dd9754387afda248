"""The content tower: one vector per item from its text, price and precomputed modality vectors.

Inputs follow `schemas/content_contract` (a dict of `keras.Input` named as the contract), output
`content` float32[N, output_dim], L2-normalised. Per-modality encoders turn each input group into
a token of width `width` — the *attributes* token (a dense encoder trained here over the signed
hashed bag of title/description tokens and categories, plus log price; always present) and one
token per precomputed vector (text, image, audio, video) — then cross-modal attention lets the
tokens read each other, a learned gate pools them (softmax over the present tokens) and a
projection gives the vector.

A missing modality is *masked*, not zero-filled: its input is replaced by zeros before it is
projected (so its values cannot reach the output, not even as NaN/inf), no token attends to it
and its pooling weight is exactly 0, in TensorFlow and in the exported ONNX alike. The pooling
weights (`modality_weights_model`) say how much each modality contributed; training reports
their means per modality (`mean_modality_weights`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf
import tf_keras as keras

from schemas import content_contract as cc

DEFAULT_OUTPUT_DIM = 512  # the design's content vector size
MIN_OUTPUT_DIM, MAX_OUTPUT_DIM = 64, 1024
ATTRIBUTES = "attributes"  # the always-present token: hashed text + categories + price
TOKENS = (ATTRIBUTES, *cc.MODALITIES)  # order of the tokens and of the pooling weights
WEIGHTS_LAYER = "modality_weights"
_NEG = -1e9  # softmax logit of an absent token: exp underflows to exactly 0 in float32


@keras.saving.register_keras_serializable(package="pulserank")
class PresentOnly(keras.layers.Layer):
    """`x` in the rows where `mask` > 0, else zeros: what a missing modality's values become.

    A gather from [x; 0], not `tf.where` or `x * mask`: tf2onnx lowers a float Select to
    cast(c)·x + cast(¬c)·y, and 0 · NaN (or inf) is NaN, so a NaN or inf in a missing vector
    would still reach the ONNX output. A gather never computes with the values it skips.
    """

    def call(self, inputs):
        x, mask = inputs
        n = tf.shape(x)[0]
        rows = tf.where(mask[:, 0] > 0, tf.range(n), tf.fill([n], n))  # absent rows → the zero row
        return tf.gather(tf.concat([x, tf.zeros([1, tf.shape(x)[1]], x.dtype)], axis=0), rows)


@keras.saving.register_keras_serializable(package="pulserank")
class ModalityDropout(keras.layers.Layer):
    """In training only, marks a present modality missing with probability `rate` (per item), so
    the tower learns to do without any one of them, as it must for items that lack it."""

    def __init__(self, rate: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rate = rate

    def call(self, mask, training=None):
        if not self.rate or not training:
            return mask
        return mask * tf.cast(tf.random.uniform(tf.shape(mask)) >= self.rate, mask.dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate}


@keras.saving.register_keras_serializable(package="pulserank")
class Presence(keras.layers.Layer):
    """[N, T] float presence of the tokens: 1 for the attributes token, then the modality masks."""

    def call(self, inputs):
        price, *masks = inputs
        return tf.concat([tf.ones_like(price), *[tf.cast(m > 0, price.dtype) for m in masks]], axis=1)


@keras.saving.register_keras_serializable(package="pulserank")
class AttentionMask(keras.layers.Layer):
    """[N, T, T] bool: query i may attend to key j when both are present; an absent token attends
    only to itself (so no softmax row is empty) and its output is discarded by the pooling."""

    def call(self, present):
        both = present[:, :, None] * present[:, None, :]
        eye = tf.eye(tf.shape(present)[1], dtype=present.dtype)[None]
        return tf.maximum(both, eye) > 0


@keras.saving.register_keras_serializable(package="pulserank")
class StackTokens(keras.layers.Layer):
    def call(self, tokens):
        return tf.stack(tokens, axis=1)


@keras.saving.register_keras_serializable(package="pulserank")
class GateWeights(keras.layers.Layer):
    """Pooling weights [N, T]: softmax over the present tokens of (gate(h_t) + per-token bias)."""

    def build(self, input_shape):
        tokens_shape, _ = input_shape
        self.gate = keras.layers.Dense(1, kernel_initializer="zeros", name="gate")
        self.gate.build(tokens_shape)
        self.token_bias = self.add_weight(name="token_bias", shape=(tokens_shape[1],), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        tokens, present = inputs
        logits = tf.squeeze(self.gate(tokens), axis=-1) + self.token_bias
        on = present > 0
        weights = tf.nn.softmax(tf.where(on, logits, tf.fill(tf.shape(logits), _NEG)), axis=-1)
        return tf.where(on, weights, tf.zeros_like(weights))


@keras.saving.register_keras_serializable(package="pulserank")
class WeightedPool(keras.layers.Layer):
    def call(self, inputs):
        tokens, weights = inputs
        return tf.reduce_sum(tokens * weights[:, :, None], axis=1)


@keras.saving.register_keras_serializable(package="pulserank")
class L2Normalize(keras.layers.Layer):
    def call(self, x):
        return x * tf.math.rsqrt(tf.maximum(tf.reduce_sum(tf.square(x), axis=-1, keepdims=True), 1e-12))


def contract_inputs(contract: cc.ContentContract) -> dict[str, keras.Input]:
    """One `keras.Input` per contract input, named as the contract names it."""
    return {name: keras.Input(shape=(width,), dtype=tf.float32, name=name)
            for name, width in contract.input_shapes().items()}


def build_content_tower(contract: cc.ContentContract, *, width: int = 128, heads: int = 4, dropout: float = 0.0,
                        modality_dropout: float = 0.0, name: str = "content_tower") -> keras.Model:
    """The fusion model: contract inputs (dict) → `content` float32[N, contract.output_dim], unit norm.

    `width` is the token width (a multiple of `heads`); `dropout` applies to attention and the
    feed-forward block, `modality_dropout` hides each present modality of a training item with
    that probability (training only; it helped held-out retrieval on the synthetic items).
    """
    if not MIN_OUTPUT_DIM <= contract.output_dim <= MAX_OUTPUT_DIM:
        raise ValueError(f"output_dim must be within {MIN_OUTPUT_DIM}..{MAX_OUTPUT_DIM}, got {contract.output_dim}")
    if width <= 0 or heads <= 0 or width % heads:
        raise ValueError(f"width must be a positive multiple of heads, got width={width}, heads={heads}")
    for arg, rate in (("dropout", dropout), ("modality_dropout", modality_dropout)):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{arg} must be within [0, 1), got {rate}")
    inputs = contract_inputs(contract)
    layers = keras.layers

    # Per-modality encoders → tokens of width `width`.
    text = layers.Dense(width, activation="relu", name="hashed_encoder")(inputs[cc.HASHED])
    attributes = layers.Concatenate(name="attributes_concat")([text, inputs[cc.PRICE]])
    tokens = [layers.Dense(width, name=f"{ATTRIBUTES}_projection")(attributes)]
    masks = [ModalityDropout(modality_dropout, name=f"{m}_dropout")(inputs[cc.mask_input(m)]) for m in cc.MODALITIES]
    for m, mask in zip(cc.MODALITIES, masks, strict=True):
        vec = PresentOnly(name=f"{m}_present")([inputs[cc.vec_input(m)], mask])
        tokens.append(layers.Dense(width, name=f"{m}_projection")(vec))
    present = Presence(name="presence")([inputs[cc.PRICE], *masks])
    x = layers.LayerNormalization(name="token_norm")(StackTokens(name="tokens")(tokens))

    # Cross-modal attention (one transformer block) over the present tokens only.
    attention = layers.MultiHeadAttention(heads, width // heads, dropout=dropout, name="cross_modal_attention")
    x = layers.LayerNormalization(name="attention_norm")(
        x + attention(x, x, attention_mask=AttentionMask(name="attention_mask")(present)))
    ffn = layers.Dense(width, name="ffn_out")(layers.Dense(2 * width, activation="relu", name="ffn_in")(x))
    if dropout:
        ffn = layers.Dropout(dropout, name="ffn_dropout")(ffn)
    x = layers.LayerNormalization(name="ffn_norm")(x + ffn)

    # Weighted pooling → projection → unit vector.
    weights = GateWeights(name=WEIGHTS_LAYER)([x, present])
    pooled = WeightedPool(name="pool")([x, weights])
    content = L2Normalize(name=cc.OUTPUT)(layers.Dense(contract.output_dim, name="output_projection")(pooled))
    return keras.Model(inputs, content, name=name)


def modality_weights_model(tower: keras.Model) -> keras.Model:
    """The tower's pooling weights: same inputs → float32[N, len(TOKENS)] (0 for absent tokens)."""
    return keras.Model(tower.inputs, tower.get_layer(WEIGHTS_LAYER).output, name=f"{tower.name}_weights")


def mean_modality_weights(tower: keras.Model, feed: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Mean pooling weight of each token over the items where it is present (what training reports)."""
    weights = modality_weights_model(tower)({k: tf.constant(v) for k, v in feed.items()}).numpy()
    n = len(weights)
    present = np.column_stack([np.ones(n), *(np.asarray(feed[cc.mask_input(m)])[:, 0] > 0 for m in cc.MODALITIES)])
    counts = present.sum(axis=0)
    sums = (weights * present).sum(axis=0)
    return {t: float(s / c) if c else float("nan") for t, s, c in zip(TOKENS, sums, counts, strict=True)}


def content_signature(contract: cc.ContentContract) -> dict[str, tf.TensorSpec]:
    """The contract's inputs as an export signature (dynamic batch)."""
    return {name: tf.TensorSpec([None, width], tf.float32, name=name)
            for name, width in contract.input_shapes().items()}


def serving_model(tower: keras.Model) -> keras.Model:
    """The tower with its output named `content` (a dict), as `models.export.export_onnx` wants it."""
    return keras.Model(tower.inputs, {cc.OUTPUT: tower.output}, name=f"{tower.name}_serving")
