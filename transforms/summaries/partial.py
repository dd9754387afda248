"""A partial summary for one key: its kind, the digest of its events, and its payload.

`merge` dispatches to each kind's merge, so one CombineFn serves every feature family.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

from transforms.summaries import decay, recent, sessions
from transforms.summaries.digest import Digest


@dataclass(frozen=True, slots=True)
class Partial:
    kind: str  # counts | recent | decayed | trending | sessions
    digest: Digest
    payload: Any
    tau_ms: float | None = None

    def __reduce__(self):  # pickled across Beam stages: a tuple, not dataclasses' slow __getstate__
        return Partial, (self.kind, self.digest, self.payload, self.tau_ms)


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


def merge_all(parts: Sequence[Partial]) -> Partial:
    """`merge` over many partials of one kind, in one pass.

    Folding pairwise copies the growing summary at every step (quadratic in an active user's
    events: bucket counts are thousands of fields); here counts go into one Counter, implicit
    sessions are coalesced once and each decayed field is merged in one vectorised step: the
    same result (decayed sums up to float rounding, well inside the parity tolerance).
    """
    first = parts[0]
    if len(parts) == 1:
        return first
    kind, tau = first.kind, first.tau_ms
    if any(p.kind != kind for p in parts):
        raise ValueError(f"cannot merge {kind} with {', '.join(sorted({p.kind for p in parts} - {kind}))}")
    payloads = [p.payload for p in parts]
    if kind == "counts":
        counts: Counter = Counter()
        for pl in payloads:
            counts.update(pl)
        payload: Any = +counts  # as Counter's `+`: positive counts only
    elif kind == "recent":
        payload = recent.merge(chain.from_iterable(payloads), ())
    elif kind in ("decayed", "trending"):
        by_field: dict[str, list[decay.Decayed]] = {}
        for pl in payloads:
            for k, v in pl.items():
                by_field.setdefault(k, []).append(v)
        payload = {k: decay.merge_all(vs, tau) for k, vs in by_field.items()}
    elif kind == "sessions":
        payload = sessions.merge_all(payloads)
    else:
        raise ValueError(f"unknown summary kind {kind!r}")
    return Partial(kind, Digest.merge_all(p.digest for p in parts), payload, tau)
