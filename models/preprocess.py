"""The tensorflow-transform step: vocabularies and scaling computed over the whole event log.

`preprocessing_fn` maps raw examples (`models/examples.py`) to model inputs: users, items and
categories become vocabulary indices (0 = padding or unknown, so a new item or user has no id
embedding and falls back to content and context), the context is scaled and encoded. The same
function, as the TFT layer, sits inside every exported model, so serving feeds raw strings and
numbers and needs no TFT. Vocabulary lookups use `default_value=-1` shifted by one (no OOV
buckets): `StringToHashBucketFast` does not convert to ONNX (FIELD-NOTES).
"""

from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_transform as tft

from models.examples import CATEGORIES_LEN, CONTEXT, HISTORY_LEN, PAD

USERS = "users"
ITEMS = "items"
CATEGORIES = "categories"
CONTEXT_WIDTH = 5  # scaled log-activity, sin/cos of hour, sin/cos of weekday


def raw_feature_spec(history_len: int = HISTORY_LEN, categories_len: int = CATEGORIES_LEN) -> dict:
    return {
        "user_id": tf.io.FixedLenFeature([], tf.string),
        "history": tf.io.FixedLenFeature([history_len], tf.string),
        "context": tf.io.FixedLenFeature([len(CONTEXT)], tf.float32),
        "item_id": tf.io.FixedLenFeature([], tf.string),
        "item_categories": tf.io.FixedLenFeature([categories_len], tf.string),
        "label": tf.io.FixedLenFeature([], tf.float32),
    }


def _present(values: tf.Tensor) -> tf.Tensor:
    flat = tf.reshape(values, [-1])
    return tf.boolean_mask(flat, tf.not_equal(flat, PAD))


def _index(values: tf.Tensor, vocabulary) -> tf.Tensor:
    """Vocabulary index + 1; padding and unknown values map to 0."""
    return tft.apply_vocabulary(values, vocabulary, default_value=-1) + 1


def _log1p(x: tf.Tensor) -> tf.Tensor:
    """log(1 + max(x, 0)); spelled out because tf2onnx has no Log1p."""
    return tf.math.log(1.0 + tf.maximum(x, 0.0))


def encode_context(context: tf.Tensor, log_activity_mean, log_activity_std) -> tf.Tensor:
    """[activity, hour, weekday] → [z(log1p activity), sin/cos hour, sin/cos weekday]."""
    activity, hour, weekday = tf.unstack(tf.reshape(context, [-1, len(CONTEXT)]), axis=1)
    z = (_log1p(activity) - log_activity_mean) / log_activity_std
    h = hour * (2 * math.pi / 24)
    d = weekday * (2 * math.pi / 7)
    return tf.stack([z, tf.sin(h), tf.cos(h), tf.sin(d), tf.cos(d)], axis=1)


def preprocessing_fn(inputs: dict) -> dict:
    items = tft.vocabulary(tf.concat([_present(inputs["item_id"]), _present(inputs["history"])], 0),
                           vocab_filename=ITEMS)
    users = tft.vocabulary(_present(inputs["user_id"]), vocab_filename=USERS)
    categories = tft.vocabulary(_present(inputs["item_categories"]), vocab_filename=CATEGORIES)
    log_activity = _log1p(tf.unstack(tf.reshape(inputs["context"], [-1, len(CONTEXT)]), axis=1)[0])
    mean = tft.mean(log_activity)
    std = tf.maximum(tf.sqrt(tft.var(log_activity)), 1e-6)
    return {
        "user": _index(inputs["user_id"], users),
        "history": _index(inputs["history"], items),
        "item": _index(inputs["item_id"], items),
        "categories": _index(inputs["item_categories"], categories),
        "context": encode_context(inputs["context"], mean, std),
        "label": inputs["label"],
    }
