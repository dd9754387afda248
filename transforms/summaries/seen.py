"""A user's seen set: item → last positive time (ms), the newest `keys.SEEN_MAX` — and its compact value.

The merge is a semilattice, as a Redis sorted set with `ZADD GT` + trim gave: the later time of
each item, then the newest `cap` by (ts, item bytes). So re-runs and concurrent writers converge.

Stored as one Redis string (`encode`), not a sorted set: a sorted set costs ~14 B an entry (an
8-byte ms score each), 1.5 KB for a MovieLens user; this is ~3 B an entry. The value is
`<newest ts ms>;` then raw deflate of compact JSON `[unit, [item, …], [gap, …]]`: items newest
first (ties by item bytes, descending), each gap the time to the previous item in `unit` ms (the
gcd of the gaps, so times stay exact: whole-second logs store seconds). The ASCII head lets a Lua
script read the user's last activity without inflating (stores/lua/prune_user.lua).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping

from schemas.keys import SEEN_MAX

Seen = dict[str, int]  # item → last positive time (ms), ascending by (ts, item bytes)

_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _newest_first(seen: Mapping[str, int]) -> list[tuple[str, int]]:
    return sorted(seen.items(), key=lambda kv: (kv[1], kv[0].encode()), reverse=True)


def merge(a: Mapping[str, int], b: Mapping[str, int], cap: int = SEEN_MAX) -> Seen:
    """Each item at its later time, the newest `cap` by (ts, item bytes), ascending as ZRANGE gave."""
    both = dict(a)
    for item, ts in b.items():
        if item not in both or ts > both[item]:
            both[item] = int(ts)
    return dict(reversed(_newest_first(both)[:cap]))


def encode(seen: Mapping[str, int]) -> bytes:
    """The stored value of a (merged) seen set; b"" for an empty one (nothing is stored)."""
    entries = _newest_first(seen)
    if not entries:
        return b""
    times = [int(ts) for _, ts in entries]
    gaps = [a - b for a, b in zip(times, times[1:], strict=False)]
    unit = math.gcd(*gaps) or 1
    body = _COMPACT([unit, [item for item, _ in entries], [g // unit for g in gaps]]).encode()
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return b"%d;" % times[0] + packer.compress(body) + packer.flush()


def decode(raw: bytes | None) -> Seen:
    """item → ts ascending by (ts, item bytes): the order `ZRANGE … WITHSCORES` returned."""
    if not raw:
        return {}
    head, _, packed = raw.partition(b";")
    unit, items, gaps = json.loads(zlib.decompress(packed, -15))
    ts = int(head)
    out = [(items[0], ts)]
    for item, gap in zip(items[1:], gaps, strict=True):
        ts -= gap * unit
        out.append((item, ts))
    return dict(reversed(out))


def newest(raw: bytes | None) -> int | None:
    """The last activity a stored value records (its head), without inflating it."""
    return int(raw.partition(b";")[0]) if raw else None
