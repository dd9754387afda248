"""Per-entity emotion summary: forward-decayed valence mean, its variance, and the rating signal.

Forward decay (Cormode et al., ICDE 2009): an observation at t gets weight w(t) = exp((t − L)/τ)
for a landmark L, and the summary stores Σw, Σw·x, Σw·x². The decayed mean Σw·x / Σw and the
decayed variance Σw·x² / Σw − mean² do not depend on L or on when they are read, so a summary
needs no clock and merges by addition once both sides are re-landmarked to the larger landmark.
The landmark is always the latest event time seen, so every stored weight is ≤ 1: events
decades apart underflow old weights to 0 (they have decayed away) and never overflow.
Weights are relative to the latest event, not to "now": read `weight(now)` for how much
evidence is left today; the means themselves need no clock.

- valence: the sentiment scorer's value in [-1, 1] (reviews);
- arousal: the decayed variance of valence — a proxy for how mixed or intense the feelings are;
- rating signal: (rating − 3) / 2 in [-1, 1], the same decayed mean over star ratings.

Plain Python (no Beam). Stored as `decay.Decayed` sums [Σw, Σw·x, Σw·x², Σw_r, Σw_r·r]
(`to_decayed`/`from_decayed`), so the generic decayed merge in Redis applies to it unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from transforms.summaries import decay

RATING_MIN, RATING_MAX = 1.0, 5.0
# Total weight below this (about 645 τ after the latest event) counts as decayed away and is
# zeroed: a mean read from subnormal floats would carry only a few significant bits.
DECAYED_AWAY = 1e-280


def rating_to_signal(rating: float) -> float:
    """A 1–5 star rating on the valence scale: 1 → -1, 3 → 0, 5 → +1."""
    return (rating - 3.0) / 2.0


def _check(value: float, lo: float, hi: float, what: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and lo <= v <= hi):
        raise ValueError(f"{what} must be a finite number within {lo:g}–{hi:g}, got {value!r}")
    return v


@dataclass(frozen=True, slots=True)
class EmotionSummary:
    """Decayed sums at `landmark_ms`; `n` counts the observations merged in (undecayed).

    `sw, swx, swx2` are over valence observations, `rating_sw, rating_swx` over ratings; an
    observation may carry either or both.
    """

    landmark_ms: int = 0
    sw: float = 0.0
    swx: float = 0.0
    swx2: float = 0.0
    rating_sw: float = 0.0
    rating_swx: float = 0.0
    n: int = 0

    @staticmethod
    def empty() -> EmotionSummary:
        """The identity of `merge`."""
        return EmotionSummary()

    @staticmethod
    def from_observation(ts_ms: int, valence: float | None, rating: float | None, tau_ms: float) -> EmotionSummary:
        """One event, weight 1 at its own time. `tau_ms` is validated here, where pipelines set it."""
        _check_tau(tau_ms)
        sw = swx = swx2 = rating_sw = rating_swx = 0.0
        if valence is not None:
            x = _check(valence, -1.0, 1.0, "valence")
            sw, swx, swx2 = 1.0, x, x * x
        if rating is not None:
            rating_sw, rating_swx = 1.0, rating_to_signal(_check(rating, RATING_MIN, RATING_MAX, "rating"))
        return EmotionSummary(int(ts_ms), sw, swx, swx2, rating_sw, rating_swx, 1)

    def relandmark(self, landmark_ms: int, tau_ms: float) -> EmotionSummary:
        """The same summary with weights relative to `landmark_ms` (values unchanged).

        Moving to a later landmark only shrinks the sums; an earlier one grows them and may
        overflow for a landmark far back, so `merge` only ever moves forward.
        """
        if landmark_ms == self.landmark_ms or self.n == 0:
            return EmotionSummary(landmark_ms, self.sw, self.swx, self.swx2, self.rating_sw, self.rating_swx, self.n)
        _check_tau(tau_ms)
        moved = decay.Decayed(landmark_ms, decay.rescale(self.to_decayed(), landmark_ms, tau_ms))
        return EmotionSummary.from_decayed(moved, self.n)

    @staticmethod
    def merge(a: EmotionSummary, b: EmotionSummary, tau_ms: float) -> EmotionSummary:
        """Commutative, associative (to float rounding); held at the later landmark."""
        if a.n == 0:
            return b
        if b.n == 0:
            return a
        _check_tau(tau_ms)
        return EmotionSummary.from_decayed(decay.merge(a.to_decayed(), b.to_decayed(), tau_ms), a.n + b.n)

    def to_decayed(self) -> decay.Decayed:
        return decay.Decayed(self.landmark_ms, np.array(
            [self.sw, self.swx, self.swx2, self.rating_sw, self.rating_swx], dtype=np.float64))

    @staticmethod
    def from_decayed(d: decay.Decayed, n: int = 0) -> EmotionSummary:
        """The view of stored sums; groups whose weight decayed away read as empty."""
        sw, swx, swx2, rating_sw, rating_swx = (float(x) for x in d.sums)
        if sw < DECAYED_AWAY:
            sw = swx = swx2 = 0.0
        if rating_sw < DECAYED_AWAY:
            rating_sw = rating_swx = 0.0
        return EmotionSummary(d.landmark_ms, sw, swx, swx2, rating_sw, rating_swx, n)

    def valence(self) -> float | None:
        """Decayed mean valence in [-1, 1]; None when no valence was observed (or all decayed away)."""
        if self.sw <= 0.0:
            return None
        return max(-1.0, min(1.0, self.swx / self.sw))

    def arousal(self) -> float | None:
        """Decayed variance of valence (≥ 0, ≤ 1); None when no valence was observed."""
        mean = self.valence()
        if mean is None:
            return None
        return max(0.0, min(1.0, self.swx2 / self.sw - mean * mean))

    def rating_signal(self) -> float | None:
        """Decayed mean of (rating − 3) / 2 in [-1, 1]; None when no rating was observed."""
        if self.rating_sw <= 0.0:
            return None
        return max(-1.0, min(1.0, self.rating_swx / self.rating_sw))

    def weight(self, now_ms: int, tau_ms: float) -> float:
        """Σw as of `now_ms`: the decayed number of valence observations, a confidence."""
        if self.sw <= 0.0:
            return 0.0
        return self.sw * math.exp(min(0.0, (self.landmark_ms - now_ms) / tau_ms))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; floats round-trip exactly through JSON."""
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> EmotionSummary:
        try:
            s = EmotionSummary(
                int(d["landmark_ms"]), float(d["sw"]), float(d["swx"]), float(d["swx2"]),
                float(d["rating_sw"]), float(d["rating_swx"]), int(d["n"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an emotion summary: {exc!r} in {d!r}") from None
        values = (s.sw, s.swx, s.swx2, s.rating_sw, s.rating_swx)
        if s.n < 0 or s.sw < 0 or s.rating_sw < 0 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"not an emotion summary (negative weight or non-finite sum): {d!r}")
        return s


def _check_tau(tau_ms: float) -> None:
    if not (isinstance(tau_ms, int | float) and math.isfinite(tau_ms) and tau_ms > 0):
        raise ValueError(f"tau_ms must be a positive finite number of milliseconds, got {tau_ms!r}")
