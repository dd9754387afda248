"""Session state as mergeable intervals.

An event with `context.session_id` belongs to that session; one without it belongs to an
implicit session: events of a user no more than `GAP_MS` apart. Explicit sessions merge by id;
implicit ones by uniting intervals and coalescing those within the gap — the connected
components of the union, so the result does not depend on order or partitioning.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

GAP_MS = 30 * 60_000
KEEP_MS = 86_400_000  # sessions ended more than 24 h before now are pruned


@dataclass(frozen=True, slots=True)
class Session:
    start: int
    end: int
    count: int
    last_ts: int
    last_event: str  # event_id of the latest event; breaks ties on last_ts
    surface: str
    device: str

    def __reduce__(self):  # pickled across Beam stages: a tuple, not dataclasses' slow __getstate__
        return Session, (self.start, self.end, self.count, self.last_ts, self.last_event, self.surface, self.device)

    def merge(self, other: Session) -> Session:
        latest = max(self, other, key=lambda s: (s.last_ts, s.last_event))
        return Session(min(self.start, other.start), max(self.end, other.end), self.count + other.count,
                       latest.last_ts, latest.last_event, latest.surface, latest.device)


Sessions = dict[str, Session]  # "id:<session id>" or "auto:<start ms>" → Session


def observe(ts: int, event_id: str, session_id: str | None, surface: str | None, device: str | None) -> Sessions:
    s = Session(ts, ts, 1, ts, event_id, surface or "", device or "")
    return {f"id:{session_id}" if session_id else f"auto:{ts}": s}


def merge(a: Sessions, b: Sessions, gap_ms: int = GAP_MS) -> Sessions:
    return merge_all((a, b), gap_ms)


def merge_all(parts: Iterable[Sessions], gap_ms: int = GAP_MS) -> Sessions:
    """`merge` over many parts at once: implicit sessions are sorted and coalesced once."""
    out: Sessions = {}
    implicit: list[Session] = []
    for part in parts:
        for key, s in part.items():
            if key.startswith("id:"):
                out[key] = out[key].merge(s) if key in out else s
            else:
                implicit.append(s)
    implicit.sort(key=lambda s: (s.start, s.end, s.last_ts, s.last_event))
    current: Session | None = None
    for s in implicit:
        if current is not None and s.start - current.end <= gap_ms:
            current = current.merge(s)
        else:
            if current is not None:
                out[f"auto:{current.start}"] = current
            current = s
    if current is not None:
        out[f"auto:{current.start}"] = current
    return out


def prune(sessions: Sessions, now_ms: int) -> Sessions:
    return {k: s for k, s in sessions.items() if s.end > now_ms - KEEP_MS}


def current(sessions: Sessions, now_ms: int) -> tuple[str, Session] | None:
    """The session with the latest event at or before now."""
    live = [(k, s) for k, s in sessions.items() if s.start <= now_ms]
    if not live:
        return None
    return max(live, key=lambda kv: (kv[1].last_ts, kv[1].last_event))
