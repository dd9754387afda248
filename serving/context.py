"""A user's serving context: what Personalize knows about the user at request time.

`stores/serving_reads.fetch_context` fills it in one Redis round trip (the batch embedding of the
active model version, the seen set, the last interactions, the session, the emotion summary, the
segment's trending list); the content-space preference vector is then one vector-store fetch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from schemas.events import EventType
from stores.feature_store import decode_decayed
from transforms.summaries import recent as recent_summary
from transforms.summaries.emotion import EmotionSummary

POSITIVE = frozenset(t.value for t in (EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE,
                                       EventType.RATING, EventType.REVIEW))


@dataclass
class UserContext:
    user_id: str
    segment: str
    now_ms: int
    embedding: np.ndarray | None  # the model version's batch embedding (None: a cold user)
    embedding_as_of: int | None
    seen: dict[str, int]  # item → last positive time (deploy's seen set)
    recent: list[dict]  # the last distinct (type, item) interactions, newest first: {ts, type, item_id}
    session: dict | None
    mood: tuple[str, float] | None  # the dominant recent emotion and its strength
    trending: list[tuple[str, float]]  # (item, decayed count) of the segment, best first
    extra: dict = field(default_factory=dict)

    @property
    def is_cold(self) -> bool:
        return self.embedding is None and not self.seen and not self.recent

    def positives_since_deploy(self) -> list[str]:
        """Positive items of the last interactions newer than the batch embedding, newest first."""
        return self.positives_since((self.embedding_as_of or 0) + 1)

    def positives_since(self, since_ms: int | None = None) -> list[str]:
        """Distinct positive items of the last interactions at or after `since_ms`, newest first."""
        return list(dict.fromkeys(r["item_id"] for r in self.recent if r.get("item_id") and r["type"] in POSITIVE
                                  and (since_ms is None or r["ts"] >= since_ms)))

    def seen_items(self) -> set[str]:
        return set(self.seen) | {r["item_id"] for r in self.recent if r.get("item_id") and r["type"] in POSITIVE}

    def history(self, n: int) -> list[str]:
        """Distinct positive items, newest first: the last interactions, then the seen set."""
        out = self.positives_since()
        for item, _ in sorted(self.seen.items(), key=lambda kv: -kv[1]):
            if len(out) >= n:
                break
            if item not in out:
                out.append(item)
        return out[:n]

    def recent_items(self) -> list[str]:
        return self.history(recent_summary.K)

    @property
    def embedding_is_fresh(self) -> bool:
        """The batch embedding holds unless the user had positives after it (then re-embed)."""
        return self.embedding is not None and not self.positives_since_deploy()

    @property
    def activity(self) -> int:
        """Positives before now: the model's `activity` context feature."""
        return len(self.seen_items())


def mood_of(raw: dict) -> tuple[str, float] | None:
    """("upbeat" | "low", strength 0..1) from the user's decayed review valence (else rating signal)."""
    value = raw.get(b"v") or raw.get("v")
    if value is None:
        return None
    summary = EmotionSummary.from_decayed(decode_decayed(value))
    valence = summary.valence()
    signal = valence if valence is not None else summary.rating_signal()
    if signal is None or abs(signal) < 0.05:
        return None
    return ("upbeat" if signal > 0 else "low", min(1.0, abs(float(signal))))
