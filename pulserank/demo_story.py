"""Who the demo follows and what their session shifts to: plain functions over the event log.

The demo needs a user with a clear taste, an intent (a category or genre) that user has shown
little interest in, a few items of that intent to interact with, and the share of that intent's
items in a top-10 list. All of it is read from the replayed log itself, so the same code serves
MovieLens-100K (genres) and the synthetic world (one category per item), with no ground truth.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from models.examples import POSITIVE_TYPES

POSITIVE = frozenset(t.value for t in POSITIVE_TYPES)


@dataclass
class LogView:
    """What the demo reads from the event logs: the catalogue, each user's positives, popularity."""

    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)  # item → its categories
    titles: dict[str, str] = field(default_factory=dict)
    positives: dict[str, list[str]] = field(default_factory=dict)  # user → positive items, oldest first
    popularity: Counter = field(default_factory=Counter)  # item → users with a positive on it
    last_ms: dict[str, int] = field(default_factory=dict)  # user → their latest positive
    end_ms: int = 0  # the latest event time

    def items_of(self, category: str) -> list[str]:
        return [i for i, cats in self.categories.items() if category in cats]

    def category_counts(self, items: Iterable[str]) -> Counter:
        return Counter(c for i in items for c in self.categories.get(i, ()))


def read_log(paths: Sequence[Path]) -> LogView:
    """One pass over JSONL event logs (already validated by the replay: malformed lines are skipped)."""
    from schemas.clock import parse_instant

    view = LogView()
    seen: dict[str, set[str]] = {}
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    e = json.loads(line)
                    ts = parse_instant(e["ts"])
                except (ValueError, KeyError, TypeError):
                    continue
                view.end_ms = max(view.end_ms, ts)
                item, user = e.get("item_id"), e.get("user_id")
                if e.get("type") == "item" and item:
                    attrs = e.get("attributes") or {}
                    view.categories[item] = tuple(c for c in attrs.get("categories") or () if c)
                    if attrs.get("title"):
                        view.titles[item] = str(attrs["title"])
                elif e.get("type") in POSITIVE and user and item:
                    mine = seen.setdefault(user, set())
                    view.positives.setdefault(user, []).append(item)
                    view.last_ms[user] = max(view.last_ms.get(user, ts), ts)
                    if item not in mine:
                        mine.add(item)
                        view.popularity[item] += 1
    return view


def dominant_share(view: LogView, user: str) -> float:
    """The share of the user's distinct positive items in their most frequent category."""
    items = set(view.positives.get(user, ()))
    counts = view.category_counts(items)
    return max(counts.values()) / len(items) if counts and items else 0.0


def pick_user(view: LogView, min_items: int = 5, max_items: int = 40, active_days: float = 30.0) -> str:
    """A user with a clear taste and a short history, whose session can show: the highest
    dominant-category share among users active in the log's last `active_days` with
    `min_items`..`max_items` distinct positives; ties by fewer items, then by id. (Serving embeds
    a user from their whole history, so a long one dilutes any single session.)"""
    since = view.end_ms - active_days * 86_400_000
    eligible = [u for u, items in view.positives.items()
                if min_items <= len(set(items)) <= max_items and view.last_ms[u] >= since]
    if not eligible:
        eligible = list(view.positives)
    if not eligible:
        raise ValueError("the log has no user with a positive interaction to follow")
    return min(eligible, key=lambda u: (-round(dominant_share(view, u), 6), len(set(view.positives[u])), u))


def share(items: Sequence[str], view: LogView, intent: str) -> float:
    """The share of `items` that belong to `intent` (0 for an empty list)."""
    return sum(intent in view.categories.get(i, ()) for i in items) / len(items) if items else 0.0


def unseen_of(view: LogView, user: str, category: str) -> int:
    mine = set(view.positives.get(user, ()))
    return sum(1 for i in view.items_of(category) if i not in mine)


def pick_intent(view: LogView, user: str, shown: Sequence[str], min_unseen: int = 10) -> str:
    """The new intent: among categories with at least `min_unseen` items the user has not
    interacted with (some to interact with, the rest to be recommended), the one least present
    in what the user was just shown, then in their history; ties by name."""
    mine = set(view.positives.get(user, ()))
    history = view.category_counts(mine)
    candidates = [c for c in sorted({c for cats in view.categories.values() for c in cats})
                  if unseen_of(view, user, c) >= min_unseen]
    if not candidates:
        raise ValueError(f"no category has {min_unseen} items user {user} has not seen")
    return min(candidates, key=lambda c: (share(shown, view, c), history[c] / max(1, len(mine)), c))


def shift_items(view: LogView, user: str, intent: str, k: int, exclude: Iterable[str] = ()) -> list[str]:
    """The `k` items of `intent` the session shifts to: the most popular the user has not seen
    (nor was shown), preferring items of that intent alone, so the shift is unambiguous."""
    mine = set(view.positives.get(user, ())) | set(exclude)
    pool = [i for i in view.items_of(intent) if i not in mine]
    pool.sort(key=lambda i: (len(view.categories[i]) > 1, -view.popularity[i], i))
    return pool[:k]


def shift_events(user: str, items: Sequence[str], start_ms: int, session: str, step_ms: int = 30_000) -> list[dict]:
    """A new session on `items`: one view or click each (alternating, views with a dwell), then a
    purchase of the last one; contract-shaped dicts, `step_ms` apart, oldest first. One event per
    item because the store keeps a user's last 10 interactions (`transforms/summaries/recent.py`),
    which is what serving adds to the deployed history. The session id rides in the context where
    the pipelines read it (`session_id`); the purchase is what tells the edge to drop the user's
    cached lists."""
    context = {"surface": "browse", "device": "mobile", "session_id": session}
    plan = [(item, "view" if k % 2 == 0 else "click") for k, item in enumerate(items)]
    if items:
        plan.append((items[-1], "purchase"))
    out = []
    for k, (item, kind) in enumerate(plan):
        e = {"event_id": f"{session}-{k:02d}", "ts": start_ms + k * step_ms, "user_id": user, "type": kind,
             "item_id": item, "context": dict(context)}
        if kind == "view":
            e["value"] = 45.0  # dwell seconds
        out.append(e)
    return out
