"""Streaming on a real runner: Kafka or Pub/Sub → the streaming feature transforms → Redis.

    python -m pipelines.stream --runner=DataflowRunner --streaming --project P --region R \\
        --temp_location gs://B/tmp --setup_file ./setup.py \\
        --source pubsub --subscription projects/P/subscriptions/events \\
        --dead_letter_topic projects/P/topics/dead-letters --redis_url rediss://... --vector_store https://...

    python -m pipelines.stream --runner=FlinkRunner --flink_master host:8081 --streaming \\
        --source kafka --kafka_bootstrap_servers broker:9092 --kafka_topic events --dead_letter_topic dead-letters \\
        --expansion_service /path/beam-sdks-java-io-expansion-service.jar  # or host:port \\
        --redis_url redis://...

Sources yield `(source, 0, raw)` like the log readers, so the transforms after them are the ones
`transforms.streaming.StreamingFeatures` composes (parse, dedupe within the horizon, panes, the
batch feature transforms, the Redis merges). `source` names the message (`pubsub:<message id>`,
`kafka:<topic>/<partition>@<offset>`), so a dead letter says where it came from.

Dead letters go where the events came from, a sink any streaming runner supports:
- Pub/Sub → a Pub/Sub topic (`--dead_letter_topic projects/P/topics/T`), the record as JSON data,
  `source` and `field` as attributes;
- Kafka → a Kafka topic (`--dead_letter_topic T`) on the same brokers, keyed by source;
- without `--dead_letter_topic`: the Redis dead-letter stream live mode uses (once per source).

Workers must reach Redis, so `--redis_url` (or `REDIS_URL`) is required: no embedded server. The
embedded vector index has a single writer (a live driver or `drain`), so on a real runner use
Weaviate (`--vector_store https://...`) or drain the queued upserts elsewhere. `--as_of` pins the
clock only where the launcher's environment reaches the workers (local runners).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.portability.portable_runner import PortableRunner

from pipelines.options import FeatureOptions, feature_config
from schemas.clock import AS_OF_ENV, clock_from
from stores.redis_client import ENV_URL
from transforms.sinks import WriteDeadLetterStream
from transforms.streaming import PANE_SECONDS, StreamingFeatures

SOURCES = ("pubsub", "kafka")
_HOST_PORT = re.compile(r"^[\w.\-]+:\d+$|^\[[0-9a-fA-F:]+\]:\d+$")


class StreamOptions(FeatureOptions, PipelineOptions):  # PipelineOptions too: see pipelines/options.py
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--source", choices=SOURCES, default=None, help="where events come from (required)")
        parser.add_argument("--subscription", default=None, help="Pub/Sub: projects/P/subscriptions/S")
        parser.add_argument("--timestamp_attribute", default=None,
                            help="Pub/Sub: message attribute holding the event time (watermark by event time)")
        parser.add_argument("--kafka_bootstrap_servers", default=None, help="Kafka: host:port[,host:port]")
        parser.add_argument("--kafka_topic", default=None, help="Kafka: the events topic")
        parser.add_argument("--kafka_group", default="pulserank", help="Kafka: consumer group id")
        parser.add_argument("--expansion_service", default=None,
                            help="Kafka: the Java expansion service, a jar path or host:port")
        parser.add_argument("--dead_letter_topic", default=None,
                            help="Pub/Sub topic path or Kafka topic; default: the Redis dead-letter stream")
        parser.add_argument("--pane_seconds", type=int, default=PANE_SECONDS, help="event-time pane length")
        parser.add_argument("--max_buffering_secs", type=float, default=1.0,
                            help="flush a partial batch of Redis writes after this long")
        parser.add_argument("--wait", action="store_true", help="block until the job ends (default: submit)")


def expansion_service(value: str | None):
    """A jar path → Beam's JavaJarExpansionService (started at graph build); host:port → as is."""
    if not value:
        raise ValueError("--source kafka needs --expansion_service (a jar path or host:port): "
                         "Beam's default downloads a jar from Maven")
    if value.endswith(".jar") or os.path.isfile(value):
        from apache_beam.transforms.external import JavaJarExpansionService

        return JavaJarExpansionService(value)
    if _HOST_PORT.match(value):
        return value
    raise ValueError(f"--expansion_service {value!r} is neither a jar path nor host:port")


def _pubsub_line(message) -> tuple[str, int, bytes]:
    mid = getattr(message, "message_id", None) or hashlib.sha1(message.data).hexdigest()
    return f"pubsub:{mid}", 0, message.data


def _kafka_line(record) -> tuple[str, int, bytes]:
    return f"kafka:{record.topic}/{record.partition}@{record.offset}", 0, record.value


class ReadPubSubLines(beam.PTransform):
    def __init__(self, subscription: str, timestamp_attribute: str | None = None) -> None:
        super().__init__()
        self.subscription = subscription
        self.timestamp_attribute = timestamp_attribute

    def expand(self, p):
        return (
            p
            | "ReadPubSub" >> beam.io.ReadFromPubSub(subscription=self.subscription, with_attributes=True,
                                                     timestamp_attribute=self.timestamp_attribute)
            | "Lines" >> beam.Map(_pubsub_line)
        )


