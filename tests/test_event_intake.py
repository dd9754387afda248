"""Event intake for serving: proto events through the event contract, and out to the event stream.

Each proto case is paired with the JSON line a log would carry for the same event, written by
hand: both must validate to the same `Event`, so the proto mapping is checked against the
contract's own reading, not against itself. The Redis Stream publisher runs against the real
Redis fixture and is read back the way `pipelines/live` reads it; Pub/Sub and Kafka run only
where a broker is reachable (the skip reason names the variable to set).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import keys
from schemas import personalization_pb2 as pb
from schemas.events import (
    MAX_ID_LEN,
    MAX_TEXT_LEN,
    EventError,
    EventType,
    SlotError,
    parse_event,
    parse_impressions,
    to_json_line,
)
from serving.events import (
    BatchError,
    event_from_proto,
    impression_event_id,
    impression_events,
    slate_events,
    validate_batch,
)
from stores import event_stream
from stores.publishers import (
    KAFKA_ENV,
    KafkaPublisher,
    RedisStreamPublisher,
    publisher_from_config,
    pubsub_topic_path,
)

TS = 1_714_564_800_000  # 2024-05-01T12:00:00Z
TS_TEXT = "2024-05-01T12:00:00.250Z"
CTX = pb.Context(surface="home", device="mobile", segment="young", extra={"mood": "calm", "session_id": "s-9"})
CTX_JSON = {"surface": "home", "device": "mobile", "segment": "young", "mood": "calm", "session_id": "s-9"}

# (proto, the same event as a log's JSON line) for every event type.
CASES = {
    "view": (
        pb.Event(event_id="e-view", ts_ms=TS, user_id="u1", type="view", item_id="i1", value=12.5, context=CTX),
        {"event_id": "e-view", "ts": TS, "user_id": "u1", "type": "view", "item_id": "i1", "value": 12.5,
         "context": CTX_JSON},
    ),
    "click": (
        pb.Event(event_id="e-click", ts_rfc3339=TS_TEXT, user_id="u1", type="click", item_id="i1",
                 request_id="req-1", position=0, variant="control"),
        {"event_id": "e-click", "ts": TS_TEXT, "user_id": "u1", "type": "click", "item_id": "i1",
         "request_id": "req-1", "position": 0, "variant": "control"},
    ),
    "add_to_cart": (
        pb.Event(event_id="e-cart", ts_ms=TS, user_id="u1", type="add_to_cart", item_id="i2"),
        {"event_id": "e-cart", "ts": TS, "user_id": "u1", "type": "add_to_cart", "item_id": "i2"},
    ),
    "purchase": (
        pb.Event(event_id="e-buy", ts_ms=TS, user_id="u1", type="purchase", item_id="i2", value=19.99),
        {"event_id": "e-buy", "ts": TS, "user_id": "u1", "type": "purchase", "item_id": "i2", "value": 19.99},
    ),
    "rating": (
        pb.Event(event_id="e-rate", ts_ms=TS, user_id="u2", type="rating", item_id="i3", value=4.0),
        {"event_id": "e-rate", "ts": TS, "user_id": "u2", "type": "rating", "item_id": "i3", "value": 4.0},
    ),
    "review": (
        pb.Event(event_id="e-rev", ts_ms=TS, user_id="u2", type="review", item_id="i3", value=5.0,
                 text="Loved it — would watch again."),
        {"event_id": "e-rev", "ts": TS, "user_id": "u2", "type": "review", "item_id": "i3", "value": 5.0,
         "text": "Loved it — would watch again."},
    ),
    "impression": (
        pb.Event(event_id="e-imp", ts_ms=TS, user_id="u3", type="impression", item_id="i4", request_id="req-2",
                 position=3, propensity=0.25, variant="explore", context=pb.Context(segment="young")),
        {"event_id": "e-imp", "ts": TS, "user_id": "u3", "type": "impression", "item_id": "i4",
         "request_id": "req-2", "position": 3, "propensity": 0.25, "variant": "explore",
         "context": {"segment": "young"}},
    ),
    "skip": (
        pb.Event(event_id="e-skip", ts_ms=TS, user_id="u3", type="skip", item_id="i5", request_id="req-2",
                 position=1),
        {"event_id": "e-skip", "ts": TS, "user_id": "u3", "type": "skip", "item_id": "i5",
         "request_id": "req-2", "position": 1},
    ),
    "item": (
        pb.Event(event_id="e-item", ts_ms=TS, type="item", item_id="i9", attributes=pb.ItemAttributes(
            title="Heat", description="", categories=["Action", "Crime"], price=0.0,
            created_at_rfc3339="1995-12-15T00:00:00Z",
            vectors={"text": pb.Vector(values=[0.5, -0.25, 0.1]), "image": pb.Vector(values=[1.0, 0.0])},
            extra={"brand": "Warner", "color": "blue"})),
        {"event_id": "e-item", "ts": TS, "type": "item", "item_id": "i9", "attributes": {
            "title": "Heat", "categories": ["Action", "Crime"], "price": 0.0, "created_at": "1995-12-15T00:00:00Z",
            "vectors": {"text": [0.5, -0.25, 0.1], "image": [1.0, 0.0]}, "brand": "Warner", "color": "blue"}},
    ),
}


def test_cases_cover_every_event_type() -> None:
    assert set(CASES) == {t.value for t in EventType}


@pytest.mark.parametrize("name", sorted(CASES))
def test_proto_validates_to_the_same_event_as_its_json_line(name: str) -> None:
    proto, line = CASES[name]
    from_proto = parse_event(event_from_proto(proto))
    assert from_proto == parse_event(json.dumps(line))
    assert from_proto.type is EventType(name)
    # ... and the canonical line the stream carries reads back to the same event.
    assert parse_event(to_json_line(from_proto)) == from_proto
    # The proto survives the wire unchanged.
    assert parse_event(event_from_proto(pb.Event.FromString(proto.SerializeToString()))) == from_proto


def test_item_vectors_keep_the_values_the_client_sent() -> None:
    item = parse_event(event_from_proto(CASES["item"][0]))
    assert item.attributes.vectors == {"text": (0.5, -0.25, 0.1), "image": (1.0, 0.0)}  # float32 0.1 stays 0.1
    assert item.user_id is None and item.attributes.price == 0.0 and item.attributes.extra == {
        "brand": "Warner", "color": "blue"}


def test_optional_fields_only_when_present() -> None:
    bare = event_from_proto(pb.Event(event_id="e", ts_ms=TS, user_id="u", type="click", item_id="i"))
    assert bare == {"event_id": "e", "ts": TS, "user_id": "u", "type": "click", "item_id": "i"}
    zeroes = event_from_proto(pb.Event(event_id="e", ts_ms=TS, user_id="u", type="view", item_id="i",
                                       position=0, value=0.0))
    assert zeroes["position"] == 0 and zeroes["value"] == 0.0  # set to zero is not absent


def _event(**fields) -> pb.Event:
    base = {"event_id": f"e-{uuid.uuid4().hex[:8]}", "ts_ms": TS, "user_id": "u1", "type": "click", "item_id": "i1"}
    base.update(fields)
    return pb.Event(**base)


def test_each_bad_event_is_rejected_alone_naming_its_field() -> None:
    batch = [
        _event(),                                                            # 0 ok
        _event(user_id=""),                                                  # 1
        _event(type="like"),                                                 # 2
        _event(ts_ms=1_714_564_800),                                         # 3 seconds, not ms
        _event(ts_rfc3339="yesterday"),                                      # 4
        pb.Event(event_id="e-no-ts", user_id="u1", type="click", item_id="i1"),  # 5 no ts at all
        _event(type="impression", request_id="r", position=0, propensity=0.0),   # 6
        _event(type="impression", request_id="r", position=0, propensity=1.5),   # 7
        _event(type="review", value=4.0, text="x" * (MAX_TEXT_LEN + 1)),     # 8
        _event(type="item", user_id="", attributes=pb.ItemAttributes(price=-1.0)),  # 9
        _event(type="item", user_id="", attributes=pb.ItemAttributes(
            vectors={"image": pb.Vector(values=[0.5, float("nan")])})),     # 10
        _event(type="rating", value=9.0),                                    # 11
        _event(type="impression", request_id="r", position=2, propensity=1.0),  # 12 ok (1 is in (0, 1])
        _event(type="item", user_id="", item_id="i7", attributes=pb.ItemAttributes(title="T")),  # 13 ok
    ]
    intake = validate_batch(batch)
    assert [(i, f) for i, f, _ in intake.rejections] == [
        (1, "user_id"), (2, "type"), (3, "ts"), (4, "ts"), (5, "ts"), (6, "propensity"), (7, "propensity"),
        (8, "text"), (9, "attributes.price"), (10, "attributes.vectors.image[1]"), (11, "value"),
    ]
    reasons = {i: r for i, _, r in intake.rejections}
    assert reasons[2].startswith("unknown type 'like'")
    assert "epoch seconds" in reasons[3]
    assert reasons[5] == "required"
    assert "(0, 1]" in reasons[6] and "(0, 1]" in reasons[7]
    assert reasons[8] == f"longer than {MAX_TEXT_LEN} characters"
    assert reasons[10] == "not a finite number"
    assert len(intake.accepted) + len(intake.rejections) == len(batch)
    assert [e.event_id for e in intake.accepted] == [batch[i].event_id for i in (0, 12, 13)]


def test_batch_cap_refuses_the_batch_naming_events() -> None:
    assert len(validate_batch([_event() for _ in range(5)], max_batch=5).accepted) == 5
    with pytest.raises(BatchError) as err:
        validate_batch([_event() for _ in range(6)], max_batch=5)
    assert err.value.field == "events" and "5" in err.value.reason
    assert validate_batch([]).accepted == [] and validate_batch([]).rejections == []


def test_impressions_carry_what_was_shown_and_dedupe_by_id() -> None:
    shown = [("i1", 0, 0.9), ("i2", 1, 0.35), ("i3", 2, 1.0)]
    ctx = {"surface": "home", "segment": "young"}
    first = impression_events("req-7", "u1", shown, "explore", TS, ctx)
    retry = impression_events("req-7", "u1", shown, "explore", TS + 5, ctx)
    other = impression_events("req-8", "u1", shown, "explore", TS, ctx)
    assert [(e.item_id, e.position, e.propensity) for e in first] == shown
    assert all(e.type is EventType.IMPRESSION and e.request_id == "req-7" and e.variant == "explore"
               and e.segment == "young" and e.context.surface == "home" and e.ts == TS for e in first)
    ids = [e.event_id for e in first]
    assert len(set(ids)) == len(shown)  # one per slot
    assert [e.event_id for e in retry] == ids  # a retried response logs the same ids
    assert not set(ids) & {e.event_id for e in other}  # another request never collides
    assert impression_events("r", "u1", [], "", TS, None) == []
    assert impression_events("r", "u1", [("i1", 0, 0.5)], "", TS, None)[0].variant is None


def test_impression_ids_stay_within_the_contract_for_long_request_ids() -> None:
    long_request = "r" * MAX_ID_LEN
    ids = {impression_event_id(long_request, p) for p in range(50)}
    assert len(ids) == 50 and all(len(i) <= MAX_ID_LEN for i in ids)
    assert impression_event_id(long_request, 3) == impression_event_id(long_request, 3)
    assert len(impression_events(long_request, "u1", [("i1", 0, 0.5)], "v", TS, None)) == 1


def test_impressions_refuse_a_propensity_outside_the_contract() -> None:
    with pytest.raises(EventError) as err:
        impression_events("req-1", "u1", [("i1", 0, 0.0)], "control", TS, None)
    assert err.value.field == "propensity"


def _stream_events() -> list:
    accepted = validate_batch([proto for proto, _ in CASES.values()]).accepted
    assert len(accepted) == len(CASES)
    return accepted + impression_events("req-9", "u1", [("i1", 0, 0.5), ("i2", 1, 0.25)], "control", TS, None)


def test_redis_stream_publisher_writes_what_the_live_driver_reads(redis, redis_url) -> None:
    events = _stream_events()

    async def publish() -> None:
        client = aioredis.from_url(redis_url)
        try:
            publisher = publisher_from_config(None, client)
            assert isinstance(publisher, RedisStreamPublisher) and publisher.stream == keys.EVENT_STREAM
            await publisher.publish(events)
            await publisher.publish([])  # nothing to send is not an error
            await publisher.aclose()
            assert await client.ping()  # the server's client stays open
        finally:
            await client.aclose()

    asyncio.run(publish())
    event_stream.ensure_group(redis)
    entries, redelivered = event_stream.read_batch(redis, "test", count=100, block_ms=100)
    assert not redelivered
    assert [parse_event(e.raw) for e in entries] == events
    # Byte for byte what the synchronous `append` writes for the same event.
    event_stream.append(redis, events[:1], stream="other")
    assert redis.xrange("other")[0][1] == redis.xrange(keys.EVENT_STREAM, count=1)[0][1]


def test_redis_stream_publisher_uses_the_configured_stream(redis, redis_url) -> None:
    events = _stream_events()[:2]

    async def publish() -> None:
        client = aioredis.from_url(redis_url)
        try:
            await publisher_from_config({"sink": "redis", "stream": "pr:test-events"}, client).publish(events)
        finally:
            await client.aclose()

    asyncio.run(publish())
    assert redis.xlen("pr:test-events") == 2 and not redis.exists(keys.EVENT_STREAM)


def test_config_errors_name_the_key(monkeypatch) -> None:
    monkeypatch.delenv(KAFKA_ENV, raising=False)
    for env in ("PUBSUB_PROJECT_ID", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(env, raising=False)
    cases = [
        ({"sink": "rabbit"}, "events.sink"),
        ({"sink": "redis", "topic": "t"}, "events.topic"),
        ({"sink": "kafka", "topic": "events"}, "events.bootstrap"),
        ({"sink": "kafka", "bootstrap": "127.0.0.1:9092"}, "events.topic"),
        ({"sink": "pubsub", "topic": "events"}, "events.project"),
        ({"sink": "pubsub", "topic": "projects/p/subs/x"}, "events.topic"),
        ({"sink": "pubsub"}, "events.topic"),
    ]
    for section, field in cases:
        with pytest.raises(ValueError) as err:
            publisher_from_config(section, None)
        assert str(err.value).startswith(f"{field}:"), (section, str(err.value))


def test_topic_paths_and_kafka_config_from_the_environment(monkeypatch) -> None:
    assert pubsub_topic_path("projects/p/topics/events") == "projects/p/topics/events"
    assert pubsub_topic_path("events", "p") == "projects/p/topics/events"
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "from-env")
    assert pubsub_topic_path("events") == "projects/from-env/topics/events"
    monkeypatch.setenv(KAFKA_ENV, "127.0.0.1:9092")
    publisher = publisher_from_config({"sink": "kafka", "topic": "events"}, None)
    assert isinstance(publisher, KafkaPublisher) and publisher.bootstrap == "127.0.0.1:9092"
    asyncio.run(publisher.aclose())  # never started: nothing to stop


def test_kafka_publisher_raises_when_no_broker_answers(recwarn) -> None:
    from aiokafka.errors import KafkaConnectionError

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    publisher = KafkaPublisher("events", f"127.0.0.1:{port}")
    events = impression_events("req-1", "u1", [("i1", 0, 0.5)], "control", TS, None)

    async def run() -> None:
        for _ in range(2):  # a failed start is not cached: the next publish tries again
            with pytest.raises(KafkaConnectionError):
                await publisher.publish(events)
        await publisher.aclose()

    asyncio.run(run())
    assert not [w for w in recwarn if "Unclosed" in str(w.message)]


def test_intake_modules_import_no_tensorflow_or_beam() -> None:
    code = ("import sys, serving.events, stores.publishers; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'apache_beam')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not os.environ.get("PUBSUB_EMULATOR_HOST"),
                    reason="Pub/Sub publisher: set PUBSUB_EMULATOR_HOST to a running emulator "
                           "(gcloud beta emulators pubsub start) to run it")
def test_pubsub_publisher_delivers_lines_with_attributes() -> None:
    from google.cloud import pubsub_v1

    project, name = "pulserank-test", f"events-{uuid.uuid4().hex[:8]}"
    admin, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = admin.create_topic(name=admin.topic_path(project, name)).name
    sub = subscriber.create_subscription(name=subscriber.subscription_path(project, name), topic=topic).name
    events = _stream_events()

    async def publish() -> None:
        publisher = publisher_from_config({"sink": "pubsub", "topic": name, "project": project}, None)
        await publisher.publish(events)
        await publisher.aclose()

    try:
        asyncio.run(publish())
        got = {}
        for _ in range(20):
            if len(got) == len(events):
                break
            reply = subscriber.pull(subscription=sub, max_messages=100, timeout=10)
            for received in reply.received_messages:
                got[received.message.attributes["event_id"]] = received.message
            if reply.received_messages:
                subscriber.acknowledge(subscription=sub, ack_ids=[r.ack_id for r in reply.received_messages])
        by_id = {e.event_id: e for e in events}
        assert set(got) == set(by_id)
        for event_id, message in got.items():
            assert parse_event(message.data) == by_id[event_id]
            assert message.attributes["type"] == by_id[event_id].type.value
            assert int(message.attributes["ts"]) == by_id[event_id].ts
    finally:
        subscriber.delete_subscription(subscription=sub)
        admin.delete_topic(topic=topic)
        subscriber.close()


@pytest.mark.skipif(not os.environ.get(KAFKA_ENV),
                    reason=f"Kafka publisher: set {KAFKA_ENV} to a reachable broker (host:port) to run it")
def test_kafka_publisher_delivers_keyed_lines() -> None:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    bootstrap, topic = os.environ[KAFKA_ENV], f"pulserank-events-{uuid.uuid4().hex[:8]}"
    events = _stream_events()

    async def run() -> list:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
            publisher = publisher_from_config({"sink": "kafka", "topic": topic, "bootstrap": bootstrap}, None)
            await publisher.publish(events)
            await publisher.aclose()
            consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                        group_id=None, enable_auto_commit=False)
            await consumer.start()
            records: list = []
            try:
                for _ in range(20):
                    if len(records) >= len(events):
                        break
                    for batch in (await consumer.getmany(timeout_ms=1000)).values():
                        records.extend(batch)
            finally:
                await consumer.stop()
            return records
        finally:
            await admin.delete_topics([topic])
            await admin.close()

    records = asyncio.run(run())
    by_id = {e.event_id: e for e in events}
    assert sorted(parse_event(r.value).event_id for r in records) == sorted(by_id)
    for r in records:
        event = by_id[dict(r.headers)["event_id"].decode()]
        assert parse_event(r.value) == event
        assert r.key.decode() == (event.user_id or event.item_id)


# -- shown lists: parse_impressions and the Slate message ----------------------------------------

_ids = st.one_of(st.text(min_size=1, max_size=8), st.sampled_from(["", " x", "x\n", "i" * (MAX_ID_LEN + 1)]))
_propensities = st.one_of(st.floats(min_value=1e-6, max_value=1.0),
                          st.sampled_from([0.0, -0.5, 1.5, float("nan"), float("inf")]))


@settings(max_examples=300, deadline=None)
@given(user=_ids, request=_ids, ts=st.sampled_from([TS, 5, TS_TEXT]),
       slots=st.lists(st.tuples(_ids, st.integers(-1, 3), _propensities), max_size=5))
def test_parse_impressions_says_what_parse_event_says_of_each_slot(user, request, ts, slots) -> None:
    """The shared fields are checked once, not per slot: the result (events, or the first refused
    slot with its field and reason) must be exactly what the contract gives slot by slot."""
    base = {"ts": ts, "user_id": user, "request_id": request, "variant": "control", "context": {"segment": "s"}}
    full = [(f"imp:{k}", item, position, p) for k, (item, position, p) in enumerate(slots)]
    expected: list = []
    for k, (event_id, item, position, p) in enumerate(full):
        try:
            expected.append(parse_event({**base, "type": "impression", "event_id": event_id, "item_id": item,
                                         "position": position, "propensity": p}))
        except EventError as err:
            expected = (k, err.field, err.reason)
            break
    try:
        got = parse_impressions(base, full)
    except SlotError as err:
        got = (err.slot, err.field, err.reason)
    assert got == expected


def _slate(**kw) -> pb.Slate:
    fields = {"request_id": "req-5", "user_id": "u1", "ts_ms": TS, "variant": "control",
              "context": pb.Context(segment="young", surface="home"), "item_ids": ["i1", "i2", "i3"],
              "propensities": [0.9, 0.35, 1.0]}
    return pb.Slate(**{**fields, **kw})


def test_a_slate_gives_the_impressions_the_origin_logs_for_the_same_list() -> None:
    shown = [("i1", 0, 0.9), ("i2", 1, 0.35), ("i3", 2, 1.0)]
    assert slate_events(_slate()) == impression_events("req-5", "u1", shown, "control", TS,
                                                       {"segment": "young", "surface": "home"})
    assert slate_events(_slate(variant="", context=None))[0].variant is None


@pytest.mark.parametrize("kw, field", [
    ({"request_id": ""}, "request_id"),
    ({"user_id": ""}, "user_id"),
    ({"user_id": " u1"}, "user_id"),
    ({"ts_ms": 0}, "ts_ms"),
    ({"item_ids": []}, "item_ids"),
    ({"item_ids": ["i1", "", "i3"]}, "item_ids[1]"),
    ({"propensities": [0.9, 0.35]}, "propensities"),
    ({"propensities": [0.9, 0.35, 0.0]}, "propensities[2]"),
    ({"propensities": [float("nan"), 0.35, 0.5]}, "propensities[0]"),
])
def test_a_bad_slate_is_refused_whole_naming_the_field(kw, field) -> None:
    with pytest.raises(EventError) as err:
        slate_events(_slate(**kw))
    assert err.value.field == field
    intake = validate_batch([_event()], slates=[_slate(), _slate(**kw), _slate(request_id="req-6")])
    assert [(i, f) for i, f, _ in intake.slate_rejections] == [(1, field)]
    assert len(intake.accepted) == 1 + 3 + 3 and not intake.rejections


def test_the_batch_cap_counts_each_slate_item() -> None:
    assert len(validate_batch([_event()], max_batch=4, slates=[_slate()]).accepted) == 4
    with pytest.raises(BatchError) as err:
        validate_batch([_event(), _event()], max_batch=4, slates=[_slate()])
    assert err.value.field == "slates" and "(5)" in err.value.reason
