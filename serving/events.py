"""Event intake for `RecordEvents` and for the impressions `Personalize` logs (no I/O here).

A proto `Event` is turned into the JSON-shaped dict of the event contract and validated by the
same `schemas.events.parse_event` that log replay and the live stream use, so an event means the
same whichever door it came in by, and a rejection names the field as the contract does
("user_id", "ts", "attributes.vectors.image[3]", ...). Publishing is `stores.publishers`' job.

`json_format.MessageToDict` does the bulk of the mapping: it omits unset plain fields, keeps
`optional` fields that were set (even to zero), and prints float32 vector components by their
shortest repr (0.1f stays 0.1). What it gets wrong for the contract is fixed up after: int64 as
strings, the `ts` / `created_at` oneofs, the `Vector` wrapper, the `extra` maps (flattened into
their parent, as the contract keeps free keys), and non-finite doubles printed as "NaN".
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from schemas import personalization_pb2
from schemas.events import MAX_ID_LEN, Event, EventError, SlotError, parse_impressions, try_parse_event

DEFAULT_MAX_BATCH = 1000
_NON_FINITE = frozenset({"NaN", "Infinity", "-Infinity"})


class BatchError(ValueError):
    """The batch as a whole is refused (e.g. too many events): the request field and why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Intake:
    """A validated batch: accepted events in request order (then the accepted slates' impressions),
    and (index, field, reason) per refused event and per refused slate."""

    accepted: list[Event]
    rejections: list[tuple[int, str, str]]
    slate_rejections: list[tuple[int, str, str]] = field(default_factory=list)


def event_from_proto(msg: personalization_pb2.Event) -> dict:
    """The contract's dict for a proto event; absent fields stay absent so the contract says "required"."""
    out: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    if "ts_ms" in out:
        out["ts"] = int(out.pop("ts_ms"))
    elif "ts_rfc3339" in out:
        out["ts"] = out.pop("ts_rfc3339")
    for name in ("value", "propensity"):
        if name in out:
            out[name] = _number(out[name])
    if "context" in out:
        out["context"] = _flatten_extra(out["context"])
    if "attributes" in out:
        out["attributes"] = _attributes(out["attributes"])
    return out


def validate_batch(msgs: Sequence[personalization_pb2.Event], max_batch: int = DEFAULT_MAX_BATCH,
                   slates: Sequence[personalization_pb2.Slate] = ()) -> Intake:
    """Validates each event and each slate on its own; one bad one never fails the others.

    Raises `BatchError` only when the batch (events plus the slates' items) is larger than `max_batch`.
    """
    size = len(msgs) + sum(len(s.item_ids) for s in slates)
    if size > max_batch:
        field_name = "slates" if slates else "events"
        raise BatchError(field_name, f"more than {max_batch} events in one batch ({size})")
    accepted: list[Event] = []
    rejections: list[tuple[int, str, str]] = []
    for i, msg in enumerate(msgs):
        result = try_parse_event(event_from_proto(msg))
        if isinstance(result, EventError):
            rejections.append((i, result.field, result.reason))
        else:
            accepted.append(result)
    slate_rejections: list[tuple[int, str, str]] = []
    for i, slate in enumerate(slates):
        try:
            accepted.extend(slate_events(slate))
        except EventError as err:
            slate_rejections.append((i, err.field, err.reason))
    return Intake(accepted, rejections, slate_rejections)


def intake_response(intake: Intake) -> personalization_pb2.RecordEventsResponse:
    """What `RecordEvents` answers for a validated batch (origin and edge alike)."""
    def rejections(found: list[tuple[int, str, str]]) -> list[personalization_pb2.Rejection]:
        return [personalization_pb2.Rejection(index=i, field=f, reason=r) for i, f, r in found]

    return personalization_pb2.RecordEventsResponse(accepted=len(intake.accepted),
                                                    rejections=rejections(intake.rejections),
                                                    slate_rejections=rejections(intake.slate_rejections))


def impression_event_id(request_id: str, position: int) -> str:
    """Stable per (request, slot), so a retried publish of the same response dedupes downstream."""
    readable = f"imp:{request_id}:{position}"
    if len(readable) <= MAX_ID_LEN:
        return readable
    digest = hashlib.blake2b(f"{request_id}\x00{position}".encode(), digest_size=20).hexdigest()
    return f"imp:{digest}"


def impression_events(request_id: str, user_id: str, items: Sequence[tuple[str, int, float]], variant: str,
                      ts_ms: int, context: Mapping[str, Any] | None) -> list[Event]:
    """One `impression` per shown (item_id, position, propensity), validated by the contract.

    Raises `EventError` on a value the contract refuses (a serving bug, e.g. propensity 0).
    """
    base: dict[str, Any] = {"ts": ts_ms, "user_id": user_id, "request_id": request_id}
    if variant:
        base["variant"] = variant
    if context:
        base["context"] = dict(context)
    return parse_impressions(base, [(impression_event_id(request_id, position), item_id, position, propensity)
                                    for item_id, position, propensity in items])


_SLOT_FIELDS = {"item_id": "item_ids", "propensity": "propensities", "position": "item_ids"}


def slate_events(msg: personalization_pb2.Slate) -> list[Event]:
    """A `Slate`'s impressions, as `impression_events` makes them for the same list.

    Raises `EventError` naming the slate's field: "request_id", "ts_ms", "item_ids[3]", ...
    """
    if not msg.request_id:
        raise EventError("request_id", "required")
    if not msg.user_id:
        raise EventError("user_id", "required")
    if not msg.item_ids:
        raise EventError("item_ids", "empty: a slate shows at least one item")
    if len(msg.propensities) != len(msg.item_ids):
        raise EventError("propensities", f"expected {len(msg.item_ids)} values (one per item), "
                                         f"got {len(msg.propensities)}")
    context = json_format.MessageToDict(msg.context, preserving_proto_field_name=True) if msg.HasField("context") \
        else None
    shown = [(item, k, p) for k, (item, p) in enumerate(zip(msg.item_ids, msg.propensities, strict=True))]
    try:
        return impression_events(msg.request_id, msg.user_id, shown, msg.variant, msg.ts_ms,
                                 _flatten_extra(context) if context else None)
    except SlotError as err:
        if err.field in _SLOT_FIELDS:
            raise EventError(f"{_SLOT_FIELDS[err.field]}[{err.slot}]", err.reason) from None
        raise EventError("ts_ms" if err.field == "ts" else err.field, err.reason) from None


def _number(v: Any) -> Any:
    """MessageToDict prints non-finite doubles as strings; give the contract the number to refuse."""
    return float(v) if isinstance(v, str) and v in _NON_FINITE else v


def _flatten_extra(obj: dict[str, Any]) -> dict[str, Any]:
    """Free keys sit beside the known ones in the contract; a known field wins over an extra key."""
    extra = obj.pop("extra", None) or {}
    return {**extra, **obj}


def _attributes(attrs: dict[str, Any]) -> dict[str, Any]:
    """Known fields are converted before the free keys join them, so an extra key can't be misread."""
    if "created_at_ms" in attrs:
        attrs["created_at"] = int(attrs.pop("created_at_ms"))
    elif "created_at_rfc3339" in attrs:
        attrs["created_at"] = attrs.pop("created_at_rfc3339")
    if "price" in attrs:
        attrs["price"] = _number(attrs["price"])
    if "vectors" in attrs:
        attrs["vectors"] = {name: [_number(x) for x in vec.get("values", [])]
                            for name, vec in attrs["vectors"].items()}
    return _flatten_extra(attrs)
