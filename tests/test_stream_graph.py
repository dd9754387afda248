"""The real-runner streaming pipeline: its graph builds for Dataflow-style options without submitting.

Nothing is submitted (no cloud here): the Pub/Sub pipeline is constructed with DataflowRunner
options and its runner-API form must round-trip. The Kafka source is a Java cross-language
transform expanded at graph-build time, so it needs an expansion service. Everything after the
source also runs here, with a TestStream in the source's place.
"""

from __future__ import annotations

import json
import os
import socket

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_stream

from pipelines import stream
from schemas.clock import clock_from
from stores import event_stream
from stores.feature_store import FeatureStore

DATAFLOW = ["--runner=DataflowRunner", "--project=pulserank-test", "--region=europe-west1",
            "--temp_location=gs://pulserank-test/tmp", "--redis_url=redis://redis.internal:6379/0",
            "--dry_run=True"]  # Beam skips its GCS bucket checks (network) in a dry run
PUBSUB = ["--source=pubsub", "--subscription=projects/pulserank-test/subscriptions/events"]


def _names(proto) -> set[str]:
    return {t.unique_name for t in proto.components.transforms.values()}


@pytest.mark.parametrize("dead_letters", [[], ["--dead_letter_topic=projects/pulserank-test/topics/dead"]],
                         ids=["redis-stream", "pubsub-topic"])
def test_pubsub_pipeline_builds_for_dataflow_and_round_trips(dead_letters: list[str]) -> None:
    p = stream.pipeline([*DATAFLOW, *PUBSUB, *dead_letters])
    assert type(p.runner).__name__ == "DataflowRunner"
    assert p.options.view_as(beam.options.pipeline_options.StandardOptions).streaming
    proto = p.to_runner_api()
    names = _names(proto)
    sink = "DeadLetters/WritePubSub" if dead_letters else "DeadLetters/Append"
    assert {"Source/ReadPubSub", "Source/Lines", "StreamingFeatures/StreamingParse", "StreamingFeatures/EmitPanes",
            "StreamingFeatures/WriteFeatures", sink} <= names
    assert any(n.endswith("/Dedupe") for n in names)  # dedupe within the horizon, before the panes

    again = beam.Pipeline.from_runner_api(proto, p.runner, p.options).to_runner_api()
    assert _names(again) == names
    assert len(again.components.pcollections) == len(proto.components.pcollections)


def test_options_are_checked_before_anything_is_built() -> None:
    with pytest.raises(ValueError, match="--redis_url"):
        stream.pipeline([*PUBSUB])
    with pytest.raises(ValueError, match="--subscription"):
        stream.pipeline([*DATAFLOW, "--source=pubsub"])
    with pytest.raises(ValueError, match="--expansion_service"):
        stream.pipeline([*DATAFLOW, "--source=kafka", "--kafka_bootstrap_servers=b:9092", "--kafka_topic=events"])
    with pytest.raises(ValueError, match="neither a jar"):
        stream.expansion_service("not-an-address")
    assert stream.expansion_service("localhost:8097") == "localhost:8097"


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


KAFKA_SERVICE = os.environ.get("PULSERANK_KAFKA_EXPANSION_SERVICE", "")


@pytest.mark.skipif(not (KAFKA_SERVICE and (KAFKA_SERVICE.endswith(".jar") or _reachable(KAFKA_SERVICE))),
                    reason="Kafka's ReadFromKafka is a Java transform expanded at graph-build time: it needs an "
                           "expansion service (set PULSERANK_KAFKA_EXPANSION_SERVICE to a jar path or host:port; "
                           "its jar comes from Maven, which this machine cannot reach)")
def test_kafka_pipeline_builds_for_flink_and_round_trips() -> None:
    p = stream.pipeline(["--runner=FlinkRunner", "--flink_master=localhost:8081",
                         "--redis_url=redis://redis.internal:6379/0", "--source=kafka",
                         "--kafka_bootstrap_servers=localhost:9092", "--kafka_topic=events", "--dead_letter_topic=dead",
                         f"--expansion_service={KAFKA_SERVICE}"])
    proto = p.to_runner_api()
    assert any(n.startswith("Source/ReadKafka") for n in _names(proto))
    assert any(n.startswith("DeadLetters/WriteKafka") for n in _names(proto))
    again = beam.Pipeline.from_runner_api(proto, FnApiRunner(), p.options).to_runner_api()
    assert _names(again) == _names(proto)


AS_OF = "1997-12-05T00:00:00Z"
EVENTS = [
    {"event_id": "item-50", "ts": "1997-12-04T00:00:00Z", "type": "item", "item_id": "50",
     "attributes": {"title": "Star Wars", "categories": ["Action"]}},
    {"event_id": "a", "ts": "1997-12-04T15:55:49Z", "user_id": "1", "type": "rating", "item_id": "50", "value": 4},
    {"event_id": "b", "ts": "1997-12-04T15:55:50Z", "user_id": "1", "type": "click", "item_id": "50"},
]


def test_the_same_pipeline_runs_locally_with_a_test_stream_as_its_source(redis, redis_url, tmp_path) -> None:
    """Everything after the source, on BundleBasedDirectRunner; dead letters to the Redis stream."""
    lines = [(f"test:{i}", 0, raw) for i, raw in enumerate([json.dumps(e).encode() for e in EVENTS] + [b"not json"])]
    source = (test_stream.TestStream()  # imported via its module: pytest would collect a Test* name
              .advance_watermark_to(881193600)
              .add_elements(lines[:1])
              .advance_watermark_to(881250000)
              .add_elements(lines[1:])
              .advance_watermark_to(881300000)  # past every pane before infinity (FIELD-NOTES)
              .advance_watermark_to_infinity())
    p = stream.pipeline(["--runner=BundleBasedDirectRunner", f"--redis_url={redis_url}", f"--as_of={AS_OF}",
                         f"--vector_store=embedded://{tmp_path / 'vectors'}"], source=source)
    p.run().wait_until_finish()

    user = FeatureStore(redis, clock_from(AS_OF)).user_features("1")
    assert [(r["type"], r["item_id"]) for r in user["recent"]] == [("click", "50"), ("rating", "50")]  # b, a
    assert user["windows"]["24h"] == {"c:Action": 2, "t:click": 1, "t:rating": 1}
    dead = event_stream.dead_letters(redis)
    assert [(d["source"], d["field"], d["raw"]) for d in dead] == [("test:3", "$", "not json")]
