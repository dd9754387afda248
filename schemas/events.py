"""The event contract: one typed event per JSON object, and the validator that admits it.

Every way into Pulserank (log replay, the live stream, `RecordEvents`) parses with
`parse_event`, which returns an `Event` or raises `EventError` naming the offending field
(dotted path, e.g. `attributes.vectors.image[3]`) and why. Nothing else escapes it, whatever
the input, so pipelines can route every failure to a dead-letter output with its reason.

Semantics fixed here:
- `segment`: a user's segment is the event's `context.segment` when given, else `global`.
  Bandit counts are kept per (segment, item) plus the global row.
- `skip`: the user was shown the item and passed over it — a negative signal (a non-click for
  the bandit, a negative weight for embeddings).
- `item`: a catalog upsert; `attributes` carries the item's data and `user_id` is optional.
- `ts` is event time, RFC 3339 or epoch milliseconds; inside the system it is epoch ms.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from schemas.clock import InstantError, format_instant, parse_instant

DEFAULT_SEGMENT = "global"

MAX_LINE_BYTES = 1 << 20
MAX_ID_LEN = 128
MAX_SHORT_LEN = 64
MAX_TEXT_LEN = 5000
MAX_TITLE_LEN = 512
MAX_DESCRIPTION_LEN = 10_000
MAX_CONTEXT_KEYS = 32
MAX_CONTEXT_VALUE_LEN = 256
MAX_CATEGORIES = 64
MAX_CATEGORY_LEN = 128
MAX_MODALITIES = 8
MAX_VECTOR_DIM = 4096
MAX_ATTRIBUTE_EXTRA_LEN = 1024
MAX_POSITION = 10_000
MAX_AMOUNT = 1e9
MAX_DWELL_SECONDS = 86_400.0
RATING_RANGE = (1.0, 5.0)


class EventType(StrEnum):
    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    RATING = "rating"
    REVIEW = "review"
    IMPRESSION = "impression"
    SKIP = "skip"
    ITEM = "item"


NEGATIVE_TYPES = frozenset({EventType.SKIP})

Scalar = str | int | float | bool

_CONTEXT_KNOWN = ("surface", "device", "locale", "segment")
_ATTRIBUTE_KNOWN = ("title", "description", "categories", "price", "created_at", "vectors")
_FIELDS = (
    "event_id", "ts", "user_id", "type", "item_id", "value", "text", "context",
    "request_id", "position", "propensity", "variant", "attributes",
)


class EventError(ValueError):
    """Why an input is not a valid event: the field (dotted path, `$` for the whole) and reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Context:
    """Where the event happened; `extra` holds free scalar keys (session_id, hour, …)."""

    surface: str | None = None
    device: str | None = None
    locale: str | None = None
    segment: str | None = None
    extra: Mapping[str, Scalar] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Scalar]:
        out: dict[str, Scalar] = {k: getattr(self, k) for k in _CONTEXT_KNOWN if getattr(self, k) is not None}
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class ItemAttributes:
    """A catalog item's data, carried by `item` events; `extra` keeps other scalar keys."""

    title: str | None = None
    description: str | None = None
    categories: tuple[str, ...] = ()
    price: float | None = None
    created_at: int | None = None
    vectors: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    extra: Mapping[str, Scalar] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.title is not None:
            out["title"] = self.title
        if self.description is not None:
            out["description"] = self.description
        if self.categories:
            out["categories"] = list(self.categories)
        if self.price is not None:
            out["price"] = self.price
        if self.created_at is not None:
            out["created_at"] = format_instant(self.created_at)
        if self.vectors:
            out["vectors"] = {k: list(v) for k, v in self.vectors.items()}
        out.update(self.extra)
        return out


_EMPTY_CONTEXT = Context()