class ReadKafkaLines(beam.PTransform):
    def __init__(self, bootstrap_servers: str, topic: str, group: str, service) -> None:
        super().__init__()
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.group = group
        self.service = service

    def expand(self, p):
        from apache_beam.io.kafka import ReadFromKafka

        config = {"bootstrap.servers": self.bootstrap_servers, "group.id": self.group,
                  "auto.offset.reset": "earliest"}
        return (
            p
            | "ReadKafka" >> ReadFromKafka(consumer_config=config, topics=[self.topic], with_metadata=True,
                                           commit_offset_in_finalize=True, expansion_service=self.service)
            | "Lines" >> beam.Map(_kafka_line)
        )


def _pubsub_dead_letter(record: dict):
    from apache_beam.io.gcp.pubsub import PubsubMessage

    data = json.dumps(record, ensure_ascii=False, sort_keys=True).encode()
    return PubsubMessage(data, {"source": str(record["source"])[:1000], "field": str(record["field"])[:1000]})


def _kafka_dead_letter(record: dict) -> tuple[bytes, bytes]:
    return str(record["source"]).encode(), json.dumps(record, ensure_ascii=False, sort_keys=True).encode()


class WriteDeadLetterTopic(beam.PTransform):
    """Dead letters to a Pub/Sub or Kafka topic (the source's own kind)."""

    def __init__(self, opts: StreamOptions, service=None) -> None:
        super().__init__()
        self.opts = opts
        self.service = service

    def expand(self, records):
        opts = self.opts
        if opts.source == "pubsub":
            return (records
                    | "ToMessage" >> beam.Map(_pubsub_dead_letter)
                    | "WritePubSub" >> beam.io.WriteToPubSub(opts.dead_letter_topic, with_attributes=True))
        from apache_beam.io.kafka import WriteToKafka

        return (records
                | "ToRecord" >> beam.Map(_kafka_dead_letter).with_output_types(tuple[bytes, bytes])
                | "WriteKafka" >> WriteToKafka({"bootstrap.servers": opts.kafka_bootstrap_servers},
                                               opts.dead_letter_topic, expansion_service=self.service))


def validate(opts: StreamOptions, runner: object | None = None) -> None:
    if opts.source is None:
        raise ValueError("stream needs --source pubsub|kafka")
    if opts.source == "pubsub" and not opts.subscription:
        raise ValueError("--source pubsub needs --subscription projects/P/subscriptions/S")
    if opts.source == "pubsub" and isinstance(runner, PortableRunner):
        # Refused here: Flink would accept the job and fail it while translating the read.
        raise ValueError(f"--source pubsub runs on DataflowRunner (or a direct runner), not {type(runner).__name__}: "
                         "Beam's Python Pub/Sub read is native to Dataflow and portable runners cannot translate it "
                         "(apache/beam#20143); on Flink use --source kafka")
    if opts.source == "kafka" and not (opts.kafka_bootstrap_servers and opts.kafka_topic):
        raise ValueError("--source kafka needs --kafka_bootstrap_servers and --kafka_topic")


def build(p: beam.Pipeline, opts: StreamOptions, url: str, source: beam.PTransform | None = None) -> None:
    """Source → StreamingFeatures → Redis; dead letters to the topic or the Redis stream.

    `source` (yielding `(source, n, raw)`, e.g. a `TestStream` in tests) replaces `--source`.
    """
    service = expansion_service(opts.expansion_service) if opts.source == "kafka" else None
    if source is None:
        validate(opts, p.runner)
        if opts.source == "pubsub":
            source = ReadPubSubLines(opts.subscription, opts.timestamp_attribute)
        else:
            source = ReadKafkaLines(opts.kafka_bootstrap_servers, opts.kafka_topic, opts.kafka_group, service)
    lines = p | "Source" >> source
    out = lines | "StreamingFeatures" >> StreamingFeatures(
        url, opts.vector_store, feature_config(opts), opts.scorer, pane_seconds=opts.pane_seconds,
        max_buffering_secs=opts.max_buffering_secs, registry=opts.registry,
        as_of_ms=clock_from(opts.as_of).pinned_ms if opts.as_of else None)
    if opts.dead_letter_topic and opts.source in SOURCES:
        out["dead_letters"] | "DeadLetters" >> WriteDeadLetterTopic(opts, service)
    else:
        out["dead_letters"] | "DeadLetters" >> WriteDeadLetterStream(url)


def pipeline(argv: Sequence[str] | None = None, source: beam.PTransform | None = None) -> beam.Pipeline:
    """The streaming pipeline for `argv`, built but not run (tests inspect or run it with `source`)."""
    options = PipelineOptions(list(argv or []))
    options.view_as(StandardOptions).streaming = True
    opts = options.view_as(StreamOptions)
    url = opts.redis_url or os.environ.get(ENV_URL, "").strip()
    if not url:
        raise ValueError("stream needs --redis_url (or REDIS_URL) that its workers can reach")
    if opts.as_of:
        os.environ[AS_OF_ENV] = str(clock_from(opts.as_of).pinned_ms)
    p = beam.Pipeline(options=options)
    build(p, opts, url, source)
    return p


def run(argv: Sequence[str] | None = None):
    """Builds and submits the pipeline; returns the runner's result without waiting (streaming)."""
    return pipeline(argv).run()


if __name__ == "__main__":
    p = pipeline(sys.argv[1:])
    result = p.run()
    print(f"submitted: {result}", flush=True)
    if p.options.view_as(StreamOptions).wait:
        result.wait_until_finish()
