"""Read-back for analysts: what a replay (or live mode) left in Redis, decoded and as of a clock.

    pulserank [--as-of T] inspect user ID [--json]
    pulserank [--as-of T] inspect bandit [--segment S] [--item I ...] [--prior-alpha A --prior-beta B] [--json]
    pulserank inspect guards [--json]

Everything is read through `stores.feature_store.FeatureStore`, whose clock is the process's
(`--as-of` sets `PULSERANK_AS_OF`): windows are summed as of that instant and decayed weights
are expressed at it. Each `*_report` returns a JSON-ready dict; `format_*` renders it for people.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from schemas import keys
from schemas.clock import format_instant
from schemas.features import FeatureConfig
from stores.feature_store import FeatureStore
from transforms.summaries import decay
from transforms.summaries.decay import Decayed
from transforms.summaries.emotion import EmotionSummary

DEFAULT_PRIOR = (1.0, 1.0)  # Beta(1, 1): uniform, the usual Thompson-sampling start


class InspectError(ValueError):
    """A read-back that cannot be answered as asked (the message says what to pass)."""


def _instant(ms: int | None) -> dict[str, Any] | None:
    return None if ms is None else {"ms": int(ms), "utc": format_instant(int(ms))}


def _num(x: float) -> float | None:
    """A JSON-safe float (None for NaN/inf)."""
    return float(x) if math.isfinite(x) else None


# -- user ---------------------------------------------------------------------------------------


def emotion_report(values: dict[str, Decayed], now_ms: int, tau_ms: float) -> dict[str, Any] | None:
    """Decoded emotion: decayed valence mean, arousal (decayed variance), rating signal, weights now."""
    d = values.get("v")
    if d is None:
        return None
    s = EmotionSummary.from_decayed(d)
    rating_weight = s.rating_sw * math.exp(min(0.0, (s.landmark_ms - now_ms) / tau_ms)) if s.rating_sw > 0 else 0.0
    return {
        "valence": s.valence(),
        "arousal": s.arousal(),
        "rating_signal": s.rating_signal(),
        "valence_weight": s.weight(now_ms, tau_ms),  # decayed number of scored reviews, as of now
        "rating_weight": rating_weight,  # decayed number of ratings, as of now
        "last_event": _instant(s.landmark_ms),
        "tau_days": tau_ms / 86_400_000,
    }


def embeddings_report(values: dict[str, Decayed], now_ms: int, tau_ms: float) -> dict[str, dict[str, Any]]:
    """Per kind (collab, pref) and model version: the decayed mean vector's norm, its dimension
    and the decayed weight behind it as of now (the vector store holds the normalised mean)."""
    out: dict[str, dict[str, Any]] = {}
    for name, d in sorted(values.items()):
        kind, _, model = name.partition(":")
        mean = decay.mean(d)
        weight_now = float(decay.at(d, now_ms, tau_ms)[0])
        out.setdefault(kind, {})[model] = {
            "norm": None if mean is None else _num(float(np.linalg.norm(mean))),
            "dim": int(d.sums.shape[0] - 1),
            "weight": _num(weight_now),
            "last_event": _instant(d.landmark_ms),
        }
    return out


def user_report(store: FeatureStore, user_id: str, config: FeatureConfig | None = None) -> dict[str, Any]:
    """Windows, session, recent interactions, emotion and embedding norms of one user."""
    config = config or FeatureConfig()
    f = store.user_features(user_id)
    now = f["as_of"]
    session = f["session"]
    if session is not None:
        session = {**session, "start_utc": format_instant(session["start"]),
                   "last_utc": format_instant(session["last_ts"])}
    return {
        "user_id": user_id,
        "as_of": _instant(now),
        "clock": store.clock.describe(),
        "found": any(f["windows"].values()) or bool(f["recent"] or f["emotion"] or f["vectors"] or session),
        "windows": f["windows"],
        "session": session,
        "recent": [{**r, "utc": format_instant(r["ts"])} for r in f["recent"]],
        "emotion": emotion_report(f["emotion"], now, config.emotion_tau_ms),
        "embeddings": embeddings_report(f["vectors"], now, config.embedding_tau_ms),
    }


def format_user(report: dict[str, Any]) -> str:
    lines = [f"user {report['user_id']} as of {report['as_of']['utc']} ({report['clock']})"]
    if not report["found"]:
        lines.append("  nothing stored for this user (wrong id, another Redis, or every window is outside --as-of)")
    for window, counts in report["windows"].items():
        shown = ", ".join(f"{label} {n:,}" for label, n in counts.items()) or "—"
        lines.append(f"  {window:>4} window: {shown}")
    s = report["session"]
    if s is None:
        lines.append("  session: none open or ended in the last 24 h")
    else:
        lines.append(f"  session {s['key']}: {s['length']} events from {s['start_utc']} to {s['last_utc']}"
                     f" (surface {s['surface'] or '—'}, device {s['device'] or '—'})")
    lines.append(f"  last {len(report['recent'])} interactions:")
    for r in report["recent"]:
        lines.append(f"    {r['utc']}  {r['type']:<12} item {r['item_id']}")
    e = report["emotion"]
    if e is None:
        lines.append("  emotion: none")
    else:
        lines.append(f"  emotion: valence {_fmt(e['valence'])} (arousal {_fmt(e['arousal'])}, weight"
                     f" {e['valence_weight']:.3g}); rating signal {_fmt(e['rating_signal'])} (weight"
                     f" {e['rating_weight']:.3g})")
    if not report["embeddings"]:
        lines.append("  embeddings: none")
    for kind, models in report["embeddings"].items():
        for model, v in models.items():
            norm = "—" if v["norm"] is None else f"{v['norm']:.4f}"
            weight = "—" if v["weight"] is None else f"{v['weight']:.4g}"
            lines.append(f"  embedding {kind} [{model}]: norm of the decayed mean {norm}, dim {v['dim']},"
                         f" weight {weight}")
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:+.4f}"


# -- bandit -------------------------------------------------------------------------------------


def bandit_report(
    store: FeatureStore,
    segment: str | None = None,
    items: Sequence[str] | None = None,
    prior: tuple[float, float] = DEFAULT_PRIOR,
    half_life_hours: float | None = None,
) -> dict[str, Any]:
    """α = prior α + clicks, β = prior β + (impressions + skips − clicks), per item and segment.

    With decay on (the replay's `--bandit-half-life-hours`), the stored counts are forward-decayed
    and are re-expressed as of the clock; the same half-life must be given here to read them.
    """
    config = FeatureConfig(bandit_half_life_ms=half_life_hours * 3_600_000 if half_life_hours else None)
    tau = config.bandit_tau_ms
    now = store.clock.now_ms()
    segments = [segment] if segment is not None else store.bandit_segments()
    out: dict[str, Any] = {}
    for seg in segments:
        rows = store.bandit(seg, list(items) if items else None)
        decayed = sorted(i for i, d in rows.items() if d.landmark_ms != 0)
        if decayed and tau is None:
            raise InspectError(f"segment {seg!r} holds forward-decayed counts (e.g. item {decayed[0]!r}): pass the"
                               " --bandit-half-life-hours the replay used")
        per_item = {}
        for item_id in sorted(rows):
            clicks, non_clicks = (float(x) for x in decay.at(rows[item_id], now, tau)[:2])
            alpha, beta = prior[0] + clicks, prior[1] + non_clicks
            per_item[item_id] = {"alpha": alpha, "beta": beta, "clicks": clicks, "non_clicks": non_clicks,
                                 "mean": alpha / (alpha + beta) if alpha + beta > 0 else None}
        out[seg] = per_item
    return {
        "as_of": _instant(now),
        "prior": {"alpha": prior[0], "beta": prior[1]},
        "half_life_hours": half_life_hours,
        "global_segment": keys.GLOBAL_SEGMENT,
        "segments": out,
    }


def format_bandit(report: dict[str, Any], top: int | None = 20) -> str:
    p = report["prior"]
    decay_note = f"half-life {report['half_life_hours']} h" if report["half_life_hours"] else "exact counts"
    lines = [f"bandit posteriors Beta(α, β) as of {report['as_of']['utc']}: prior α={p['alpha']:g}, β={p['beta']:g};"
             f" {decay_note} (segment {report['global_segment']!r} is every segment together)"]
    if not report["segments"]:
        lines.append("  no bandit rows stored")
    for seg, items in report["segments"].items():
        clicks = sum(v["clicks"] for v in items.values())
        trials = sum(v["clicks"] + v["non_clicks"] for v in items.values())
        lines.append(f"  segment {seg}: {len(items):,} items, {clicks:,.0f} clicks in {trials:,.0f} trials")
        ranked = sorted(items.items(), key=lambda kv: (-(kv[1]["mean"] or 0), kv[0]))
        for item_id, v in ranked[:top] if top else ranked:
            lines.append(f"    {item_id:<24} α {v['alpha']:>10,.2f}  β {v['beta']:>12,.2f}  mean {v['mean']:.4f}")
        if top and len(ranked) > top:
            lines.append(f"    … {len(ranked) - top:,} more (--json for all, --item to pick)")
    return "\n".join(lines)


# -- guards -------------------------------------------------------------------------------------


def guards_report(store: FeatureStore) -> dict[str, Any]:
    """Idempotency guards: how many, about how many bytes, and the TTL that bounds them."""
    stats = store.guard_stats()
    return {**stats, "bounded_by": f"each guard expires {stats['ttl_s']:,} s after its merge (wall time)"}


def format_guards(report: dict[str, Any]) -> str:
    return (f"idempotency guards: {report['guards']:,} keys, ≈ {report['approx_bytes']:,} bytes"
            f" ({report['bytes_per_guard']:,} bytes each, sampled); TTL {report['ttl_s']:,} s"
            f" ({report['ttl_s'] / 86_400:g} days) — {report['bounded_by']}")
