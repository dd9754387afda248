"""A registered model as the offline evaluation sees it: retrieval by the towers, then the ranker.

Runs the exported ONNX files only (onnxruntime, no TensorFlow), exactly as serving will: the
content tower gives every catalogue item its content vector, the item tower its embedding, the
user tower embeds the user's training history as of the end of the training data; the top
`retrieve` items by dot product (the user's training items excluded) are re-scored by the ranker
and placed above the rest in the ranker's order.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from models.examples import CATEGORIES_LEN, SERVING_HISTORY_LEN, categories_row, context_features, history_matrix
from schemas.content_contract import MODEL_FILE, ContentContract, catalog_inputs
from schemas.events import Event
from stores.deployment import as_stored

USER_TOWER = "user_tower.onnx"
ITEM_TOWER = "item_tower.onnx"
RANKER = "ranker.onnx"
RETRIEVE = 200
_BATCH = 4096
_USER_BATCH = 256  # a batch of user rows is as wide as its longest history


def _session(path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def _strings(values) -> np.ndarray:
    return np.asarray(values, dtype=object)


class OnnxRecommender:
    """Implements the evaluation's Recommender protocol (`fit`, `score`) over ONNX files."""

    def __init__(self, files: Mapping[str, str], contract: ContentContract, catalog: Mapping[str, Event] | None = None,
                 retrieve: int = RETRIEVE, use_ranker: bool = True) -> None:
        self.sessions = {name: _session(path) for name, path in files.items()
                         if name in (MODEL_FILE, USER_TOWER, ITEM_TOWER, RANKER)}
        self.contract = contract
        self.catalog = dict(catalog or {})  # default: the training data's own item events
        self.retrieve = retrieve
        self.use_ranker = use_ranker

    @classmethod
    def from_version(cls, version, catalog: Mapping[str, Event] | None = None, **kwargs) -> OnnxRecommender:
        """From a verified registry version (`models.registry.Version`) on a local root."""
        from models import registry

        registry.verify(version)
        files = {name: version.file_path(name) for name in version.files}
        return cls(files, ContentContract.from_metadata(version.metadata), catalog, **kwargs)

    def _run(self, name: str, feed: dict[str, np.ndarray], output: str) -> np.ndarray:
        n = len(next(iter(feed.values())))
        session = self.sessions[name]
        parts = [session.run([output], {k: v[s : s + _BATCH] for k, v in feed.items()})[0]
                 for s in range(0, n, _BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0,), np.float32)

    def fit(self, train) -> None:
        """Embeds every catalogue item; remembers the training data for the users' histories."""
        self.train = train
        ids = list(train.item_ids)
        catalog = self.catalog or dict(getattr(train, "catalog", {}) or {})
        self.content = self._run(MODEL_FILE, catalog_inputs(ids, catalog, self.contract), "content")
        self.item_vecs = self._run(ITEM_TOWER, {"item_id": _strings(ids), "content": self.content}, "embedding")
        self.item_categories = _strings([categories_row(c) for c in train.item_categories]).reshape(
            len(ids), CATEGORIES_LEN)
        self.now = int(train.ts.max()) if len(train.ts) else 0
        self.activity = np.bincount(train.users, minlength=train.n_users)

    def user_vectors(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(user embeddings, raw context) for user indices, as of the end of the training data."""
        context = np.array([context_features(int(self.activity[u]), self.now) for u in users], np.float32)
        parts = []
        for lo in range(0, len(users), _USER_BATCH):
            batch = users[lo : lo + _USER_BATCH]
            history = history_matrix(self.train.histories(batch, SERVING_HISTORY_LEN))
            feed = {"user_id": _strings([self.train.user_ids[u] for u in batch]),
                    "history": _strings(history).reshape(len(batch), len(history[0])),
                    "context": context[lo : lo + _USER_BATCH]}
            parts.append(self._run(USER_TOWER, feed, "embedding"))
        return as_stored(np.concatenate(parts)), context  # what deploy stores and serving reads

    def score(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users)
        u, context = self.user_vectors(users)
        scores = u @ self.item_vecs.T
        if not self.use_ranker or RANKER not in self.sessions:
            return scores
        masked = scores.copy()
        masked[self.train.matrix[users].nonzero()] = -np.inf
        k = min(self.retrieve, masked.shape[1])
        top = np.argpartition(-masked, k - 1, axis=1)[:, :k]
        rows = np.repeat(np.arange(len(users)), k)
        cols = top.ravel()
        feed = {"user_embedding": u[rows], "item_id": _strings(np.asarray(self.train.item_ids, dtype=object)[cols]),
                "item_categories": self.item_categories[cols], "content": self.content[cols],
                "context": context[rows]}
        p = self._run(RANKER, feed, "probability")[:, 0]
        # the rest keep their retrieval order below every retrieved item (probabilities are in [0, 1])
        out = scores - scores.max(axis=1, keepdims=True) - 1.0
        out[rows, cols] = p
        return out


def load(root: str, version: str, **kwargs) -> OnnxRecommender:
    """The registered `version` under `root`, checksums verified (what `pulserank evaluate` ranks)."""
    from models import registry

    return OnnxRecommender.from_version(registry.load_version(root, version), **kwargs)
