"""Fast pickling of events (and sink writes) between Beam stages.

Beam encodes elements it cannot type with pickle, and every event crosses at least two stage
boundaries in a replay (the dedupe `GroupByKey`, the catalog barrier before lookups). A frozen
slots dataclass pickles through `dataclasses`' generic `__getstate__`/`__setstate__`, which call
`fields()` per object: ~28 µs per event round trip. Registered here with `copyreg`, an event
travels as one flat tuple (its type by value, the empty context as None) and is rebuilt by
setting its slots directly: ~10 µs, same object. Importing this module registers it; a process
that has not imported it still pickles events correctly, only slower.
"""

from __future__ import annotations

import copyreg
import operator
from dataclasses import fields

from schemas.events import Context, Event, EventType, ItemAttributes
from stores.feature_store import Write

_EVENT = tuple(f.name for f in fields(Event))
_CONTEXT = tuple(f.name for f in fields(Context))
_ATTRIBUTES = tuple(f.name for f in fields(ItemAttributes))
_TYPE, _CTX = _EVENT.index("type"), _EVENT.index("context")
_event_state = operator.attrgetter(*_EVENT)
_context_state = operator.attrgetter(*_CONTEXT)
_types = EventType._value2member_map_
_EMPTY_CONTEXT = Context()


def _setters(cls: type, names: tuple[str, ...]) -> tuple:
    """The slots' own descriptors: setting through them skips the frozen `__setattr__`."""
    return tuple(cls.__dict__[n].__set__ for n in names)


_SET_EVENT, _SET_CONTEXT, _SET_ATTRIBUTES = _setters(Event, _EVENT), _setters(Context, _CONTEXT), _setters(
    ItemAttributes, _ATTRIBUTES)


def _build(cls: type, setters: tuple, state: tuple) -> object:
    obj = object.__new__(cls)
    for set_, value in zip(setters, state, strict=True):
        set_(obj, value)
    return obj


def _rebuild_event(state: tuple) -> Event:
    event = _build(Event, _SET_EVENT, state)
    _SET_EVENT[_TYPE](event, _types[state[_TYPE]])
    ctx = state[_CTX]
    _SET_EVENT[_CTX](event, _EMPTY_CONTEXT if ctx is None else _build(Context, _SET_CONTEXT, ctx))
    return event  # type: ignore[return-value]


def _reduce_event(event: Event) -> tuple:
    values = list(_event_state(event))
    values[_TYPE] = event.type.value
    ctx = event.context
    values[_CTX] = None if ctx == _EMPTY_CONTEXT else _context_state(ctx)
    return _rebuild_event, (tuple(values),)


def _rebuild_attributes(state: tuple) -> ItemAttributes:
    return _build(ItemAttributes, _SET_ATTRIBUTES, state)  # type: ignore[return-value]


def _reduce_attributes(attrs: ItemAttributes) -> tuple:
    return _rebuild_attributes, (tuple(getattr(attrs, n) for n in _ATTRIBUTES),)


def _reduce_write(w: Write) -> tuple:
    return Write, (w.kind, w.key, w.summary_id, w.payload)


copyreg.pickle(Event, _reduce_event)
copyreg.pickle(ItemAttributes, _reduce_attributes)
copyreg.pickle(Write, _reduce_write)  # the sink's GroupIntoBatches buffers every write in state
