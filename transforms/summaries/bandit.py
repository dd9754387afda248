"""How a segment's Beta posterior borrows from the global row (read time; plain math).

The stores keep raw pseudo-counts per (segment, item) and per item over all segments (the
global row). A sparse segment borrows by empirical-Bayes shrinkage: the global row's
click-through rate p_g enters as `strength` pseudo-trials,

    α = prior_α + α_s + strength · p_g,     β = prior_β + β_s + strength · (1 − p_g),

with p_g = (α_g + prior_α) / (α_g + β_g + prior_α + prior_β). A segment with few trials
(α_s + β_s ≪ strength) behaves like the global row; one with many is ruled by its own counts.
"""

from __future__ import annotations

DEFAULT_PRIOR = (1.0, 1.0)
DEFAULT_STRENGTH = 20.0


def global_rate(alpha_g: float, beta_g: float, prior: tuple[float, float] = DEFAULT_PRIOR) -> float:
    a0, b0 = prior
    return (alpha_g + a0) / (alpha_g + beta_g + a0 + b0)


def borrowed_posterior(
    segment: tuple[float, float],
    global_row: tuple[float, float],
    strength: float = DEFAULT_STRENGTH,
    prior: tuple[float, float] = DEFAULT_PRIOR,
) -> tuple[float, float]:
    """(α, β) of the segment's posterior after borrowing `strength` trials from the global row."""
    p = global_rate(*global_row, prior=prior)
    a0, b0 = prior
    return a0 + segment[0] + strength * p, b0 + segment[1] + strength * (1.0 - p)
