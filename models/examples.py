"""Point-in-time training examples: what the models see about a user at the moment of an event.

A feature of an example only uses events strictly before that example's time: the history is the
user's positive items before `ts`, the activity counts them, the context is the event's own hour
and weekday. Serving builds the same raw features for "now" with `serving_row`, so training and
serving agree by construction. Plain Python, no TensorFlow or Beam.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from schemas.events import Event, EventType
from schemas.features import SERVING_HISTORY_LEN, context_features

HISTORY_LEN = 100  # positive items a training example carries, most recent first
RECENT_LEN = 10  # what the edge ranker reads (the design's "last 10 interactions")
CATEGORIES_LEN = 8
CONTEXT = ("activity", "hour", "weekday")  # raw context columns, in order
PAD = ""

POSITIVE_TYPES = frozenset({EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE,
                            EventType.RATING, EventType.REVIEW})
NEGATIVE_TYPES = frozenset({EventType.SKIP})


@dataclass(frozen=True)
class Interaction:
    """One labelled (user, item) event: label 1 for a positive type, 0 for an explicit negative."""

    user_id: str
    item_id: str
    ts: int
    label: float
    event_id: str


def interaction(event: Event) -> Interaction | None:
    """The labelled interaction an event is, or None (impressions, catalog upserts)."""
    if event.item_id is None or event.user_id is None:
        return None
    if event.type in POSITIVE_TYPES:
        return Interaction(event.user_id, event.item_id, event.ts, 1.0, event.event_id)
    if event.type in NEGATIVE_TYPES:
        return Interaction(event.user_id, event.item_id, event.ts, 0.0, event.event_id)
    return None



def padded(values: Sequence[str], n: int) -> list[str]:
    return list(values[:n]) + [PAD] * max(0, n - len(values))


def categories_row(categories: Sequence[str]) -> list[str]:
    return padded([c for c in categories if c], CATEGORIES_LEN)


def user_examples(interactions: Iterable[Interaction], categories: dict[str, Sequence[str]] | None = None,
                  history_len: int = HISTORY_LEN) -> list[dict]:
    """Examples of one user in time order, each with only the strictly earlier positives.

    Several events in the same millisecond do not see each other (none is "before" another);
    an item repeated in the history appears once, at its latest position.
    """
    rows = sorted(interactions, key=lambda x: (x.ts, x.event_id))
    categories = categories or {}
    out: list[dict] = []
    seen: list[str] = []  # positives before the current millisecond, oldest first
    pending: list[str] = []  # positives of the current millisecond
    current = None
    for x in rows:
        if x.ts != current:
            seen.extend(pending)
            pending = []
            current = x.ts
        out.append(example_row(x.user_id, seen, x.item_id, x.ts, categories.get(x.item_id, ()), x.label,
                               history_len))
        if x.label > 0:
            pending.append(x.item_id)
    return out


def recent_unique(items_oldest_first: Sequence[str], n: int) -> list[str]:
    """The last `n` distinct items, most recent first."""
    out: list[str] = []
    seen: set[str] = set()
    for item in reversed(items_oldest_first):
        if item not in seen:
            seen.add(item)
            out.append(item)
            if len(out) == n:
                break
    return out


def example_row(user_id: str, positives_oldest_first: Sequence[str], item_id: str, ts: int,
                categories: Sequence[str], label: float, history_len: int = HISTORY_LEN) -> dict:
    """One raw example (the preprocessing layer's input schema)."""
    return {
        "user_id": user_id,
        "history": padded(recent_unique(positives_oldest_first, history_len), history_len),
        "context": context_features(len(positives_oldest_first), ts),
        "item_id": item_id,
        "item_categories": categories_row(categories),
        "label": float(label),
        "ts": int(ts),
    }


def serving_row(user_id: str, positives_oldest_first: Sequence[str], now_ms: int,
                history_len: int = SERVING_HISTORY_LEN) -> dict:
    """The user half of a row for "now" (retrieval, batch user embeddings, serving); the history is
    not padded — `history_matrix` pads a batch of rows to one width."""
    return {
        "user_id": user_id,
        "history": recent_unique(positives_oldest_first, history_len),
        "context": context_features(len(positives_oldest_first), now_ms),
    }


def history_matrix(histories: Sequence[Sequence[str]], width: int | None = None) -> list[list[str]]:
    """Histories padded to one width (default: the longest, at least 1) for a batch of user rows."""
    width = width or max([1, *(len(h) for h in histories)])
    return [padded(h, width) for h in histories]
