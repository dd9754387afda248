"""Grounded reasons for a recommended item, and the one-sentence template built from them.

A reason exists only when its evidence does: "similar to items you engaged with" needs the
user's own liked items nearest to this one, "trending in your segment" a rank in that segment's
trending list, and so on. Nothing here guesses, so the template (and the LLM prompt built from
the same reasons) can only say what the serving path actually used. Plain Python, no I/O: the
server gathers the signals, maps `Reason` to the proto's message, and asks `serving.llm` for a
better-worded sentence only when its policy allows.

Weights are each signal's own strength on [0, 1] (similarity, rank decay, mood match, posterior
uncertainty), so they compare across reasons and sort the strongest first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Codes are stable API (clients group or localize by them); see schemas/personalization.proto.
SIMILAR_TO_RATED = "similar_to_rated"
TRENDING_IN_SEGMENT = "trending_in_segment"
POPULAR_OVERALL = "popular_overall"
EXPLORATION = "exploration"
NEW_ARRIVAL = "new_arrival"
MOOD_MATCH = "mood_match"
LIKED_BY_SIMILAR_USERS = "liked_by_similar_users"
CODES = (SIMILAR_TO_RATED, TRENDING_IN_SEGMENT, POPULAR_OVERALL, EXPLORATION, NEW_ARRIVAL, MOOD_MATCH,
         LIKED_BY_SIMILAR_USERS)

# Trending weight halves every this many places down the list (rank 0 → 1.0, rank 10 → 0.5).
_TREND_HALF_RANK = 10.0
# Posterior trials at which the exploration weight halves: α+β of 10 means the item is still new to us.
_EXPLORE_HALF_TRIALS = 10.0
# A popularity rank outside any segment counts a little less than one in the user's own segment.
_POPULAR_DISCOUNT = 0.8
# A new item not being explored is a weak reason on its own.
_NEW_ARRIVAL_WEIGHT = 0.3
# Items named per similarity reason, and the most reasons the template sentence joins.
_MAX_SIMILAR = 2
_TEMPLATE_REASONS = 2
_MAX_TITLE = 80

GENERIC = "Picked for you from what we know of your tastes."


@dataclass(frozen=True)
class ItemSignals:
    """What the serving path knew about one item for one user: the evidence reasons draw on."""

    item_id: str
    title: str = ""
    categories: tuple[str, ...] = ()
    score: float = 0.0  # ranker probability
    # (item_id, title, similarity) of the user's own liked items nearest to this one
    similar_to: tuple[tuple[str, str, float], ...] = ()
    trending_rank: int | None = None  # 0-based rank in the user's segment's trending list
    segment: str = ""
    explored: bool = False  # lifted by exploration above its ranker slot
    is_new: bool = False  # recently added to the catalogue
    bandit_trials: float = 0.0  # α+β of the item's posterior: confidence
    mood_match: tuple[str, float] | None = None  # (the user's recent mood label, match strength 0..1)
    source: str = ""  # retrieval source: collaborative | content | trending | candidates


@dataclass(frozen=True)
class Reason:
    """One grounded reason; `code` is stable, `text` a sentence for people, `weight` ≥ 0."""

    code: str
    text: str
    weight: float


def reasons(s: ItemSignals) -> list[Reason]:
    """Every reason `s` has evidence for, strongest first (ties in a fixed order)."""
    out = [r for r in (_similar(s), _trending(s), _exploration(s), _new_arrival(s), _mood(s), _collaborative(s))
           if r is not None]
    return sorted(out, key=lambda r: -r.weight)


def template(s: ItemSignals, rs: list[Reason]) -> str:
    """One sentence from the top reasons (at most two); a generic sentence when none applies."""
    phrases = [p for p in (_phrase(s, r.code) for r in sorted(rs, key=lambda r: -r.weight)) if p]
    phrases = list(dict.fromkeys(phrases))[:_TEMPLATE_REASONS]
    if not phrases:
        return GENERIC
    subject = f"“{_clean(s.title)}”" if _clean(s.title) else "This"
    return f"{subject} is recommended because {' and '.join(phrases)}."


# -- one function per reason: None without evidence ----------------------------------------------


def _similar(s: ItemSignals) -> Reason | None:
    liked = sorted(((t, _unit(sim)) for _, t, sim in s.similar_to if _unit(sim) > 0), key=lambda x: -x[1])
    if not liked:
        return None
    names = _titles([t for t, _ in liked])
    text = f"Similar to {names or 'items'}, which you engaged with."
    return Reason(SIMILAR_TO_RATED, text, liked[0][1])


def _trending(s: ItemSignals) -> Reason | None:
    if s.trending_rank is None or s.trending_rank < 0:
        return None
    weight = 1.0 / (1.0 + s.trending_rank / _TREND_HALF_RANK)
    place = s.trending_rank + 1
    if _clean(s.segment):
        return Reason(TRENDING_IN_SEGMENT, f"#{place} trending in your segment “{_clean(s.segment)}”.", weight)
    return Reason(POPULAR_OVERALL, f"#{place} most popular right now.", weight * _POPULAR_DISCOUNT)


def _exploration(s: ItemSignals) -> Reason | None:
    if not s.explored:
        return None
    text = ("A new item we are trying out with you." if s.is_new
            else "Something a little different we think you may like.")
    return Reason(EXPLORATION, text, _uncertainty(s.bandit_trials))


def _new_arrival(s: ItemSignals) -> Reason | None:
    if not s.is_new or s.explored:  # an explored new item says so in its exploration reason
        return None
    return Reason(NEW_ARRIVAL, "Recently added to the catalogue.", _NEW_ARRIVAL_WEIGHT)


def _mood(s: ItemSignals) -> Reason | None:
    if s.mood_match is None:
        return None
    label, strength = _clean(s.mood_match[0]), _unit(s.mood_match[1])
    if not label or strength <= 0:
        return None
    return Reason(MOOD_MATCH, f"Matches your recent mood ({label}).", strength)


def _collaborative(s: ItemSignals) -> Reason | None:
    # Collaborative retrieval is the evidence; when the user's nearest liked items are known the
    # similarity reason says the same thing more concretely.
    if s.source != "collaborative" or s.similar_to or _unit(s.score) <= 0:
        return None
    return Reason(LIKED_BY_SIMILAR_USERS, "Popular with people whose tastes are like yours.", _unit(s.score))


# -- template phrases -----------------------------------------------------------------------------


def _phrase(s: ItemSignals, code: str) -> str:
    if code == SIMILAR_TO_RATED:
        names = _titles([t for _, t, sim in sorted(s.similar_to, key=lambda x: -_unit(x[2])) if _unit(sim) > 0])
        return f"it is similar to {names or 'items'}, which you engaged with"
    if code == TRENDING_IN_SEGMENT:
        return f"it is trending in your segment “{_clean(s.segment)}”"
    if code == POPULAR_OVERALL:
        return "it is popular right now"
    if code == EXPLORATION:
        return "it is a new item we are trying out with you" if s.is_new else "it is something a little different"
    if code == NEW_ARRIVAL:
        return "it was recently added"
    if code == MOOD_MATCH and s.mood_match is not None:
        return f"it matches your recent mood ({_clean(s.mood_match[0])})"
    if code == LIKED_BY_SIMILAR_USERS:
        return "people with tastes like yours enjoyed it"
    return ""


def _titles(titles: list[str]) -> str:
    names = [f"“{c}”" for c in dict.fromkeys(_clean(t) for t in titles) if c][:_MAX_SIMILAR]
    return " and ".join(names)


def _clean(text: str) -> str:
    """One line, bounded: titles and labels come from the catalogue and users, not from us."""
    line = " ".join(str(text).split())
    return line if len(line) <= _MAX_TITLE else line[: _MAX_TITLE - 1] + "…"


def _unit(x: float) -> float:
    x = float(x)
    return min(max(x, 0.0), 1.0) if math.isfinite(x) else 0.0


def _uncertainty(trials: float) -> float:
    t = float(trials) if math.isfinite(float(trials)) else 0.0
    return 1.0 / (1.0 + max(t, 0.0) / _EXPLORE_HALF_TRIALS)
