"""Forward decay (Cormode et al., ICDE 2009): decayed sums that merge by addition.

A summary stores `Σ w(t_i)·x_i` for a landmark L with `w(t) = exp((t − L)/τ)`. Two summaries
merge by re-expressing one at the other's landmark; the value "as of" any time is the same
whichever landmark holds it. With τ = None nothing decays (plain sums).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Keep the landmark unless re-expressing would scale by more than e^RELANDMARK: stored
# magnitudes stay far from float overflow while merges rarely rescale.
RELANDMARK = 50.0


@dataclass(frozen=True, slots=True)
class Decayed:
    """Decayed sums at `landmark_ms`; `sums[0]` is conventionally Σw (the decayed count)."""

    landmark_ms: int
    sums: np.ndarray

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Decayed)
            and self.landmark_ms == other.landmark_ms
            and np.array_equal(self.sums, other.sums)
        )

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self):  # pickled across Beam stages: a tuple, not dataclasses' slow __getstate__
        return Decayed, (self.landmark_ms, self.sums)


def observe(ts_ms: int, values: Sequence[float] | np.ndarray, tau_ms: float | None) -> Decayed:
    """One observation, weight 1 at its own time (landmark = its timestamp)."""
    return Decayed(ts_ms if tau_ms else 0, np.asarray(values, dtype=np.float64))


def rescale(d: Decayed, landmark_ms: int, tau_ms: float | None) -> np.ndarray:
    """`d`'s sums expressed at another landmark."""
    if not tau_ms or landmark_ms == d.landmark_ms:
        return d.sums
    return d.sums * math.exp((d.landmark_ms - landmark_ms) / tau_ms)


def merge(a: Decayed, b: Decayed, tau_ms: float | None) -> Decayed:
    """Associative and commutative (up to float rounding): held at the later landmark."""
    if not tau_ms:
        return Decayed(0, a.sums + b.sums)
    landmark = max(a.landmark_ms, b.landmark_ms)
    return Decayed(landmark, rescale(a, landmark, tau_ms) + rescale(b, landmark, tau_ms))


def merge_all(values: Sequence[Decayed], tau_ms: float | None) -> Decayed:
    """`merge` over many summaries in one vectorised step (equal up to float rounding)."""
    if len(values) == 1:
        return values[0]
    sums = np.stack([d.sums for d in values])
    if not tau_ms:
        return Decayed(0, sums.sum(axis=0))
    landmarks = np.fromiter((d.landmark_ms for d in values), dtype=np.int64, count=len(values))
    landmark = int(landmarks.max())
    return Decayed(landmark, np.exp((landmarks - landmark) / tau_ms) @ sums)


def at(d: Decayed, now_ms: int, tau_ms: float | None) -> np.ndarray:
    """The sums as of `now_ms`: weights relative to now (Σw is the decayed count then)."""
    return rescale(d, now_ms, tau_ms)


def mean(d: Decayed) -> np.ndarray | None:
    """Decayed mean of the components after Σw (independent of the landmark)."""
    w = float(d.sums[0])
    return d.sums[1:] / w if w > 0 else None
