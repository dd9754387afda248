"""The last K interactions of a user: top-K by (ts, member) of the union — a semilattice merge.

A member is the event type's one-letter code then the item id (`r255`: a rating of item 255),
scored by its latest event time (`ZADD GT`): so the K are the last K distinct (type, item)
interactions — as the edge keeps its recent items — and the same event replayed changes nothing.
No event id: serving reads only (ts, type, item), and ids (`syn0-user-04005-00104`) made most of
the bytes. Members of the earlier layout, JSON `[event_id, type, item_id]`, still decode. Ties on
ts order by member bytes, as in a Redis sorted set, so Python and Redis keep the same K.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import chain

K = 10

Entry = tuple[int, str]  # (ts_ms, member)

CODES = {"view": "v", "click": "c", "add_to_cart": "a", "purchase": "p", "rating": "r", "review": "w",
         "impression": "i", "skip": "s", "item": "t"}  # schemas.events.EventType → code; never reuse a letter
TYPES = {code: etype for etype, code in CODES.items()}


def member(etype: str, item_id: str) -> str:
    return CODES[etype] + item_id


def merge(a: Iterable[Entry], b: Iterable[Entry], k: int = K) -> tuple[Entry, ...]:
    """Each member at its latest time (`ZADD GT`), then the newest k (descending), ties broken by
    member as Redis does."""
    latest: dict[str, int] = {}
    for ts, m in chain(a, b):
        if ts > latest.get(m, ts - 1):
            latest[m] = ts
    return tuple(sorted(((ts, m) for m, ts in latest.items()), key=lambda e: (e[0], e[1].encode()), reverse=True)[:k])


def decode(entries: Iterable[Entry]) -> list[dict]:
    out = []
    for ts, m in entries:
        if m.startswith("["):  # the earlier layout
            _, etype, item_id = json.loads(m)
        else:
            etype, item_id = TYPES[m[0]], m[1:]
        out.append({"ts": ts, "type": etype, "item_id": item_id})
    return out
