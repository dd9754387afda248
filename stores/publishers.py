"""Where serving's accepted events go: the Redis Stream (local mode), Pub/Sub or Kafka, by config.

Every sink carries the same payload, the event's canonical JSON line (`event_stream.to_line`), so
whichever one the streaming pipeline reads (`pipelines/live` the Redis Stream, `pipelines/stream`
Pub/Sub or Kafka), it parses exactly what `RecordEvents` validated. `publish` returns once the
sink has acknowledged every event of the batch and raises if it could not (the caller decides
whether that fails the RPC); downstream dedupes on `event_id`, so a retried batch is harmless.

The YAML `events:` section of the serving config picks the sink:

    events:
      sink: redis            # redis (default) | pubsub | kafka
      stream: pr:events      # redis: the stream key (default: the one pipelines/live reads)
      topic: projects/P/topics/events   # pubsub: a topic path, or a name with `project:`
      bootstrap: "broker:9092"          # kafka (or $KAFKA_BOOTSTRAP_SERVERS); `topic:` the topic

Pub/Sub honours `PUBSUB_EMULATOR_HOST`. The cloud clients are imported only when configured.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import redis.asyncio as aioredis

from schemas import keys
from schemas.events import Event
from stores import event_stream

SINKS = ("redis", "pubsub", "kafka")
KAFKA_ENV = "KAFKA_BOOTSTRAP_SERVERS"
PROJECT_ENVS = ("PUBSUB_PROJECT_ID", "GOOGLE_CLOUD_PROJECT")
_KEYS_BY_SINK = {
    "redis": {"sink", "stream"},
    "pubsub": {"sink", "topic", "project"},
    "kafka": {"sink", "topic", "bootstrap"},
}


@runtime_checkable
class Publisher(Protocol):
    async def publish(self, events: Sequence[Event]) -> None:
        """Delivers the events to the sink; returns when the sink has acknowledged all of them."""

    async def aclose(self) -> None:
        """Flushes and releases what the publisher owns."""


class RedisStreamPublisher:
    """Appends a batch to the live event stream in one command (`event_stream.append_command`, entries
    as `append` writes them).

    The client is the server's and is not closed here.
    """

    def __init__(self, client: aioredis.Redis, stream: str = keys.EVENT_STREAM) -> None:
        self.client = client
        self.stream = stream

    async def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        await self.client.eval(*event_stream.append_command(self.stream, events))

    async def aclose(self) -> None:
        return None


class PubSubPublisher:
    """Publishes each event as one Pub/Sub message: data = the JSON line; attributes for routing.

    Attributes: `event_id`, `type`, and `ts` (epoch ms), so `pipelines/stream --timestamp_attribute ts`
    windows by event time. The client batches in its own threads; its futures are awaited here.
    """

    def __init__(self, topic: str, project: str | None = None, client: Any = None) -> None:
        self.topic = pubsub_topic_path(topic, project)  # a config error before any client exists
        if client is None:
            from google.cloud import pubsub_v1  # imported only when Pub/Sub is the sink

            client = pubsub_v1.PublisherClient()
        self.client = client
        self._stopped = False

    async def publish(self, events: Sequence[Event]) -> None:
        futures = [
            self.client.publish(self.topic, _payload(e), event_id=e.event_id, type=e.type.value, ts=str(e.ts))
            for e in events
        ]
        if futures:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))

    async def aclose(self) -> None:
        """Flushes what the client still batches; a second call is a no-op (the client refuses one)."""
        if not self._stopped:
            self._stopped = True
            await asyncio.to_thread(self.client.stop)


class KafkaPublisher:
    """Produces each event as one Kafka record (aiokafka): value = the JSON line, keyed by user.

    The key is the user id (the item id for catalog events), so one user's events keep their order
    within a partition. Idempotent producer with acks=all. The producer needs a running event loop,
    so it starts on the first publish.
    """

    def __init__(self, topic: str, bootstrap: str) -> None:
        try:
            import aiokafka  # noqa: F401  (fail at configuration time, not on the first event)
        except ImportError as exc:
            raise RuntimeError("events.sink kafka needs the `aiokafka` package (pip install aiokafka)") from exc
        if not topic:
            raise ValueError("events.topic: required for the kafka sink")
        if not bootstrap:
            raise ValueError(f"events.bootstrap: required for the kafka sink (or set {KAFKA_ENV})")
        self.topic = topic
        self.bootstrap = bootstrap
        self._producer: Any = None
        self._lock: asyncio.Lock | None = None

    async def _started(self) -> Any:
        if self._producer is None:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._producer is None:
                    from aiokafka import AIOKafkaProducer

                    producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                                enable_idempotence=True, client_id="pulserank-serve")
                    try:
                        await producer.start()
                    except BaseException:
                        await producer.stop()  # a failed start leaves connections behind; the next publish retries
                        raise
                    self._producer = producer
        return self._producer

    async def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        producer = await self._started()
        delivered = [
            await producer.send(self.topic, _payload(e), key=(e.user_id or e.item_id).encode(),
                                headers=[("event_id", e.event_id.encode()), ("type", e.type.value.encode())])
            for e in events
        ]
        await asyncio.gather(*delivered)

    async def aclose(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()


def pubsub_topic_path(topic: str, project: str | None = None) -> str:
    """`projects/P/topics/T` as given, or built from a bare name and the project (config or env)."""
    if not topic:
        raise ValueError("events.topic: required for the pubsub sink")
    if topic.startswith("projects/"):
        parts = topic.split("/")
        if len(parts) != 4 or parts[2] != "topics" or not parts[1] or not parts[3]:
            raise ValueError(f"events.topic: expected projects/<project>/topics/<topic>, got {topic!r}")
        return topic
    project = project or next((os.environ[v] for v in PROJECT_ENVS if os.environ.get(v)), None)
    if not project:
        raise ValueError(f"events.project: required with a bare topic name (or set {' or '.join(PROJECT_ENVS)})")
    return f"projects/{project}/topics/{topic}"


def publisher_from_config(section: Mapping[str, Any] | None, redis_client: aioredis.Redis | None) -> Publisher:
    """The publisher the `events:` section names; absent or empty → the Redis Stream.

    Raises ValueError naming the offending key (`events.sink`, `events.topic`, ...).
    """
    section = dict(section or {})
    sink = section.get("sink", "redis")
    if sink not in SINKS:
        raise ValueError(f"events.sink: unknown sink {sink!r}; one of {', '.join(SINKS)}")
    unknown = sorted(set(section) - _KEYS_BY_SINK[sink])
    if unknown:
        raise ValueError(f"events.{unknown[0]}: not a setting of the {sink} sink")
    if sink == "pubsub":
        return PubSubPublisher(str(section.get("topic") or ""), section.get("project"))
    if sink == "kafka":
        return KafkaPublisher(str(section.get("topic") or ""), section.get("bootstrap") or os.environ.get(KAFKA_ENV))
    if redis_client is None:
        raise ValueError("events.sink: redis needs the server's Redis client")
    return RedisStreamPublisher(redis_client, str(section.get("stream") or keys.EVENT_STREAM))


def _payload(event: Event) -> bytes:
    line = event_stream.to_line(event)
    return line.encode() if isinstance(line, str) else line
