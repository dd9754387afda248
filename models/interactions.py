"""Event logs → the positive (user, item, time) interactions offline evaluation ranks against.

Positives are the types in `POSITIVE_TYPES` (view, click, add_to_cart, purchase, rating, review);
`skip` and bare `impression` events are not interactions. The catalogue is every item named by an
`item` event plus every item a user interacted with, so items nobody touched are still ranked (the
full-catalogue protocol). Each line goes through `schemas.events.parse_event`, the one way in; bad
lines are counted (with a few examples) rather than fatal, and an `event_id` seen twice counts once,
as a replay would.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from schemas.events import Event, EventError, EventType, parse_event
from stores.files import match_files, open_read

POSITIVE_TYPES = frozenset({
    EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE, EventType.RATING, EventType.REVIEW,
})
_MAX_EXAMPLES = 5


class InteractionsError(ValueError):
    """The input cannot give interactions: no files match, or no positive interaction in them."""


@dataclass(frozen=True)
class ReadStats:
    """What reading saw; `lines == events + bad_lines + blank_lines` and `events == positives +
    item_events + other_events + duplicate_events`."""

    files: tuple[str, ...] = ()
    lines: int = 0
    blank_lines: int = 0
    bad_lines: int = 0
    events: int = 0
    duplicate_events: int = 0
    positives: int = 0
    item_events: int = 0
    other_events: int = 0  # impressions, skips: not interactions
    bad_examples: tuple[str, ...] = ()  # "path:line: field: reason", the first few

    def summary(self) -> str:
        text = (f"{self.lines:,} lines in {len(self.files)} file(s): {self.positives:,} positive interactions, "
                f"{self.item_events:,} item events, {self.other_events:,} other events, "
                f"{self.duplicate_events:,} duplicate event ids, {self.bad_lines:,} bad lines")
        if self.bad_examples:
            text += "\n  e.g. " + "\n  e.g. ".join(self.bad_examples)
        return text


@dataclass(frozen=True)
class Interactions:
    """Positive interactions as index arrays (sorted by time, then log order) plus the id maps.

    `users[i]`, `items[i]`, `ts[i]` (epoch ms) describe one positive event; repeats of a pair are
    kept here (training may weigh them) and collapsed by `unique()` for evaluation.
    """

    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    users: np.ndarray  # int32 per event
    items: np.ndarray  # int32 per event
    ts: np.ndarray  # int64 epoch ms per event
    item_categories: tuple[tuple[str, ...], ...]  # per item index; () when unknown
    stats: ReadStats = field(default_factory=ReadStats)
    catalog: Mapping[str, Event] = field(default_factory=dict)  # item id → its latest `item` event

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @cached_property
    def user_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.user_ids)}

    @cached_property
    def item_index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.item_ids)}

    def unique(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(users, items, ts) with each (user, item) pair once, at its first time; sorted by user
        then time (then log order), which the splits rely on."""
        key = self.users.astype(np.int64) * max(self.n_items, 1) + self.items
        _, first = np.unique(key, return_index=True)  # events are time-sorted: first index = first ts
        first.sort()
        order = first[np.lexsort((first, self.ts[first], self.users[first]))]
        return self.users[order], self.items[order], self.ts[order]

    def matrix(self) -> sp.csr_matrix:
        """Users × items, 1.0 where the user interacted with the item."""
        users, items, _ = self.unique()
        return pairs_matrix(users, items, (self.n_users, self.n_items))

    @classmethod
    def from_records(cls, records: Iterable[tuple[str, str, int]], catalogue: Sequence[str] = (),
                     categories: Mapping[str, Sequence[str]] | None = None, stats: ReadStats | None = None,
                     catalog: Mapping[str, Event] | None = None) -> Interactions:
        """Build from (user_id, item_id, ts_ms) records in log order; `catalogue`, `categories` and
        `catalog` (item events) add items with no interaction. Ids are indexed in sorted order, so
        the result does not depend on file order."""
        rows = list(records)
        catalog = dict(catalog or {})
        categories = {**{k: e.attributes.categories for k, e in catalog.items() if e.attributes is not None},
                      **(categories or {})}
        user_ids = tuple(sorted({r[0] for r in rows}))
        item_ids = tuple(sorted({r[1] for r in rows} | set(catalogue) | set(categories) | set(catalog)))
        uidx = {u: i for i, u in enumerate(user_ids)}
        iidx = {t: i for i, t in enumerate(item_ids)}
        users = np.fromiter((uidx[r[0]] for r in rows), dtype=np.int32, count=len(rows))
        items = np.fromiter((iidx[r[1]] for r in rows), dtype=np.int32, count=len(rows))
        ts = np.fromiter((r[2] for r in rows), dtype=np.int64, count=len(rows))
        order = np.argsort(ts, kind="stable")
        cats = tuple(tuple(categories.get(t, ())) for t in item_ids)
        return cls(user_ids, item_ids, users[order], items[order], ts[order], cats, stats or ReadStats(), catalog)


