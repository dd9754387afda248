"""Beam composites of the training path: events → catalog rows and point-in-time examples.

Small and composed like the feature transforms: the math (`models/examples.py`) is plain
Python; these only key, group and route. Held-out (user, item) pairs of an evaluation split
come in as a side input and never reach training.
"""

from __future__ import annotations

from collections.abc import Iterable

import apache_beam as beam

from models import examples
from schemas.events import Event, EventType


def _latest(events: Iterable[Event]) -> Event:
    return max(events, key=lambda e: (e.ts, e.event_id))


class CatalogRows(beam.PTransform):
    """`item` events → (item_id, latest item event): last writer wins, as in the feature store."""

    def expand(self, events):
        return (
            events
            | "Items" >> beam.Filter(lambda e: e.type == EventType.ITEM and e.item_id is not None)
            | "ByItem" >> beam.Map(lambda e: (e.item_id, e))
            | "Latest" >> beam.CombinePerKey(_latest)
        )


def _user_examples(user_and_rows, catalog: dict[str, Event], held_out, history_len: int):
    user, rows = user_and_rows
    held = set(held_out[user])  # a Beam MultiMap: [] for users with nothing held out
    rows = [x for x in rows if x.item_id not in held]
    yield from examples.user_examples(rows, _categories_of(rows, catalog), history_len)


def _categories_of(rows, catalog: dict[str, Event]) -> dict[str, tuple[str, ...]]:
    out = {}
    for x in rows:
        e = catalog.get(x.item_id)
        out[x.item_id] = tuple(e.attributes.categories) if e is not None and e.attributes else ()
    return out


def _pair(pair) -> tuple[str, str]:
    return pair[0], pair[1]


class PointInTimeExamples(beam.PTransform):
    """Events → raw training examples (one per labelled interaction, features strictly earlier).

    `catalog` is the CatalogRows output (a side input: it is the small side); `held_out` a
    PCollection of (user_id, item_id) pairs to leave out, or None.
    """

    def __init__(self, catalog, held_out=None, history_len: int = examples.HISTORY_LEN) -> None:
        super().__init__()
        self.catalog = catalog
        self.held_out = held_out
        self.history_len = history_len

    def expand(self, events):
        held_out = self.held_out
        if held_out is None:
            held_out = events.pipeline | "NoHoldout" >> beam.Create([])
        history_len = self.history_len
        return (
            events
            | "Interactions" >> beam.FlatMap(lambda e: [x] if (x := examples.interaction(e)) else [])
            | "ByUser" >> beam.Map(lambda x: (x.user_id, x))
            | "Group" >> beam.GroupByKey()
            | "Examples" >> beam.FlatMap(
                lambda kv, catalog, held: _user_examples(kv, catalog, held, history_len),
                catalog=beam.pvalue.AsDict(self.catalog),
                held=beam.pvalue.AsMultiMap(held_out | "AsPairs" >> beam.Map(_pair).with_output_types(tuple[str, str])),
            )
        )
