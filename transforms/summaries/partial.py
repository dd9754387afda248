"""A partial summary for one key: its kind, the digest of its events, and its payload.

`merge` dispatches to each kind's merge, so one CombineFn serves every feature family.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from transforms.summaries import decay, recent, sessions
from transforms.summaries.digest import Digest


@dataclass(frozen=True, slots=True)
class Partial:
    kind: str  # counts | recent | decayed | trending | sessions
    digest: Digest
    payload: Any
    tau_ms: float | None = None


def _merge_fields(a: dict, b: dict, tau: float | None) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = decay.merge(out[k], v, tau) if k in out else v
    return out


def merge(a: Partial, b: Partial) -> Partial:
    if a.kind != b.kind:
        raise ValueError(f"cannot merge {a.kind} with {b.kind}")
    kind = a.kind
    if kind == "counts":
        payload: Any = Counter(a.payload) + Counter(b.payload)
    elif kind == "recent":
        payload = recent.merge(a.payload, b.payload)
    elif kind in ("decayed", "trending"):
        payload = _merge_fields(a.payload, b.payload, a.tau_ms)
    elif kind == "sessions":
        payload = sessions.merge(a.payload, b.payload)
    else:
        raise ValueError(f"unknown summary kind {kind!r}")
    return Partial(kind, a.digest.merge(b.digest), payload, a.tau_ms)
