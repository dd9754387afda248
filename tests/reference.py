"""An independent plain-Python reference of the feature state, and the semantic snapshot the
parity tests compare key by key.

`expected_state` needs neither Beam nor Redis nor the Lua scripts: it parses, deduplicates
exactly, applies the `transforms.observe` functions and merges partials per key with
`transforms.summaries.partial.merge`. `snapshot` reads a Redis database into the same view.
Both decode every key the way the readers do, as of one pinned instant: windows read at that
instant, the recent list, live sessions and the current one, forward-decayed sums re-expressed
at that instant (so the landmark a store happened to keep does not matter), trending scores,
item attributes. Guard keys and transport (streams, the vector-upsert queue, live mode's
markers) are left out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import redis

from schemas import keys
from schemas.events import Event, EventError, EventType, try_parse_event
from schemas.features import FeatureConfig
from stores.feature_store import decode_decayed
from stores.vector_store import open_vector_store
from transforms import observe
from transforms.observe import CONSUMERS, ItemInfo
from transforms.summaries import decay, partial, recent, sessions, windows
from transforms.summaries.partial import Partial

View = dict[str, Any]  # key → decoded value


# -- which summary a key holds -------------------------------------------------------------------


def part_of(key: str) -> str:
    """`pr:{u:1}:win` → `win`."""
    return key.split("}:", 1)[1] if "}:" in key else key


def tau_for(part: str, config: FeatureConfig) -> float | None:
    return {"emo": config.emotion_tau_ms, "vec": config.embedding_tau_ms, "bandit": config.bandit_tau_ms,
            "trend": config.trending_tau_ms}[part]


# -- decoding (shared by the reference and the snapshot) -------------------------------------------


def counts_view(fields: Mapping[str, int], now: int) -> dict:
    live = {}
    for field, n in fields.items():
        code, rest = field.split("|", 1)
        if not windows.expired(code, int(rest.rsplit("|", 1)[1]), now) and int(n):
            live[field] = int(n)
    return {"windows": windows.read(fields, now), "buckets": dict(sorted(live.items()))}


def sessions_view(stored: Mapping[str, sessions.Session], now: int) -> dict:
    live = {k: s for k, s in stored.items() if s.end > now - sessions.KEEP_MS}
    cur = sessions.current(live, now)
    return {"live": {k: asdict(s) for k, s in sorted(live.items())}, "current": None if cur is None else cur[0]}


def decayed_view(fields: Mapping[str, decay.Decayed], now: int, tau: float | None) -> dict:
    return {f: decay.at(d, now, tau) for f, d in sorted(fields.items())}


# -- the reference ------------------------------------------------------------------------------


def parse_and_dedupe(lines: Iterable[object]) -> list[Event]:
    """Valid events, one per event_id: the earliest by (ts, canonical form), as batch keeps."""
    best: dict[str, Event] = {}
    for raw in lines:
        e = try_parse_event(raw)
        if isinstance(e, EventError):
            continue
        old = best.get(e.event_id)
        if old is None or (e.ts, _canon(e)) < (old.ts, _canon(old)):
            best[e.event_id] = e
    return list(best.values())


def _canon(e: Event) -> str:
    return json.dumps(e.to_dict(), sort_keys=True)


def expected_state(lines: Iterable[object], now: int, config: FeatureConfig | None = None,
                   scorer: str = "vader") -> View:
    """The semantic view of every key a replay of `lines` writes, as of `now`."""
    from transforms.sentiment import scorer_from_name

    config = config or FeatureConfig()
    model = config.content_model
    events = parse_and_dedupe(lines)

    catalog: dict[str, Event] = {}
    for e in events:
        if e.type is EventType.ITEM:
            old = catalog.get(e.item_id)
            if old is None or (e.ts, e.event_id) > (old.ts, old.event_id):
                catalog[e.item_id] = e
    attrs = {i: {**observe.catalog_fields(e, config), "_ts": str(e.ts), "_event": e.event_id}
             for i, e in catalog.items()}
    infos = {i: observe.item_info(f, model) for i, f in attrs.items()}

    score = scorer_from_name(scorer).score
    parts: dict[str, Partial] = {}

    def add(keyed: list[observe.Keyed]) -> None:
        for key, p in keyed:
            parts[key] = partial.merge(parts[key], p) if key in parts else p

    for e in events:
        consumers = CONSUMERS[e.type]
        info = infos.get(e.item_id, ItemInfo())
        if "context" in consumers:
            add(observe.context_observations(e, info))
        if "embeddings" in consumers:
            add(observe.embedding_observations(e, info, model, config))
        if "emotion" in consumers:
            valence = score(e.text) if e.type is EventType.REVIEW and e.text else None
            add(observe.emotion_observations(e, valence, config))
        if "bandit" in consumers:
            add(observe.bandit_observations(e, config))
        if "trending" in consumers:
            add(observe.trending_observations(e, config))

    out: View = {keys.item_attributes(i): f for i, f in attrs.items()}
    for key, p in parts.items():
        # The store prunes what no read can see any more; a key left empty does not exist.
        part = part_of(key)
        if p.kind == "counts":
            view = counts_view(p.payload, now)
            if view["buckets"]:
                out[key] = view
        elif p.kind == "recent":
            out[key] = recent.decode(p.payload)
        elif p.kind == "sessions":
            kept = sessions.prune(p.payload, now - sessions.GAP_MS)  # the store's prune rule
            if kept:
                out[key] = sessions_view(kept, now)
        elif p.kind == "trending":
            out[key] = {i: float(decay.at(d, now, p.tau_ms)[0]) for i, d in sorted(p.payload.items())}
        else:
            out[key] = decayed_view(p.payload, now, tau_for(part, config))
    return out


# -- the snapshot of a store --------------------------------------------------------------------


def snapshot(client: redis.Redis, now: int, config: FeatureConfig | None = None) -> View:
    """Every feature key of the database, decoded as the readers do, as of `now`."""
    config = config or FeatureConfig()
    out: View = {}
    for raw_key in client.scan_iter(count=1000):
        key = raw_key.decode()
        part = part_of(key)
        # Feature keys carry a user, item or segment hash tag; the rest is transport (streams,
        # queues, live mode's markers), and guards are bookkeeping.
        if not key.startswith(f"{keys.PREFIX}:{{") or ":g:" in key or part == "trend:landmark":
            continue
        if part == "win":
            out[key] = counts_view({k.decode(): int(v) for k, v in client.hgetall(key).items()}, now)
        elif part == "recent":
            rows = client.zrevrange(key, 0, -1, withscores=True)
            out[key] = recent.decode((int(s), m.decode()) for m, s in rows)
        elif part == "sess":
            stored = {k.decode(): sessions.Session(*json.loads(v)) for k, v in client.hgetall(key).items()}
            out[key] = sessions_view(stored, now)
        elif part in ("emo", "vec", "bandit"):
            fields = {k.decode(): decode_decayed(v) for k, v in client.hgetall(key).items()}
            out[key] = decayed_view(fields, now, tau_for(part, config))
        elif part == "trend":
            landmark = int(client.get(key + ":landmark"))
            factor = float(np.exp((landmark - now) / config.trending_tau_ms))
            out[key] = {m.decode(): float(s) * factor for m, s in sorted(client.zrange(key, 0, -1, withscores=True))}
        elif part == "attrs":
            out[key] = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
        else:
            raise AssertionError(f"snapshot does not know how to decode {key!r}")
    return out


# -- comparison -----------------------------------------------------------------------------------


class Diff:
    """Key-by-key comparison: exact for ints and strings, floats within `rel` of their scale.

    A float array is compared by its ∞-norm: max|a − b| ≤ rel · max(|a|, |b|) over the array, so
    a component that cancels to ~0 in a vector of ordinary magnitude is judged at that magnitude.
    """

    def __init__(self, rel: float = 1e-9) -> None:
        self.rel = rel
        self.max_rel = 0.0
        self.floats = 0
        self.problems: list[str] = []

    def compare(self, a: View, b: View, keys_: Iterable[str] | None = None) -> Diff:
        names = sorted(set(a) | set(b)) if keys_ is None else sorted(keys_)
        for k in names:
            if k not in a or k not in b:
                self.problems.append(f"{k}: only in {'second' if k not in a else 'first'}")
            else:
                self._value(k, a[k], b[k])
        return self

    def _value(self, path: str, x: Any, y: Any) -> None:
        if len(self.problems) > 50:
            return
        if isinstance(x, dict) and isinstance(y, dict):
            if set(x) != set(y):
                self.problems.append(f"{path}: fields differ {sorted(set(x) ^ set(y))[:5]}")
                return
            for f in x:
                self._value(f"{path}.{f}", x[f], y[f])
        elif isinstance(x, np.ndarray | float) or isinstance(y, np.ndarray | float):
            xa, ya = np.atleast_1d(np.asarray(x, dtype=float)), np.atleast_1d(np.asarray(y, dtype=float))
            if xa.shape != ya.shape:
                self.problems.append(f"{path}: shapes {xa.shape} vs {ya.shape}")
                return
            self.floats += xa.size
            scale = max(float(np.max(np.abs(xa))), float(np.max(np.abs(ya))))
            err = float(np.max(np.abs(xa - ya))) if xa.size else 0.0
            rel = err / scale if scale > 0 else err
            self.max_rel = max(self.max_rel, rel)
            if rel > self.rel:
                self.problems.append(f"{path}: {x} vs {y} (relative {rel:.2e})")
        elif isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                self.problems.append(f"{path}: {len(x)} vs {len(y)} entries")
                return
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                self._value(f"{path}[{i}]", u, v)
        elif x != y:
            self.problems.append(f"{path}: {x!r} vs {y!r}")


def raw(client: redis.Redis) -> dict:
    """Every non-guard key's stored bytes, by type: equal dumps mean byte-identical state."""
    out: dict = {}
    for key in client.scan_iter(count=1000):
        if b":g:" in key:
            continue
        kind = client.type(key)
        if kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"list":
            out[key] = client.lrange(key, 0, -1)
        elif kind == b"stream":
            out[key] = client.xrange(key)
        else:
            out[key] = client.get(key)
    return out


def vectors(url: str, snap: dict) -> dict[str, dict[str, np.ndarray]]:
    """Every user and item vector in an embedded store, by collection."""
    users = sorted(k.split("{u:", 1)[1].split("}", 1)[0] for k in snap if part_of(k) == "vec")
    items = sorted(k.split("{i:", 1)[1].split("}", 1)[0] for k in snap if part_of(k) == "attrs")
    store = open_vector_store(url)
    try:
        return {c: store.get(c, items if c.startswith("items") else users) for c in store.collections()}
    finally:
        store.close()
