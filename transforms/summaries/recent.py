"""The last K interactions of a user: top-K by (ts, member) of the union — a semilattice merge.

Members are compact JSON `[event_id, type, item_id]`; ties on ts order by member bytes, as in
a Redis sorted set, so Python and Redis keep the same K.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

K = 10

Entry = tuple[int, str]  # (ts_ms, member)


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode  # built once, not per call


def member(event_id: str, etype: str, item_id: str) -> str:
    return _COMPACT([event_id, etype, item_id])


def merge(a: Iterable[Entry], b: Iterable[Entry], k: int = K) -> tuple[Entry, ...]:
    """The newest k of both (descending), ties broken by member as Redis does."""
    both = set(a) | set(b)
    return tuple(sorted(both, key=lambda e: (e[0], e[1].encode()), reverse=True)[:k])


def decode(entries: Iterable[Entry]) -> list[dict]:
    out = []
    for ts, m in entries:
        event_id, etype, item_id = json.loads(m)
        out.append({"ts": ts, "event_id": event_id, "type": etype, "item_id": item_id})
    return out