def pairs_matrix(users: np.ndarray, items: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """A binary CSR matrix with a 1.0 at each (user, item); repeated pairs stay 1.0."""
    m = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=shape)
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def expand_globs(patterns: str | Sequence[str]) -> list[str]:
    """Comma-separated (or listed) globs → the sorted matching files; an error names a glob that
    matched nothing. Local paths or any Beam filesystem (`gs://…`): see `stores.files`."""
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p.strip()]
    if not patterns:
        raise InteractionsError("--input: no glob given")
    files: set[str] = set()
    for pattern in patterns:
        try:
            found = match_files(pattern.strip())
        except OSError as exc:  # a remote listing failed (permissions, network): say which glob
            raise InteractionsError(f"--input: cannot list {pattern!r}: {exc}") from None
        if not found:
            raise InteractionsError(f"--input: no file matches {pattern!r}")
        files.update(found)
    return sorted(files)


def read_interactions(patterns: str | Sequence[str]) -> Interactions:
    """Read JSONL event logs (globs, local or `gs://…`; `.gz` allowed) into `Interactions`.

    The catalog keeps each item's latest `item` event (by event time; the later line on a tie),
    which gives the item categories and, to content-aware models, the item's attributes.
    """
    files = expand_globs(patterns)
    records: list[tuple[str, str, int]] = []
    catalog: dict[str, Event] = {}
    seen: set[str] = set()
    counts = dict(lines=0, blank_lines=0, bad_lines=0, events=0, duplicate_events=0, positives=0,
                  item_events=0, other_events=0)
    examples: list[str] = []
    for path in files:
        with open_read(path, decompress=True) as f:
            for lineno, line in enumerate(f, start=1):
                counts["lines"] += 1
                if not line.strip():
                    counts["blank_lines"] += 1
                    continue
                try:
                    event = parse_event(line)
                except EventError as exc:
                    counts["bad_lines"] += 1
                    if len(examples) < _MAX_EXAMPLES:
                        examples.append(f"{path}:{lineno}: {exc}")
                    continue
                counts["events"] += 1
                if event.event_id in seen:
                    counts["duplicate_events"] += 1
                    continue
                seen.add(event.event_id)
                if event.type is EventType.ITEM:
                    counts["item_events"] += 1
                    prev = catalog.get(event.item_id)
                    if prev is None or event.ts >= prev.ts:
                        catalog[event.item_id] = event
                elif event.type in POSITIVE_TYPES:
                    counts["positives"] += 1
                    records.append((event.user_id, event.item_id, event.ts))
                else:
                    counts["other_events"] += 1
    stats = ReadStats(files=tuple(files), bad_examples=tuple(examples), **counts)
    if not records:
        raise InteractionsError(f"--input: no positive interaction ({', '.join(sorted(POSITIVE_TYPES))}) in "
                                f"{len(files)} file(s); {stats.summary()}")
    return Interactions.from_records(records, stats=stats, catalog=catalog)
