"""The models as serving sees them: raw strings and numbers in, the TFT layer baked in front.

Each class wraps a trained model with `TFTransformOutput.transform_features_layer()`, so the
ONNX file does its own vocabulary lookups and context encoding (TFT feeds only the inputs a model
has; the rest of the transform graph is pruned away) and serving needs no TFT. `signature()`
gives the ONNX input names and shapes; the returned dict's keys are the ONNX output names. The
names and shapes are the registry's file contract (see README, "Models").
"""

from __future__ import annotations

import tensorflow as tf

from models.examples import CATEGORIES_LEN, CONTEXT, HISTORY_LEN, PAD, RECENT_LEN
from models.onnx_recommender import ITEM_TOWER, RANKER, USER_TOWER  # noqa: F401  (one home, TF-free)
from models.preprocess import CONTEXT_WIDTH

EDGE_RANKER = "edge_ranker.onnx"
EDGE_MAX_BYTES = 10 * 1024 * 1024  # the design's edge scorer budget


def _shaped(t: dict, history_len: int = HISTORY_LEN) -> dict:
    """The TFT layer's outputs with their static ranks back (tf2onnx needs them to slice)."""
    widths = {"user": [], "item": [], "history": [history_len], "categories": [CATEGORIES_LEN],
              "context": [CONTEXT_WIDTH]}
    return {k: tf.reshape(v, [-1, *widths[k]]) if k in widths else v for k, v in t.items()}


def _strings(*shape: int | None) -> tf.TensorSpec:
    return tf.TensorSpec([None, *shape], tf.string)


def _floats(*shape: int | None) -> tf.TensorSpec:
    return tf.TensorSpec([None, *shape], tf.float32)


class UserTowerModule(tf.Module):
    """user_id [N], history [N, L] (most recent first, "" padded, any L), context [N, K] → embedding [N, D].

    The history bag is a mean, so L is free: training examples carry 100 items, serving reads more
    (`models.examples.SERVING_HISTORY_LEN`). The TFT layer was traced for rows of `history_len`,
    so the history goes through it in chunks of that width."""

    def __init__(self, tft_layer, user_tower, history_len: int = HISTORY_LEN) -> None:
        super().__init__()
        self.tft_layer = tft_layer
        self.user_tower = user_tower
        self.history_len = history_len

    def signature(self) -> dict[str, tf.TensorSpec]:
        return {"user_id": _strings(), "history": _strings(None), "context": _floats(len(CONTEXT))}

    def _history(self, history: tf.Tensor) -> tf.Tensor:
        n, width = tf.shape(history)[0], tf.shape(history)[1]
        pad = (self.history_len - width % self.history_len) % self.history_len  # floormod(-width) went negative in ONNX
        padding = tf.fill([n, pad], PAD)
        chunks = tf.reshape(tf.concat([history, padding], axis=1), [-1, self.history_len])
        return tf.reshape(_shaped(self.tft_layer({"history": chunks}), self.history_len)["history"], [n, -1])

    def __call__(self, inputs: dict) -> dict:
        t = _shaped(self.tft_layer({"user_id": inputs["user_id"], "context": inputs["context"]}))
        t["history"] = self._history(inputs["history"])
        return {"embedding": self.user_tower([t["user"], t["history"], t["context"]], training=False)}


class ItemTowerModule(tf.Module):
    """item_id [N], content [N, Dc] → embedding [N, D] (unknown ids: content alone)."""

    def __init__(self, tft_layer, item_tower, content_dim: int) -> None:
        super().__init__()
        self.tft_layer = tft_layer
        self.item_tower = item_tower
        self.content_dim = content_dim

    def signature(self) -> dict[str, tf.TensorSpec]:
        return {"item_id": _strings(), "content": _floats(self.content_dim)}

    def __call__(self, inputs: dict) -> dict:
        t = _shaped(self.tft_layer({"item_id": inputs["item_id"]}))
        return {"embedding": self.item_tower([t["item"], inputs["content"]], training=False)}


class RankerModule(tf.Module):
    """user_embedding [N, D], item_id [N], item_categories [N, C], content [N, Dc], context [N, K]
    → probability [N, 1] of a positive interaction."""

    def __init__(self, tft_layer, ranker, embedding_dim: int, content_dim: int) -> None:
        super().__init__()
        self.tft_layer = tft_layer
        self.ranker = ranker
        self.embedding_dim = embedding_dim
        self.content_dim = content_dim

    def signature(self) -> dict[str, tf.TensorSpec]:
        return {"user_embedding": _floats(self.embedding_dim), "item_id": _strings(),
                "item_categories": _strings(CATEGORIES_LEN), "content": _floats(self.content_dim),
                "context": _floats(len(CONTEXT))}

    def __call__(self, inputs: dict) -> dict:
        t = _shaped(self.tft_layer({"item_id": inputs["item_id"], "item_categories": inputs["item_categories"],
                                    "context": inputs["context"]}))
        logits = self.ranker([inputs["user_embedding"], t["item"], t["categories"], inputs["content"], t["context"]],
                             training=False)
        return {"probability": tf.sigmoid(logits)}


class EdgeRankerModule(tf.Module):
    """recent [N, 10] (last interactions, most recent first), item_id [N], origin_score [N, 1]
    → probability [N, 1]."""

    def __init__(self, tft_layer, edge_ranker, history_len: int = HISTORY_LEN, recent_len: int = RECENT_LEN) -> None:
        super().__init__()
        self.tft_layer = tft_layer
        self.edge_ranker = edge_ranker
        self.history_len = history_len
        self.recent_len = recent_len

    def signature(self) -> dict[str, tf.TensorSpec]:
        return {"recent": _strings(self.recent_len), "item_id": _strings(), "origin_score": _floats(1)}

    def __call__(self, inputs: dict) -> dict:
        recent = inputs["recent"]
        padding = tf.fill([tf.shape(recent)[0], self.history_len - self.recent_len], PAD)
        t = _shaped(self.tft_layer({"history": tf.concat([recent, padding], axis=1), "item_id": inputs["item_id"]}),
                    self.history_len)
        logits = self.edge_ranker([t["history"][:, : self.recent_len], t["item"], inputs["origin_score"]],
                                  training=False)
        return {"probability": tf.sigmoid(logits)}


class ContentTowerModule(tf.Module):
    """The content tower under its contract's names (schemas/content_contract.py)."""

    def __init__(self, content_tower, contract) -> None:
        super().__init__()
        self.content_tower = content_tower
        self.shapes = contract.input_shapes()

    def signature(self) -> dict[str, tf.TensorSpec]:
        return {name: _floats(width) for name, width in self.shapes.items()}

    def __call__(self, inputs: dict) -> dict:
        return {"content": self.content_tower(dict(inputs), training=False)}
