"""What each event contributes to each feature: plain functions, no Beam.

Each function maps one (event, item info) to `(redis key, Partial)` pairs; the Beam
transforms combine partials per key and the sink merges them. Keeping this math here makes it
the single definition that batch, streaming, live mode and the test reference all use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from schemas import keys
from schemas.content_contract import hashed_features
from schemas.events import Event, EventType
from schemas.features import EMBEDDING_WEIGHTS, LIKED_RATING, LIKED_TYPES, FeatureConfig
from transforms.summaries import decay, recent, sessions, windows
from transforms.summaries.digest import Digest
from transforms.summaries.emotion import EmotionSummary
from transforms.summaries.partial import Partial

T = EventType

# Which consumers each event type feeds; every type has at least one (tested).
CONSUMERS: dict[EventType, tuple[str, ...]] = {
    T.VIEW: ("context", "embeddings", "trending"),
    T.CLICK: ("context", "embeddings", "bandit", "trending"),
    T.ADD_TO_CART: ("context", "embeddings", "trending"),
    T.PURCHASE: ("context", "embeddings", "trending"),
    T.RATING: ("context", "emotion", "embeddings"),
    T.REVIEW: ("context", "emotion", "embeddings"),
    T.IMPRESSION: ("bandit",),
    T.SKIP: ("context", "embeddings", "bandit"),
    T.ITEM: ("catalog",),
}
TRENDING_TYPES = frozenset({T.VIEW, T.CLICK, T.ADD_TO_CART, T.PURCHASE})


@dataclass(frozen=True, slots=True)
class ItemInfo:
    """What lookups return about an item: its categories and content vector (if known)."""

    categories: tuple[str, ...] = ()
    vector: np.ndarray | None = field(default=None, compare=False)


Keyed = tuple[str, Partial]


def context_observations(event: Event, info: ItemInfo) -> list[Keyed]:
    """Windowed activity by type and category, the last interactions, the session."""
    if event.user_id is None:
        return []
    d = Digest.of(event.event_id)
    labels = [f"t:{event.type.value}", *(f"c:{c}" for c in info.categories)]
    session_id = event.context.extra.get("session_id")
    return [
        (keys.user_windows(event.user_id), Partial("counts", d, windows.fields_for(event.ts, labels))),
        (keys.user_recent(event.user_id),
         Partial("recent", d, ((event.ts, recent.member(event.type.value, event.item_id)),))),
        (keys.user_sessions(event.user_id),
         Partial("sessions", d, sessions.observe(event.ts, event.event_id, str(session_id) if session_id else None,
                                                 event.context.surface, event.context.device))),
    ]


def emotion_observations(event: Event, valence: float | None, config: FeatureConfig) -> list[Keyed]:
    """Per item and per user: decayed review valence (and its variance) and rating signal."""
    if valence is None and event.value is None:
        return []
    d = Digest.of(event.event_id)
    tau = config.emotion_tau_ms
    obs = EmotionSummary.from_observation(event.ts, valence, event.value, tau)
    summary = {"v": obs.to_decayed()}
    out = [(keys.item_emotion(event.item_id), Partial("decayed", d, summary, tau))]
    if event.user_id is not None:
        out.append((keys.user_emotion(event.user_id), Partial("decayed", d, summary, tau)))
    return out


def is_liked(event: Event) -> bool:
    if event.type.value in LIKED_TYPES:
        return True
    return event.type in (T.RATING, T.REVIEW) and event.value is not None and event.value >= LIKED_RATING


def embedding_observations(event: Event, info: ItemInfo, model: str, config: FeatureConfig) -> list[Keyed]:
    """Collaborative sums [Σ|w|, Σw·v] over interacted items, and the liked-items preference."""
    if event.user_id is None or info.vector is None:
        return []
    w = EMBEDDING_WEIGHTS.get(event.type.value, 0.0)
    if w == 0.0:
        return []
    tau = config.embedding_tau_ms
    one_vec = np.empty(len(info.vector) + 1, dtype=np.float64)  # [1, v]: cheaper than concatenating
    one_vec[0] = 1.0
    one_vec[1:] = info.vector
    collab = one_vec * w
    collab[0] = abs(w)
    fields = {f"collab:{model}": decay.observe(event.ts, collab, tau)}
    if is_liked(event):
        fields[f"pref:{model}"] = decay.observe(event.ts, one_vec, tau)
    return [(keys.user_vectors(event.user_id), Partial("decayed", Digest.of(event.event_id), fields, tau))]


def bandit_observations(event: Event, config: FeatureConfig) -> list[Keyed]:
    """Beta pseudo-counts: an impression is a trial (β+1), a click on a served slate turns it
    into a success (α+1, β−1), a skip is an explicit non-click (β+1). Organic clicks (no
    request_id) never touch the bandit. Counted in the event's segment and the global row.
    """
    if event.type is T.IMPRESSION or event.type is T.SKIP:
        ab = (0.0, 1.0)
    elif event.type is T.CLICK and event.request_id is not None:
        ab = (1.0, -1.0)
    else:
        return []
    tau = config.bandit_tau_ms
    d = Digest.of(event.event_id)
    summary = {event.item_id: decay.observe(event.ts, ab, tau)}
    segments = {event.segment, keys.GLOBAL_SEGMENT}
    return [(keys.bandit(s), Partial("decayed", d, summary, tau)) for s in sorted(segments)]


def trending_observations(event: Event, config: FeatureConfig) -> list[Keyed]:
    if event.type not in TRENDING_TYPES:
        return []
    tau = config.trending_tau_ms
    d = Digest.of(event.event_id)
    summary = {event.item_id: decay.observe(event.ts, (1.0,), tau)}
    segments = {event.segment, keys.GLOBAL_SEGMENT}
    return [(keys.trending(s), Partial("trending", d, summary, tau)) for s in sorted(segments)]


def content_vector(title: str | None, description: str | None, categories: tuple[str, ...], dim: int) -> np.ndarray:
    """The content vector used before a content tower is registered: the tower's own hashed
    input features (`schemas.content_contract`), so fallback and model see the same text.
    """
    return hashed_features(title, description, categories, dim)


def catalog_fields(event: Event, config: FeatureConfig) -> dict[str, str]:
    """The item hash written by the catalog path (strings, as Redis stores them)."""
    attrs = event.attributes
    fields = {"item_id": event.item_id}
    if attrs is None:
        return fields
    if attrs.title is not None:
        fields["title"] = attrs.title
    if attrs.description:
        fields["description"] = attrs.description
    fields["categories"] = json.dumps(list(attrs.categories), ensure_ascii=False)
    if attrs.price is not None:
        fields["price"] = repr(attrs.price)
    if attrs.created_at is not None:
        fields["created_at"] = str(attrs.created_at)
    if attrs.extra:
        fields["extra"] = json.dumps(dict(attrs.extra), ensure_ascii=False, sort_keys=True)
    vec = content_vector(attrs.title, attrs.description, attrs.categories, config.content_dim)
    fields[f"vec:{config.content_model}"] = ",".join(repr(float(x)) for x in vec)
    return fields


def item_info_fields(model: str) -> tuple[str, ...]:
    """The item-hash fields `item_info` reads (lookups fetch only these)."""
    return ("categories", f"vec:{model}")


def item_info(fields: dict[str, str], model: str) -> ItemInfo:
    """Decodes what `catalog_fields` wrote (the lookup side)."""
    cats = tuple(json.loads(fields["categories"])) if "categories" in fields else ()
    raw = fields.get(f"vec:{model}")
    vec = np.array([float(x) for x in raw.split(",")]) if raw else None
    return ItemInfo(cats, vec)
