"""The edge's re-ranker: the registry's `edge_ranker.onnx`, followed through the alias like the origin's models.

An edge caches the origin's ranked pool (item, origin ranker probability) for a while; the edge
ranker re-scores that pool with what the origin could not know when it answered — the user's
last 10 interactions, most recent first — in one small ONNX call (the design's budget: < 15 ms
for 100 items; `benchmarks/edge_scoring.py` measures it).

Hot swap as at the origin (`serving.personalize.Personalizer.refresh`): `ActiveModel` follows
the alias and verifies every file; the new session is built before it replaces the old one in
a single assignment, so a request scores with the old or the new version, never a mix. A version
whose edge ranker does not load is refused once (logged) and the last good session keeps
scoring. No `ready` check: deploy readiness is about Redis and the vector store, which the edge
never reads.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from models.registry import PRODUCTION
from serving.active_model import ActiveModel, ModelState

log = logging.getLogger(__name__)

EDGE_RANKER = "edge_ranker.onnx"  # models.exported.EDGE_RANKER (serving imports no TensorFlow)
RECENT_LEN = 10  # the edge ranker's `recent` width when the version's feature_spec does not say


class NoEdgeModelError(RuntimeError):
    """No edge ranker loaded yet: the alias was never promoted, or no version's file loaded."""


@dataclass(frozen=True)
class _Loaded:
    version: str
    session: ort.InferenceSession
    recent_len: int


def _session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1  # an edge serves many requests at once; one thread each keeps p99 flat
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def _load(state: ModelState) -> _Loaded:
    if EDGE_RANKER not in state.files:
        raise FileNotFoundError(f"version {state.version} has no {EDGE_RANKER}")
    session = _session(state.files[EDGE_RANKER])
    names = {a.name: a for a in session.get_inputs()}
    missing = {"recent", "item_id", "origin_score"} - set(names)
    if missing:
        raise ValueError(f"{EDGE_RANKER} of {state.version}: inputs {sorted(missing)} missing (has {sorted(names)})")
    width = names["recent"].shape[1] if len(names["recent"].shape) == 2 else None
    recent_len = width if isinstance(width, int) else int(state.feature_spec.get("recent_len", RECENT_LEN))
    return _Loaded(state.version, session, recent_len)


class EdgeScorer:
    """The registry's edge_ranker.onnx, hot-swapped like the origin's models.

    `refresh()` is blocking (registry reads, sha256 checks, session build): the edge server runs
    it in a thread every `poll_secs`, never on the request path.
    """

    def __init__(self, registry_root: str, alias: str = PRODUCTION, poll_secs: float = 5.0,
                 memo_size: int = 4096) -> None:
        self.poll_secs = poll_secs
        self._loaded: _Loaded | None = None
        # A cache hit re-scores the same list with the same recent items until the user acts again:
        # the last `memo_size` answers are kept, keyed by everything the output depends on.
        self.memo_size = memo_size
        self._memo: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._refused: set[str] = set()
        self._lock = threading.Lock()
        self.active = ActiveModel(registry_root, alias, poll_secs=poll_secs)
        self.refresh()

    @property
    def version(self) -> str | None:
        """The version whose edge ranker is scoring (None before one loaded)."""
        loaded = self._loaded
        return loaded.version if loaded else None

    def refresh(self) -> bool:
        """Follows the alias; True when a new session replaced the old one. Never raises for a bad
        version: it is refused (logged once) and the last good session keeps scoring."""
        with self._lock:
            self.active.refresh()
            state = self.active.state
            if state is None or state.version == self.version or state.version in self._refused:
                return False
            try:
                loaded = _load(state)
            except Exception as exc:  # onnxruntime refuses a corrupt file; an old version may have none
                self._refused.add(state.version)
                log.warning("edge scorer: refusing %s (%s); still scoring with %s", state.version, exc, self.version)
                return False
            previous, self._loaded = self.version, loaded
            log.info("edge scorer: %s → %s", previous, loaded.version)
            return True

    def score(self, recent: list[str], item_ids: list[str], origin_scores: np.ndarray) -> np.ndarray:
        """The edge ranker's probability per item, float32 [n], in one batch.

        `recent`: the user's last interactions, most recent first (the first `recent_len`, 10, are
        read; fewer are padded with ""). `origin_scores`: the origin ranker's probability per item.
        """
        loaded = self._loaded  # one read: a concurrent swap cannot mix versions within a call
        if loaded is None:
            raise NoEdgeModelError("edge scorer: no edge ranker loaded (is the registry's alias promoted?)")
        ids = list(item_ids)
        if not all(isinstance(i, str) for i in ids):
            raise ValueError("item_ids: expected strings")
        if isinstance(recent, str) or not all(isinstance(r, str) for r in recent):
            raise ValueError("recent: expected a list of item id strings")
        try:
            origin = np.asarray(origin_scores, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError("origin_scores: expected numbers") from None
        if origin.ndim != 1 or origin.size != len(ids):
            raise ValueError(f"origin_scores: expected {len(ids)} values (one per item), got shape {origin.shape}")
        if not np.all((origin >= 0) & (origin <= 1)):  # also refuses NaN
            raise ValueError("origin_scores: expected the origin ranker's probabilities, in [0, 1]")
        n = len(ids)
        if n == 0:
            return np.zeros(0, np.float32)
        row = list(recent[: loaded.recent_len])
        row += [""] * (loaded.recent_len - len(row))
        key = (loaded.version, tuple(row), tuple(ids), origin.tobytes())
        memo = self._memo.get(key)
        if memo is not None:
            self._memo.move_to_end(key)
            return memo
        feed = {"recent": np.array([row] * n, dtype=object),  # str, never bytes: bytes map to OOV
                "item_id": np.array(ids, dtype=object),
                "origin_score": origin.reshape(n, 1)}
        out = loaded.session.run(["probability"], feed)[0][:, 0]
        out.flags.writeable = False  # shared by every later call with the same inputs
        if self.memo_size:
            self._memo[key] = out
            while len(self._memo) > self.memo_size:
                self._memo.popitem(last=False)
        return out
