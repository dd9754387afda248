"""CountActivity: events per (user, type) and per (item, type) — the first features in Redis."""

from __future__ import annotations

import apache_beam as beam

from schemas.events import Event


def activity_keys(event: Event) -> list[tuple[tuple[str, str, str], int]]:
    """One count for the user and one for the item, by event type."""
    keys = [(("item", event.item_id, event.type.value), 1)]
    if event.user_id is not None:
        keys.append((("user", event.user_id, event.type.value), 1))
    return keys


def _regroup(entry: tuple[tuple[str, str, str], int]) -> tuple[tuple[str, str], tuple[str, int]]:
    (kind, key, etype), n = entry
    return (kind, key), (etype, n)


class CountActivity(beam.PTransform):
    """Events → ((kind, id), {type: count}) with kind `user` or `item`."""

    def expand(self, events):
        return (
            events
            | "Keys" >> beam.FlatMap(activity_keys)
            | "Sum" >> beam.CombinePerKey(sum)
            | "ByEntity" >> beam.Map(_regroup)
            | "Group" >> beam.GroupByKey()
            | "AsDict" >> beam.MapTuple(lambda k, counts: (k, dict(counts)))
        )
