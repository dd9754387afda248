"""The event contract: valid events round-trip, bad ones name their field, nothing else escapes."""

from __future__ import annotations

import copy
import json
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from schemas.clock import MAX_INSTANT_MS, MIN_INSTANT_MS, format_instant
from schemas.events import (
    DEFAULT_SEGMENT,
    EventError,
    EventType,
    parse_event,
    to_json_line,
    try_parse_event,
)

# -- strategies for valid events ----------------------------------------------------------------

ids = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "S")), min_size=1, max_size=40
)
short_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)
instants = st.integers(MIN_INSTANT_MS, MAX_INSTANT_MS - 1)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
scalars = st.one_of(
    st.text(max_size=30), st.integers(-(2**53), 2**53), finite.filter(lambda f: abs(f) < 1e300), st.booleans()
)


@st.composite
def contexts(draw: st.DrawFn) -> dict:
    ctx = {}
    for key in ("surface", "device", "locale", "segment"):
        if draw(st.booleans()):
            ctx[key] = draw(short_ids)
    extra = draw(st.dictionaries(short_ids.map(lambda s: "x_" + s), scalars, max_size=4))
    ctx.update(extra)
    return ctx


@st.composite
def attributes(draw: st.DrawFn) -> dict:
    attrs: dict = {}
    if draw(st.booleans()):
        attrs["title"] = draw(ids)
    if draw(st.booleans()):
        attrs["description"] = draw(st.text(max_size=60))
    if draw(st.booleans()):
        attrs["categories"] = draw(st.lists(short_ids, min_size=1, max_size=4))
    if draw(st.booleans()):
        attrs["price"] = draw(st.floats(0, 1e6))
    if draw(st.booleans()):
        attrs["created_at"] = format_instant(draw(instants))
    if draw(st.booleans()):
        attrs["vectors"] = draw(
            st.dictionaries(st.sampled_from(["text", "image", "audio", "video"]),
                            st.lists(st.floats(-10, 10, width=32), min_size=1, max_size=8), min_size=1)
        )
    if draw(st.booleans()):
        attrs["brand"] = draw(short_ids)
    return attrs


@st.composite
def valid_events(draw: st.DrawFn, etype: EventType | None = None) -> dict:
    """Canonical dicts (the form `Event.to_dict` writes) of every type."""
    etype = etype or draw(st.sampled_from(list(EventType)))
    ev: dict = {"event_id": draw(ids), "ts": format_instant(draw(instants))}
    if etype is not EventType.ITEM or draw(st.booleans()):
        ev["user_id"] = draw(ids)
    ev["type"] = etype.value
    ev["item_id"] = draw(ids)
    if etype in (EventType.RATING, EventType.REVIEW):
        if etype is EventType.RATING or draw(st.booleans()):
            ev["value"] = draw(st.floats(1, 5))
    elif etype is EventType.VIEW:
        if draw(st.booleans()):
            ev["value"] = draw(st.floats(0, 3600))
    elif draw(st.booleans()):
        ev["value"] = draw(st.floats(0, 1e6))
    if etype is EventType.REVIEW:
        ev["text"] = draw(st.text(min_size=1, max_size=80).filter(str.strip))
    ctx = draw(contexts())
    if ctx:
        ev["context"] = ctx
    if draw(st.booleans()):
        ev["request_id"] = draw(ids)
    if draw(st.booleans()):
        ev["position"] = draw(st.integers(0, 100))
    if draw(st.booleans()):
        ev["propensity"] = draw(st.floats(1e-6, 1.0))
    if draw(st.booleans()):
        ev["variant"] = draw(short_ids)
    if etype is EventType.ITEM and draw(st.booleans()):
        ev["attributes"] = draw(attributes())
    return ev


def rating(**overrides: object) -> dict:
    ev = {"event_id": "e1", "ts": "1997-12-04T15:55:49.000Z", "user_id": "196", "type": "rating",
          "item_id": "242", "value": 3.0}
    ev.update(overrides)
    return ev


def item(**attrs: object) -> dict:
    return {"event_id": "i1", "ts": 881250949000, "type": "item", "item_id": "242",
            "attributes": {"title": "Kolya (1996)", "categories": ["Comedy"], **attrs}}


# -- round trips ----------------------------------------------------------------------------------


@given(valid_events())
@settings(max_examples=300)
def test_valid_event_round_trips_unchanged(ev: dict) -> None:
    parsed = parse_event(ev)
    assert parsed.to_dict() == ev
    line = to_json_line(parsed)
    assert parse_event(line) == parsed
    assert parse_event(line.encode()) == parsed
    assert json.loads(line) == ev


