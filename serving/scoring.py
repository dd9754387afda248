"""The active model version's ONNX sessions as serving runs them: user tower and ranker.

Serving needs the user tower at request time only when the batch embedding is missing or older
than the user's latest positives (the design's fresh path: re-embedding the history costs about
a millisecond, so a new interaction moves the user's vector at once, in the model's own space).
The raw context columns are built exactly as training built them (activity, hour, weekday).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from schemas.features import SERVING_HISTORY_LEN
from serving.active_model import ModelState

USER_TOWER = "user_tower.onnx"
RANKER = "ranker.onnx"


def _session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1  # requests run concurrently; one thread each keeps p99 flat
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


class Scorer:
    """Sessions of one verified version (built when the version is switched to, never per request)."""

    def __init__(self, state: ModelState) -> None:
        self.version = state.version
        spec = state.feature_spec
        self.categories_len = int(spec.get("categories_len", 8))
        self.history_len = int(spec.get("serving_history_len", SERVING_HISTORY_LEN))
        self.user = _session(state.files[USER_TOWER])
        self.ranker = _session(state.files[RANKER])
        self.content_dim = int(spec.get("content_dim", 0))
        # user_embedding [N, D + 1], found by name: the exported input order is not a contract
        dim = next(a.shape[1] for a in self.ranker.get_inputs() if a.name == "user_embedding")
        self.embedding_dim = dim if isinstance(dim, int) else -1
        width = next((a.shape[1] for a in self.user.get_inputs() if a.name == "history"), None)
        self.history_width = width if isinstance(width, int) else None

    def embed_user(self, user_id: str, history: list[str], context: list[float]) -> np.ndarray:
        """The user tower on the history (newest first) as of now: the embedding [D + 1]."""
        h = history[: self.history_width or self.history_len]
        width = self.history_width or max(1, len(h))
        row = np.array([h + [""] * (width - len(h))], dtype=object)
        out = self.user.run(["embedding"], {"user_id": np.array([user_id], dtype=object), "history": row,
                                            "context": np.array([context], np.float32)})[0]
        return out[0]

    def rank(self, user_embedding: np.ndarray, item_ids: list[str], categories: list[tuple[str, ...]],
             content: np.ndarray, context: list[float]) -> np.ndarray:
        """The ranker's probability per item, one batch."""
        n = len(item_ids)
        if n == 0:
            return np.zeros(0, np.float32)
        cats = np.array([list(c[: self.categories_len]) + [""] * (self.categories_len - len(c[: self.categories_len]))
                         for c in categories], dtype=object).reshape(n, self.categories_len)
        feed = {"user_embedding": np.repeat(user_embedding[None, :].astype(np.float32), n, axis=0),
                "item_id": np.array(item_ids, dtype=object), "item_categories": cats,
                "content": np.ascontiguousarray(content, dtype=np.float32),
                "context": np.repeat(np.array([context], np.float32), n, axis=0)}
        return self.ranker.run(["probability"], feed)[0][:, 0]
