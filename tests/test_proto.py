"""The gRPC contract: committed stubs match the .proto, and every RPC's fields cross the wire.

The servicer below is deliberately trivial: it derives each response field from the request
(and keeps the request it received), so the assertions check real transport through
serialization, not defaults that happen to match.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from schemas import personalization_pb2 as pb
from schemas import personalization_pb2_grpc as pb_grpc
from schemas.protos import OUTPUTS, REPO_ROOT


class EchoServicer(pb_grpc.PersonalizationServicer):
    """Derives responses from requests and remembers what arrived, for the assertions."""

    def __init__(self) -> None:
        self.received: list[object] = []

    def Personalize(
        self, request: pb.PersonalizeRequest, context: grpc.ServicerContext
    ) -> pb.PersonalizeResponse:
        self.received.append(request)
        excluded = set(request.filters.exclude_item_ids)
        ids = [i for i in request.candidate_item_ids if i not in excluded][: request.n]
        items = [
            pb.ScoredItem(
                item_id=item_id,
                score=1.0 / (pos + 1),
                position=pos,
                propensity=0.5 if pos else 1.0,
                explored=pos == 1 and not request.disable_exploration,
                reasons=[pb.Reason(code="similar_to_rated", text=f"like {item_id}", weight=0.75)]
                if request.explain
                else [],
                explanation=f"{item_id} for {request.user_id}" if request.explain else "",
            )
            for pos, item_id in enumerate(ids)
        ]
        return pb.PersonalizeResponse(
            request_id=f"req-{request.user_id}",
            items=items,
            model_version=request.context.extra.get("model", "none"),
            variant=request.context.segment,
            degraded=request.filters.price_range.HasField("max_price"),
            source=pb.SOURCE_EDGE_SCORER if request.context.device == "edge" else pb.SOURCE_ORIGIN,
        )

    def RecordEvents(
        self, request: pb.RecordEventsRequest, context: grpc.ServicerContext
    ) -> pb.RecordEventsResponse:
        self.received.append(request)
        rejections = [
            pb.Rejection(index=i, field="user_id", reason="required")
            for i, event in enumerate(request.events)
            if not event.user_id
        ]
        return pb.RecordEventsResponse(accepted=len(request.events) - len(rejections), rejections=rejections)

    def Explain(self, request: pb.ExplainRequest, context: grpc.ServicerContext) -> pb.ExplainResponse:
        self.received.append(request)
        has_context = request.HasField("context")
        where = f" on {request.context.surface}" if has_context else ""
        return pb.ExplainResponse(
            reasons=[
                pb.Reason(code="mood_match", text=request.context.extra.get("mood", ""), weight=0.6),
                pb.Reason(code="similar_to_rated", text=request.item_id, weight=0.4),
            ],
            explanation=f"{request.item_id} for {request.user_id}{where}",
            used_llm=has_context and request.context.extra.get("llm") == "on",
        )


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[pb_grpc.PersonalizationStub, EchoServicer]]:
    servicer = EchoServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_PersonalizationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.PersonalizationStub(channel), servicer
    finally:
        channel.close()
        server.stop(None)


def _generate_in_child(out_dir: Path) -> list[Path]:
    """protoc in a child process: grpc_tools' protoc segfaults in a process that has loaded
    TensorFlow (other tests in the same session do)."""
    code = "import sys; from pathlib import Path; from schemas.protos import generate; generate(Path(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", code, str(out_dir)], check=True, cwd=REPO_ROOT)
    return [out_dir / rel for rel in OUTPUTS]


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    """A .proto edit without `python -m schemas.protos` fails here, and generation is stable."""
    first = _generate_in_child(tmp_path / "a")
    second = _generate_in_child(tmp_path / "b")
    assert [p.relative_to(tmp_path / "a") for p in first] == list(OUTPUTS)
    for rel, a, b in zip(OUTPUTS, first, second, strict=True):
        committed = (REPO_ROOT / rel).read_bytes()
        assert a.read_bytes() == b.read_bytes(), f"{rel} is not reproducible"
        assert a.read_bytes() == committed, f"{rel} is stale: run `python -m schemas.protos`"


def test_personalize_round_trip(served: tuple[pb_grpc.PersonalizationStub, EchoServicer]) -> None:
    stub, servicer = served
    request = pb.PersonalizeRequest(
        user_id="u1",
        context=pb.Context(
            surface="home", device="mobile", locale="en-US", segment="night-owls", extra={"model": "ranker@7"}
        ),
        n=2,
        filters=pb.Filters(
            exclude_item_ids=["i2"],
            include_categories=["jazz"],
            exclude_categories=["kids"],
            price_range=pb.PriceRange(max_price=0.0),
            new_items_only=True,
            new_within_days=7,
        ),
        explain=True,
        candidate_item_ids=["i1", "i2", "i3", "i4"],
    )
    response = stub.Personalize(request, timeout=5)

    received = servicer.received[-1]
    assert received == request
    assert received.filters.price_range.HasField("max_price")
    assert not received.filters.price_range.HasField("min_price")
    assert received.filters.HasField("new_within_days") and received.filters.new_within_days == 7
    assert list(received.filters.include_categories) == ["jazz"]

    assert response.request_id == "req-u1"
    assert [i.item_id for i in response.items] == ["i1", "i3"]
    assert [i.position for i in response.items] == [0, 1]
    assert [i.score for i in response.items] == [1.0, 0.5]
    assert [i.propensity for i in response.items] == [1.0, 0.5]
    assert [i.explored for i in response.items] == [False, True]
    assert response.items[1].reasons[0] == pb.Reason(code="similar_to_rated", text="like i3", weight=0.75)
    assert response.items[0].explanation == "i1 for u1"
    assert response.model_version == "ranker@7"
    assert response.variant == "night-owls"
    assert response.degraded is True
    assert response.source == pb.SOURCE_ORIGIN

    plain = stub.Personalize(
        pb.PersonalizeRequest(
            user_id="u2",
            context=pb.Context(device="edge"),
            n=5,
            candidate_item_ids=["a", "b"],
            disable_exploration=True,
        ),
        timeout=5,
    )
    assert not servicer.received[-1].HasField("filters")
    assert not servicer.received[-1].filters.HasField("new_within_days")
    assert [(i.item_id, i.explored, len(i.reasons)) for i in plain.items] == [
        ("a", False, 0),
        ("b", False, 0),
    ]
    assert plain.source == pb.SOURCE_EDGE_SCORER
    assert plain.degraded is False and plain.variant == ""


def test_record_events_round_trip(served: tuple[pb_grpc.PersonalizationStub, EchoServicer]) -> None:
    stub, servicer = served
    impression = pb.Event(
        event_id="e1",
        ts_ms=1_714_564_800_000,
        user_id="u1",
        type="impression",
        item_id="i1",
        context=pb.Context(surface="home", extra={"mood": "calm"}),
        request_id="req-u1",
        position=0,  # a real slot: presence, not value, says it was logged
        propensity=0.25,
        variant="B",
    )
    rating = pb.Event(
        event_id="e2",
        ts_rfc3339="2024-05-01T12:00:00.123Z",
        user_id="u1",
        type="rating",
        item_id="i1",
        value=0.0,
    )
    anonymous = pb.Event(event_id="e3", ts_ms=1_714_564_800_001, type="view", item_id="i2")
    item = pb.Event(
        event_id="e4",
        ts_ms=1_714_564_800_002,
        user_id="catalog",
        type="item",
        item_id="i9",
        text="",
        attributes=pb.ItemAttributes(
            title="Kind of Blue",
            description="Modal jazz",
            categories=["music", "jazz"],
            price=0.0,
            created_at_rfc3339="1959-08-17T00:00:00Z",
            vectors={"text": pb.Vector(values=[0.5, -1.25, 3.0])},
            extra={"label": "Columbia"},
        ),
    )
    request = pb.RecordEventsRequest(events=[impression, rating, anonymous, item])
    response = stub.RecordEvents(request, timeout=5)

    assert response.accepted == 3
    assert list(response.rejections) == [pb.Rejection(index=2, field="user_id", reason="required")]

    got = servicer.received[-1].events
    assert list(got) == list(request.events)
    # Optional scalars keep presence through the wire, even at their zero value.
    assert got[0].HasField("position") and got[0].position == 0
    assert got[0].HasField("propensity") and got[0].propensity == 0.25
    assert not got[0].HasField("value") and not got[0].HasField("text")
    assert got[1].HasField("value") and got[1].value == 0.0
    assert not got[1].HasField("position") and not got[1].HasField("propensity")
    assert got[3].HasField("text") and got[3].text == ""
    # Oneofs say which form of an instant was sent.
    assert got[0].WhichOneof("ts") == "ts_ms" and got[0].ts_ms == 1_714_564_800_000
    assert got[1].WhichOneof("ts") == "ts_rfc3339" and got[1].ts_rfc3339 == "2024-05-01T12:00:00.123Z"
    # Maps and nested messages.
    assert dict(got[0].context.extra) == {"mood": "calm"}
    assert not got[1].HasField("context") and not got[1].HasField("attributes")
    attributes = got[3].attributes
    assert attributes.HasField("price") and attributes.price == 0.0
    assert attributes.WhichOneof("created_at") == "created_at_rfc3339"
    assert list(attributes.categories) == ["music", "jazz"]
    assert list(attributes.vectors["text"].values) == [0.5, -1.25, 3.0]
    assert dict(attributes.extra) == {"label": "Columbia"}


def test_explain_round_trip(served: tuple[pb_grpc.PersonalizationStub, EchoServicer]) -> None:
    stub, servicer = served
    request = pb.ExplainRequest(
        user_id="u1", item_id="i7", context=pb.Context(surface="pdp", extra={"mood": "upbeat", "llm": "on"})
    )
    response = stub.Explain(request, timeout=5)
    assert servicer.received[-1] == request
    assert [(r.code, r.text, r.weight) for r in response.reasons] == [
        ("mood_match", "upbeat", 0.6),
        ("similar_to_rated", "i7", 0.4),
    ]
    assert response.explanation == "i7 for u1 on pdp"
    assert response.used_llm is True

    bare = stub.Explain(pb.ExplainRequest(user_id="u2", item_id="i8"), timeout=5)
    assert not servicer.received[-1].HasField("context")
    assert bare.explanation == "i8 for u2"
    assert bare.used_llm is False