@dataclass(frozen=True, slots=True)
class Event:
    """A validated event. `ts` is epoch milliseconds (UTC)."""

    event_id: str
    ts: int
    type: EventType
    item_id: str
    user_id: str | None = None
    value: float | None = None
    text: str | None = None
    context: Context = _EMPTY_CONTEXT
    request_id: str | None = None
    position: int | None = None
    propensity: float | None = None
    variant: str | None = None
    attributes: ItemAttributes | None = None

    @property
    def segment(self) -> str:
        return self.context.segment or DEFAULT_SEGMENT

    @property
    def is_negative(self) -> bool:
        return self.type in NEGATIVE_TYPES

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON form: fields in contract order, absent ones omitted."""
        out: dict[str, Any] = {"event_id": self.event_id, "ts": format_instant(self.ts)}
        if self.user_id is not None:
            out["user_id"] = self.user_id
        out["type"] = self.type.value
        out["item_id"] = self.item_id
        for name in ("value", "text"):
            if (v := getattr(self, name)) is not None:
                out[name] = v
        ctx = self.context.to_dict()
        if ctx:
            out["context"] = ctx
        for name in ("request_id", "position", "propensity", "variant"):
            if (v := getattr(self, name)) is not None:
                out[name] = v
        if self.attributes is not None:
            out["attributes"] = self.attributes.to_dict()
        return out


def to_json_line(event: Event) -> str:
    """One compact JSON line (no newline) in canonical form."""
    return json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=False)


class SlotError(EventError):
    """`parse_impressions` refused one slot: `slot` is its index in the slots given."""

    def __init__(self, slot: int, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.slot = slot


def parse_impressions(base: Mapping[str, Any], slots: Sequence[tuple[str, str, int, float]]) -> list[Event]:
    """The `impression` events of one shown list, each exactly what `parse_event` returns for it.

    `base`: the contract fields every slot shares (ts, user_id, request_id, variant, context);
    `slots`: (event_id, item_id, position, propensity) per shown item. The shared fields are
    validated once, with the first slot, instead of once per item: a list's impressions are
    most of what serving logs. Raises `SlotError` (the slot, the field, why).
    """
    if not slots:
        return []
    try:
        first = parse_event({**base, "type": EventType.IMPRESSION.value, **_slot_fields(slots[0])})
    except EventError as err:
        raise SlotError(0, err.field, err.reason) from None
    out = [first]
    for k in range(1, len(slots)):
        event_id, item_id, position, propensity = slots[k]
        try:
            out.append(Event(
                event_id=_identifier(event_id, "event_id"), ts=first.ts, type=EventType.IMPRESSION,
                item_id=_identifier(item_id, "item_id"), user_id=first.user_id, context=first.context,
                request_id=first.request_id, position=_position(position), propensity=_propensity(propensity),
                variant=first.variant))
        except EventError as err:
            raise SlotError(k, err.field, err.reason) from None
    return out


def _slot_fields(slot: tuple[str, str, int, float]) -> dict[str, Any]:
    event_id, item_id, position, propensity = slot
    return {"event_id": event_id, "item_id": item_id, "position": position, "propensity": propensity}


def try_parse_event(raw: object) -> Event | EventError:
    """`parse_event` that returns the error instead of raising it (for routing)."""
    try:
        return parse_event(raw)
    except EventError as err:
        return err


def parse_event(raw: object) -> Event:
    """Validate a JSON line (str/bytes) or a decoded mapping into an `Event`.

    Raises only `EventError`, whatever `raw` is.
    """
    obj = _decode(raw)
    unknown = [k for k in obj if k not in _FIELDS]
    if unknown:
        name = unknown[0] if isinstance(unknown[0], str) else repr(unknown[0])
        raise EventError(name[:MAX_SHORT_LEN], "unknown field")

    event_id = _id(obj, "event_id", required=True)
    etype = _type(obj)
    try:
        ts = parse_instant(_require(obj, "ts"))
    except InstantError as exc:
        raise EventError("ts", str(exc)) from None
    user_id = _id(obj, "user_id", required=etype is not EventType.ITEM)
    item_id = _id(obj, "item_id", required=True)
    value = _value(obj, etype)
    text = _text(obj, etype)
    context = _context(obj.get("context"))
    request_id = _id(obj, "request_id", required=False)
    position = _position(obj.get("position"))
    propensity = _propensity(obj.get("propensity"))
    variant = _id(obj, "variant", required=False, max_len=MAX_SHORT_LEN)
    attributes = _attributes(obj.get("attributes"), etype)
    return Event(
        event_id=event_id, ts=ts, type=etype, item_id=item_id, user_id=user_id, value=value,
        text=text, context=context, request_id=request_id, position=position,
        propensity=propensity, variant=variant, attributes=attributes,
    )


# -- decoding ---------------------------------------------------------------------------------


def _decode(raw: object) -> Mapping[str, Any]:
    if isinstance(raw, bytes | bytearray | memoryview):
        if len(raw) > MAX_LINE_BYTES:
            raise EventError("$", f"line longer than {MAX_LINE_BYTES} bytes")
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EventError("$", f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    if isinstance(raw, str):
        if len(raw) > MAX_LINE_BYTES:
            raise EventError("$", f"line longer than {MAX_LINE_BYTES} characters")
        try:
            raw = json.loads(raw)
        except RecursionError:
            raise EventError("$", "JSON nested too deeply") from None
        except ValueError as exc:
            raise EventError("$", f"not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(raw, Mapping):
        raise EventError("$", f"expected a JSON object, got {_kind(raw)}")
    return raw


def _kind(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list | tuple):
        return "an array"
    if isinstance(v, Mapping):
        return "an object"
    return type(v).__name__


def _require(obj: Mapping[str, Any], name: str) -> Any:
    v = obj.get(name)
    if v is None:
        raise EventError(name, "required")
    return v


# -- field checks -----------------------------------------------------------------------------


def _string(v: object, path: str, max_len: int, *, allow_empty: bool = False) -> str:
    if not isinstance(v, str):
        raise EventError(path, f"expected a string, got {_kind(v)}")
    if len(v) > max_len:
        raise EventError(path, f"longer than {max_len} characters")
    if not allow_empty and not v.strip():
        raise EventError(path, "empty")
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise EventError(path, "not valid Unicode (lone surrogate)") from None
    return v


def _identifier(v: object, path: str, max_len: int = MAX_ID_LEN) -> str:
    s = _string(v, path, max_len)
    if s != s.strip():
        raise EventError(path, "leading or trailing whitespace")
    if not s.isprintable():
        raise EventError(path, "contains control characters")
    return s


def _id(obj: Mapping[str, Any], name: str, *, required: bool, max_len: int = MAX_ID_LEN) -> str | None:
    v = obj.get(name)
    if v is None:
        if required:
            raise EventError(name, "required")
        return None
    return _identifier(v, name, max_len)


def _type(obj: Mapping[str, Any]) -> EventType:
    v = _require(obj, "type")
    if not isinstance(v, str):
        raise EventError("type", f"expected a string, got {_kind(v)}")
    try:
        return EventType(v)
    except ValueError:
        allowed = ", ".join(t.value for t in EventType)
        raise EventError("type", f"unknown type {v[:32]!r}; one of {allowed}") from None


def _number(v: object, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise EventError(path, f"expected a number, got {_kind(v)}")
    try:
        f = float(v)
    except OverflowError:
        raise EventError(path, "number out of range") from None
    if not math.isfinite(f):
        raise EventError(path, "not a finite number")
    return f


def _value(obj: Mapping[str, Any], etype: EventType) -> float | None:
    v = obj.get("value")
    if v is None:
        if etype is EventType.RATING:
            raise EventError("value", "required for rating events (the rating, 1–5)")
        return None
    f = _number(v, "value")
    if etype in (EventType.RATING, EventType.REVIEW):
        lo, hi = RATING_RANGE
        if not lo <= f <= hi:
            raise EventError("value", f"rating must be within {lo:g}–{hi:g}, got {f:g}")
    elif etype is EventType.VIEW:
        if not 0.0 <= f <= MAX_DWELL_SECONDS:
            raise EventError("value", f"dwell seconds must be within 0–{MAX_DWELL_SECONDS:g}, got {f:g}")
    elif not 0.0 <= f <= MAX_AMOUNT:
        raise EventError("value", f"must be within 0–{MAX_AMOUNT:g}, got {f:g}")
    return f


def _text(obj: Mapping[str, Any], etype: EventType) -> str | None:
    v = obj.get("text")
    if v is None:
        if etype is EventType.REVIEW:
            raise EventError("text", "required for review events")
        return None
    if etype is not EventType.REVIEW:
        raise EventError("text", "only review events carry text")
    return _string(v, "text", MAX_TEXT_LEN)


def _scalar(v: object, path: str, max_len: int) -> Scalar:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        return _string(v, path, max_len, allow_empty=True)
    if isinstance(v, int | float):
        _number(v, path)
        if isinstance(v, int) and abs(v) > 2**53:
            raise EventError(path, "integer too large to keep exactly")
        return v
    raise EventError(path, f"expected a string, number or boolean, got {_kind(v)}")


def _key(k: object, prefix: str) -> str:
    if not isinstance(k, str) or not k or len(k) > MAX_SHORT_LEN or not k.isprintable():
        raise EventError(f"{prefix}.{str(k)[:MAX_SHORT_LEN]}", "keys must be 1–64 printable characters")
    return k


def _context(v: object) -> Context:
    if v is None:
        return _EMPTY_CONTEXT
    if not isinstance(v, Mapping):
        raise EventError("context", f"expected an object, got {_kind(v)}")
    if len(v) > MAX_CONTEXT_KEYS:
        raise EventError("context", f"more than {MAX_CONTEXT_KEYS} keys")
    known: dict[str, str] = {}
    extra: dict[str, Scalar] = {}
    for k, item in v.items():
        k = _key(k, "context")
        path = f"context.{k}"
        if k in _CONTEXT_KNOWN:
            if item is not None:
                known[k] = _identifier(item, path, MAX_SHORT_LEN)
        elif item is not None:
            extra[k] = _scalar(item, path, MAX_CONTEXT_VALUE_LEN)
    if not known and not extra:
        return _EMPTY_CONTEXT
    return Context(**known, extra=extra)


def _position(v: object) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise EventError("position", f"expected a whole number, got {_kind(v)}")
    if not 0 <= v <= MAX_POSITION:
        raise EventError("position", f"must be within 0–{MAX_POSITION}, got {v}")
    return v


def _propensity(v: object) -> float | None:
    if v is None:
        return None
    f = _number(v, "propensity")
    if not 0.0 < f <= 1.0:
        raise EventError("propensity", f"must be in (0, 1], got {f:g}")
    return f


def _attributes(v: object, etype: EventType) -> ItemAttributes | None:
    if v is None:
        return None
    if etype is not EventType.ITEM:
        raise EventError("attributes", "only item events carry attributes")
    if not isinstance(v, Mapping):
        raise EventError("attributes", f"expected an object, got {_kind(v)}")
    out: dict[str, Any] = {}
    extra: dict[str, Scalar] = {}
    for k, item in v.items():
        k = _key(k, "attributes")
        path = f"attributes.{k}"
        if item is None:
            continue
        if k == "title":
            out[k] = _string(item, path, MAX_TITLE_LEN)
        elif k == "description":
            out[k] = _string(item, path, MAX_DESCRIPTION_LEN, allow_empty=True)
        elif k == "categories":
            out[k] = _categories(item, path)
        elif k == "price":
            price = _number(item, path)
            if not 0.0 <= price <= MAX_AMOUNT:
                raise EventError(path, f"must be within 0–{MAX_AMOUNT:g}, got {price:g}")
            out[k] = price
        elif k == "created_at":
            try:
                out[k] = parse_instant(item)
            except InstantError as exc:
                raise EventError(path, str(exc)) from None
        elif k == "vectors":
            out[k] = _vectors(item, path)
        else:
            extra[k] = _scalar(item, path, MAX_ATTRIBUTE_EXTRA_LEN)
    return ItemAttributes(**out, extra=extra)


def _categories(v: object, path: str) -> tuple[str, ...]:
    if not isinstance(v, list | tuple):
        raise EventError(path, f"expected an array of strings, got {_kind(v)}")
    if len(v) > MAX_CATEGORIES:
        raise EventError(path, f"more than {MAX_CATEGORIES} categories")
    return tuple(_identifier(c, f"{path}[{i}]", MAX_CATEGORY_LEN) for i, c in enumerate(v))


def _vectors(v: object, path: str) -> dict[str, tuple[float, ...]]:
    if not isinstance(v, Mapping):
        raise EventError(path, f"expected an object of modality → numbers, got {_kind(v)}")
    if len(v) > MAX_MODALITIES:
        raise EventError(path, f"more than {MAX_MODALITIES} modalities")
    out: dict[str, tuple[float, ...]] = {}
    for name, vec in v.items():
        name = _key(name, path)
        vpath = f"{path}.{name}"
        if not isinstance(vec, list | tuple) or not vec:
            raise EventError(vpath, f"expected a non-empty array of numbers, got {_kind(vec)}")
        if len(vec) > MAX_VECTOR_DIM:
            raise EventError(vpath, f"more than {MAX_VECTOR_DIM} dimensions")
        out[name] = tuple(_number(x, f"{vpath}[{i}]") for i, x in enumerate(vec))
    return out
