"""The Redis key layout: every key the system writes is built here.

All keys of one user share the hash tag `{u:<id>}` (and of one item `{i:<id>}`), so on a
Redis Cluster a user's reads and merges stay in one slot.
"""

from __future__ import annotations

PREFIX = "pr"

EVENT_STREAM = f"{PREFIX}:events"
DEAD_LETTER_STREAM = f"{PREFIX}:dead-letters"
REPLAY_RUNS = f"{PREFIX}:replay:runs"


def user(user_id: str, part: str) -> str:
    return f"{PREFIX}:{{u:{user_id}}}:{part}"


def item(item_id: str, part: str) -> str:
    return f"{PREFIX}:{{i:{item_id}}}:{part}"


def user_activity(user_id: str) -> str:
    """Hash of event type → count for a user."""
    return user(user_id, "activity")


def item_activity(item_id: str) -> str:
    """Hash of event type → count for an item."""
    return item(item_id, "activity")
