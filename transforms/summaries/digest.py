"""Identity of a summary: which events it holds, as an order-free, mergeable digest.

The Redis sink guards each merge with the summary id, so a retried bundle or a re-run replay
(the same events for the same key) never counts twice, while different event sets always
merge.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

_MOD = 1 << 64


def event_hash(event_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class Digest:
    """Sum of event-id hashes mod 2^64 and a count: commutative, associative, exact."""

    total: int = 0
    count: int = 0

    @staticmethod
    @lru_cache(maxsize=1 << 14)  # each family hashes the same event again, moments later
    def of(event_id: str) -> Digest:
        return Digest(event_hash(event_id), 1)

    def merge(self, other: Digest) -> Digest:
        return Digest((self.total + other.total) % _MOD, self.count + other.count)

    @staticmethod
    def merge_all(digests: Iterable[Digest]) -> Digest:
        """`merge` folded over many digests (one modulo at the end: the same result)."""
        total = count = 0
        for d in digests:
            total += d.total
            count += d.count
        return Digest(total % _MOD, count)

    def __reduce__(self):  # pickled across Beam stages: a tuple, not dataclasses' slow __getstate__
        return Digest, (self.total, self.count)

    def summary_id(self, family: str, key: str) -> str:
        """Stable id of (family, key, event set); short enough to be a Redis key suffix."""
        raw = f"{family}\x00{key}\x00{self.total:016x}\x00{self.count}".encode()
        return hashlib.blake2b(raw, digest_size=12).hexdigest()