@given(instants, st.integers(-14 * 60, 14 * 60))
def test_rfc3339_and_epoch_ms_forms_parse_equal(ms: int, offset_min: int) -> None:
    assume(MIN_INSTANT_MS + 86_400_000 < ms < MAX_INSTANT_MS - 86_400_000)
    utc = format_instant(ms)
    # The same instant written in another UTC offset.
    from datetime import UTC, datetime, timedelta, timezone

    local = datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(timezone(timedelta(minutes=offset_min)))
    with_offset = local.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}" + local.strftime("%z")
    with_offset = with_offset[:-2] + ":" + with_offset[-2:]
    by_ms = parse_event(rating(ts=ms))
    assert parse_event(rating(ts=utc)) == by_ms
    assert parse_event(rating(ts=with_offset)) == by_ms
    assert parse_event(rating(ts=float(ms))) == by_ms
    assert by_ms.ts == ms


def test_sub_millisecond_fractions_truncate() -> None:
    assert parse_event(rating(ts="1997-12-04T15:55:49.123999Z")).ts == 881250949123


# -- one bad field at a time ----------------------------------------------------------------------

# field path → bad values; every top-level field and the nested ones.
BAD_VALUES: dict[str, list[object]] = {
    "event_id": [None, "", "   ", 7, "x" * 129, "a\nb", " padded", ["a"]],
    "ts": [None, "yesterday", "1997-13-04T00:00:00Z", 881250949, -5, True, "2101-01-01T00:00:00Z", 1.5, {}],
    "type": [None, "purchased", 3, "", "VIEW"],
    "item_id": [None, "", 12, "i" * 129, "tab\tid"],
    "value": [float("nan"), float("inf"), "3", True, -1.0, 10**400],
    "context": ["mobile", [], 5],
    "context.segment": [7, "", "s" * 65, ["a"]],
    "context.surface": [False, "\x00"],
    "context.session": [{"nested": 1}, [1, 2], float("nan")],
    "request_id": [5, "", "r" * 129],
    "position": [-1, 1.5, "2", 10_001, True],
    "propensity": [0, 0.0, 1.0000001, -0.2, "0.5", float("nan")],
    "variant": [3, "", "v" * 65],
}
ITEM_BAD_VALUES: dict[str, list[object]] = {
    "attributes": ["title", [1], 3],
    "attributes.title": [5, "", "t" * 513],
    "attributes.categories": ["Comedy", {"a": 1}],
    "attributes.categories[0]": [5, "", " Comedy"],
    "attributes.price": [-1, "9.99", float("inf")],
    "attributes.created_at": ["not a date", 1],
    "attributes.vectors": [[1.0, 2.0], "v"],
    "attributes.vectors.image": [[], "abc", [1.0] * 4097],
    "attributes.vectors.image[1]": [float("nan"), "x", None],
    "attributes.brand": [{"a": 1}, [1]],
}


def _set_path(ev: dict, path: str, value: object) -> dict:
    ev = copy.deepcopy(ev)
    head, _, rest = path.partition(".")
    if not rest:
        if value is None:
            ev.pop(head, None)
        else:
            ev[head] = value
        return ev
    node = ev.setdefault(head, {})
    key, _, sub = rest.partition(".")
    if key.endswith("]"):  # categories[0]
        name, idx = key[:-1].split("[")
        _set_item(node.setdefault(name, ["ok"]), int(idx), value, "ok")
    elif sub.endswith("]"):  # vectors.image[1]
        name, idx = sub[:-1].split("[")
        _set_item(node.setdefault(key, {}).setdefault(name, [0.5, 0.5, 0.5]), int(idx), value, 0.5)
    elif sub:
        node.setdefault(key, {})[sub] = value
    else:
        node[key] = value
    return ev


def _set_item(items: list, idx: int, value: object, filler: object) -> None:
    """Sets items[idx], first padding a drawn list that is too short to have that index."""
    items.extend([filler] * (idx + 1 - len(items)))
    items[idx] = value


@st.composite
def one_bad_field(draw: st.DrawFn) -> tuple[dict, str]:
    table = draw(st.sampled_from(["event", "item"]))
    if table == "item":
        ev = draw(valid_events(EventType.ITEM))
        ev.setdefault("attributes", {})
        field = draw(st.sampled_from(sorted(ITEM_BAD_VALUES)))
        bad = draw(st.sampled_from(ITEM_BAD_VALUES[field]))
    else:
        ev = draw(valid_events(draw(st.sampled_from([t for t in EventType if t is not EventType.ITEM]))))
        field = draw(st.sampled_from(sorted(BAD_VALUES)))
        bad = draw(st.sampled_from(BAD_VALUES[field]))
        if field == "value" and ev["type"] in ("rating", "review"):
            assume(not (isinstance(bad, float) and 1 <= bad <= 5))
    return _set_path(ev, field, bad), field


@given(one_bad_field())
@settings(max_examples=500)
def test_one_bad_field_is_named(case: tuple[dict, str]) -> None:
    ev, field = case
    with pytest.raises(EventError) as info:
        parse_event(ev)
    assert info.value.field == field, (info.value, ev)
    # The JSON line form names the same field (where the bad value survives JSON).
    try:
        line = json.dumps(ev, allow_nan=True)
    except (TypeError, ValueError):
        return
    err = try_parse_event(line)
    assert isinstance(err, EventError)


def test_every_field_has_bad_values() -> None:
    top_level = {"event_id", "ts", "user_id", "type", "item_id", "value", "text", "context",
                 "request_id", "position", "propensity", "variant", "attributes"}
    covered = {f.split(".")[0].split("[")[0] for f in [*BAD_VALUES, *ITEM_BAD_VALUES]}
    # user_id and text depend on the type; they have targeted tests below.
    assert top_level - covered == {"user_id", "text"}


# -- targeted bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "field", "reason"),
    [
        (rating(user_id=None), "user_id", "required"),
        (rating(user_id=""), "user_id", "empty"),
        (rating(user_id="u" * 129), "user_id", "longer than 128"),
        (rating(user_id="\ud800"), "user_id", "lone surrogate"),
        (rating(value=None), "value", "required for rating"),
        (rating(value=0.5), "value", "1–5"),
        (rating(value=5.5), "value", "1–5"),
        (rating(type="view", value=90_000), "value", "dwell"),
        (rating(type="purchase", value=-3), "value", "0–"),
        (rating(type="review", text=None), "text", "required for review"),
        (rating(type="review", text="  "), "text", "empty"),
        (rating(type="review", text="x" * 5001), "text", "longer than 5000"),
        (rating(type="click", value=None, text="hi"), "text", "only review"),
        (rating(ts=881250949), "ts", "epoch seconds"),
        (rating(ts="1989-12-31T23:59:59Z"), "ts", "outside"),
        (rating(ts="2026-02-30T00:00:00Z"), "ts", "not a valid date"),
        (rating(ts="2026-01-01T00:00:00+25:00"), "ts", "offset"),
        (rating(ts="2026-01-01"), "ts", "RFC 3339"),
        (rating(propensity=0), "propensity", "(0, 1]"),
        (rating(propensity=1.5), "propensity", "(0, 1]"),
        (rating(position=2.0), "position", "whole number"),
        (rating(colour="red"), "colour", "unknown field"),
        (rating(type="skip", attributes={"title": "x"}), "attributes", "only item"),
        (rating(context={"k" * 65: 1}), "context." + "k" * 64, "keys"),
        (rating(context={f"k{i}": i for i in range(33)}), "context", "more than 32"),
        (item(categories=["c"] * 65), "attributes.categories", "more than 64"),
        (item(vectors={f"m{i}": [1.0] for i in range(9)}), "attributes.vectors", "more than 8"),
        (item(extra_id=2**60), "attributes.extra_id", "too large"),
        ({"event_id": "x", "ts": 881250949000, "type": "item"}, "item_id", "required"),
    ],
)
def test_targeted_bad_input(event: dict, field: str, reason: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event(event)
    assert info.value.field == field
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got an array"),
        ("null", "got null"),
        (b"\xff\xfe", "not UTF-8"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("1" * 5000, "not valid JSON"),
        (" " * (1 << 20 + 1), "longer than"),
        (42, "got a number"),
        (None, "got null"),
    ],
)
def test_undecodable_input_is_named_as_whole(raw: object, reason: str) -> None:
    err = try_parse_event(raw)
    assert isinstance(err, EventError)
    assert err.field == "$"
    assert reason in err.reason


# -- arbitrary input ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from(["event_id", "ts", "user_id", "type", "item_id", "value", "text", "context",
                               "position", "propensity", "attributes", "variant", "request_id"])


@given(st.one_of(json_values, st.dictionaries(field_names, json_values, max_size=13)))
@settings(max_examples=400)
def test_arbitrary_json_only_ever_raises_event_error(value: object) -> None:
    for raw in (value, _dumps(value)):
        if raw is None and value is not None:
            continue
        result = try_parse_event(raw)
        assert isinstance(result, EventError) or result.event_id


@given(st.text(max_size=200) | st.binary(max_size=200))
def test_arbitrary_text_only_ever_raises_event_error(raw: str | bytes) -> None:
    result = try_parse_event(raw)
    assert isinstance(result, EventError) or result.event_id


def _dumps(value: object) -> str | None:
    try:
        return json.dumps(value)
    except (ValueError, TypeError):
        return None


# -- semantics fixed by the contract ----------------------------------------------------------------


def test_segment_comes_from_context_else_global() -> None:
    assert parse_event(rating()).segment == DEFAULT_SEGMENT == "global"
    assert parse_event(rating(context={"segment": "women"})).segment == "women"


def test_skip_is_a_negative_signal() -> None:
    skip = parse_event(rating(type="skip", value=None))
    assert skip.is_negative
    assert not parse_event(rating()).is_negative


def test_item_events_need_no_user() -> None:
    ev = parse_event(item(price=9.99, vectors={"image": [0.1, 0.2]}, year=1996))
    assert ev.user_id is None
    assert ev.attributes.categories == ("Comedy",)
    assert ev.attributes.vectors["image"] == (0.1, 0.2)
    assert ev.attributes.extra == {"year": 1996}


def test_integral_floats_stay_numbers() -> None:
    ev = parse_event(rating(value=4))
    assert ev.value == 4.0 and isinstance(ev.value, float)
    assert math.isclose(parse_event(rating(propensity=1)).propensity, 1.0)
