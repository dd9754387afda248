"""The gateway interceptors on a real grpc.aio server (loopback) with a real Redis behind the rate limit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence

import grpc
import grpc.aio
import pytest
import redis.asyncio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from schemas import personalization_pb2 as pb
from schemas import personalization_pb2_grpc as pb_grpc
from serving.gateway import (
    API_KEY_HEADER,
    METHOD_SCOPES,
    RETRY_AFTER_HEADER,
    ApiKey,
    AuthInterceptor,
    RateLimitInterceptor,
    current_key_name,
    load_api_keys,
)
from stores.rate_limit import TokenBucket, bucket_key
from stores.redis_server import EmbeddedRedis

KEYS_SECTION = [
    {"name": "web", "key": "k-web-123", "scopes": ["personalize", "events"], "rate": {"per_second": 1, "burst": 3}},
    {"name": "reader", "key": "k-reader-456", "scopes": ["personalize"]},
    {"name": "ingest", "key": "k-ingest-789", "scopes": ["events"], "rate": {"per_second": 2}},
]
WEB, READER, INGEST = "k-web-123", "k-reader-456", "k-ingest-789"


class EchoServicer(pb_grpc.PersonalizationServicer):
    """Personalize returns one item and, as its variant, the key name the gateway authenticated."""

    async def Personalize(self, request: pb.PersonalizeRequest, context: grpc.aio.ServicerContext):
        item = pb.ScoredItem(item_id="item-1", score=0.5, position=0, propensity=1.0)
        return pb.PersonalizeResponse(request_id="req-1", items=[item], variant=current_key_name.get() or "")

    async def RecordEvents(self, request: pb.RecordEventsRequest, context: grpc.aio.ServicerContext):
        return pb.RecordEventsResponse(accepted=len(request.events))

    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext):
        return pb.ExplainResponse(explanation=f"because {current_key_name.get()}")


@contextlib.asynccontextmanager
async def serving(interceptors: Sequence[grpc.aio.ServerInterceptor]) -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=list(interceptors))
    pb_grpc.add_PersonalizationServicer_to_server(EchoServicer(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    reflection.enable_server_reflection(
        ("pulserank.v1.Personalization", health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


def personalize(channel: grpc.aio.Channel, key: str | None = None):
    metadata = ((API_KEY_HEADER, key),) if key is not None else None
    return pb_grpc.PersonalizationStub(channel).Personalize(pb.PersonalizeRequest(user_id="u1", n=1),
                                                           metadata=metadata, timeout=10)


async def status_of(call) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", dict(list(exc.trailing_metadata() or ()))
    return grpc.StatusCode.OK, "", dict(list(await call.trailing_metadata() or ()))


class Clock:
    """A settable millisecond clock for the token bucket."""

    def __init__(self, now_ms: int = 1_700_000_000_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def async_client(url: str, **options) -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0, **options)


# -- config ---------------------------------------------------------------------------------------


def test_load_api_keys_parses_keys_scopes_and_rates():
    keys = load_api_keys(KEYS_SECTION)
    assert set(keys) == {WEB, READER, INGEST}
    assert keys[WEB] == ApiKey("web", WEB, frozenset({"personalize", "events"}), 1.0, 3.0)
    assert keys[READER].per_second is None and keys[READER].burst is None
    assert keys[INGEST].burst == 2.0  # burst defaults to max(1, per_second)
    assert WEB not in repr(keys[WEB])  # a logged ApiKey never shows its secret
    assert load_api_keys(None) == {} and load_api_keys([]) == {}
    env_key = load_api_keys([{"name": "ci", "key_env": "CI_KEY", "scopes": ["admin"]}], environ={"CI_KEY": "s3cr3t"})
    assert env_key["s3cr3t"].name == "ci"


@pytest.mark.parametrize("section, message", [
    ("web", "api_keys: expected a list"),
    ([{"name": "web", "key": "k1", "scopes": ["write"]}], "api_keys[0].scopes: unknown scope 'write'"),
    ([{"name": "a", "key": "k1", "scopes": ["events"]}, {"name": "b", "key": "k2", "scopes": ["read"]}],
     "api_keys[1].scopes: unknown scope 'read'"),
    ([{"name": "web", "key": "k1", "scopes": []}], "api_keys[0].scopes: expected a non-empty list"),
    ([{"key": "k1", "scopes": ["events"]}], "api_keys[0].name"),
    ([{"name": "we b", "key": "k1", "scopes": ["events"]}], "api_keys[0].name"),
    ([{"name": "web", "scopes": ["events"]}], "api_keys[0].key: give exactly one of key and key_env"),
    ([{"name": "web", "key": "has space", "scopes": ["events"]}], "api_keys[0].key: the key must be"),
    ([{"name": "web", "key_env": "PULSERANK_TEST_UNSET_VAR", "scopes": ["events"]}],
     "api_keys[0].key_env: environment variable 'PULSERANK_TEST_UNSET_VAR' is not set"),
    ([{"name": "web", "key": "k1", "scopes": ["events"], "role": "x"}], "api_keys[0].role: unknown field"),
    ([{"name": "web", "key": "k1", "scopes": ["events"], "rate": {"per_second": 0}}],
     "api_keys[0].rate.per_second: expected a number > 0"),
    ([{"name": "web", "key": "k1", "scopes": ["events"], "rate": {"per_second": 5, "burst": 0.5}}],
     "api_keys[0].rate.burst: must be ≥ 1"),
    ([{"name": "web", "key": "k1", "scopes": ["events"], "rate": {"per_second": 5, "bust": 9}}],
     "api_keys[0].rate.bust: unknown field"),
    ([{"name": "web", "key": "k1", "scopes": ["events"]}, {"name": "web", "key": "k2", "scopes": ["events"]}],
     "api_keys[1].name: 'web' repeats api_keys[0]"),
    ([{"name": "a", "key": "k-secret", "scopes": ["events"]}, {"name": "b", "key": "k-secret", "scopes": ["admin"]}],
     "api_keys[1].key: the same key as api_keys[0]"),
])
def test_load_api_keys_names_the_bad_field_and_never_the_key(section, message):
    with pytest.raises(ValueError) as err:
        load_api_keys(section, environ={})
    assert message in str(err.value)
    assert "k-secret" not in str(err.value) and "has space" not in str(err.value)


def test_closed_gateway_without_keys_is_refused():
    with pytest.raises(ValueError, match="no keys configured"):
        AuthInterceptor({})
    AuthInterceptor({}, open=True)  # open without keys is the loopback default


# -- authentication and scopes ----------------------------------------------------------------------


def test_auth_codes_and_messages():
    keys = load_api_keys(KEYS_SECTION)
    auth = AuthInterceptor(keys)

    async def scenario():
        async with serving([auth]) as channel:
            stub = pb_grpc.PersonalizationStub(channel)
            ok = await personalize(channel, WEB)
            missing = await status_of(personalize(channel))
            unknown = await status_of(personalize(channel, "k-guessed-000"))
            empty = await status_of(personalize(channel, ""))
            events_call = stub.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(event_id="e1")]),
                                            metadata=((API_KEY_HEADER, READER),), timeout=10)
            wrong_scope = await status_of(events_call)
            explain = await stub.Explain(pb.ExplainRequest(user_id="u1", item_id="i1"),
                                         metadata=((API_KEY_HEADER, READER),), timeout=10)
            recorded = await stub.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(event_id="e1")]),
                                               metadata=((API_KEY_HEADER, INGEST),), timeout=10)
            ingest_personalize = await status_of(personalize(channel, INGEST))
            return ok, missing, unknown, empty, wrong_scope, explain, recorded, ingest_personalize

    ok, missing, unknown, empty, wrong_scope, explain, recorded, ingest_personalize = asyncio.run(scenario())
    assert [i.item_id for i in ok.items] == ["item-1"]
    assert ok.variant == "web"  # the handler sees the authenticated key's name
    assert explain.explanation == "because reader"
    assert recorded.accepted == 1
    assert missing[0] == grpc.StatusCode.UNAUTHENTICATED and "missing API key" in missing[1]
    assert "x-api-key" in missing[1]
    assert unknown[0] == grpc.StatusCode.UNAUTHENTICATED and "unknown API key" in unknown[1]
    assert "k-guessed-000" not in unknown[1]
    assert empty[0] == grpc.StatusCode.UNAUTHENTICATED
    assert wrong_scope[0] == grpc.StatusCode.PERMISSION_DENIED
    assert "'reader'" in wrong_scope[1] and "'events'" in wrong_scope[1] and READER not in wrong_scope[1]
    assert ingest_personalize[0] == grpc.StatusCode.PERMISSION_DENIED and "'personalize'" in ingest_personalize[1]
    assert auth.rejected_total == {"UNAUTHENTICATED": 3, "PERMISSION_DENIED": 2}


def test_every_service_method_has_a_scope():
    methods = {f"/pulserank.v1.Personalization/{m.name}"
               for m in pb.DESCRIPTOR.services_by_name["Personalization"].methods}
    assert set(METHOD_SCOPES) == methods


def test_health_and_reflection_are_open_without_a_key():
    auth = AuthInterceptor(load_api_keys(KEYS_SECTION))

    async def scenario():
        async with serving([auth]) as channel:
            checked = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = [r async for r in stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)]
            refused = await status_of(personalize(channel))
            return checked, replies, refused

    checked, replies, refused = asyncio.run(scenario())
    assert checked.status == health_pb2.HealthCheckResponse.SERVING
    services = {s.name for s in replies[0].list_services_response.service}
    assert "pulserank.v1.Personalization" in services
    assert refused[0] == grpc.StatusCode.UNAUTHENTICATED  # the same server does guard the API


def test_open_mode_lets_everything_through_and_still_names_known_keys():
    auth = AuthInterceptor(load_api_keys(KEYS_SECTION), open=True)

    async def scenario():
        async with serving([auth]) as channel:
            stub = pb_grpc.PersonalizationStub(channel)
            anonymous = await personalize(channel)
            unknown = await personalize(channel, "k-nobody")
            known = await personalize(channel, READER)
            events = await stub.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(event_id="e1")]), timeout=10)
            return anonymous, unknown, known, events

    anonymous, unknown, known, events = asyncio.run(scenario())
    assert anonymous.variant == "" and unknown.variant == "" and known.variant == "reader"
    assert events.accepted == 1
    assert auth.rejected_total == {"UNAUTHENTICATED": 0, "PERMISSION_DENIED": 0}


# -- the token bucket -----------------------------------------------------------------------------


def test_token_bucket_refills_at_the_rate_and_says_when_to_retry(redis, redis_url):
    t0 = 1_700_000_000_000

    async def scenario():
        client = async_client(redis_url)
        try:
            bucket = TokenBucket(client)
            out = [await bucket.take("web", 2.0, 3.0, t0) for _ in range(4)]  # burst 3, then empty
            out.append(await bucket.take("web", 2.0, 3.0, t0 + 499))  # 0.998 tokens: not yet
            out.append(await bucket.take("web", 2.0, 3.0, t0 + 500))  # exactly one token back
            out.append(await bucket.take("web", 2.0, 3.0, t0 + 400))  # a clock behind refills nothing
            out.append(await bucket.take("other", 2.0, 3.0, t0))  # buckets are per name
            out.append(await bucket.take("big", 2.0, 3.0, t0, cost=3.0))
            out.append(await bucket.take("big", 2.0, 3.0, t0 + 1000, cost=3.0))  # 2 tokens back, 3 needed
            return out
        finally:
            await client.aclose()

    out = asyncio.run(scenario())
    assert out[:3] == [(True, 0)] * 3
    assert out[3] == (False, 500)  # 1 token at 2/s
    assert out[4] == (False, 1)  # ceil(0.002 token / 2 per s) = 1 ms
    assert out[5] == (True, 0)
    assert out[6] == (False, 500)
    assert out[7] == (True, 0)
    assert out[8] == (True, 0)
    assert out[9] == (False, 500)
    assert redis.exists(bucket_key("web")) and bucket_key("web") == "{k:web}:rate"
    ttl = redis.pttl(bucket_key("web"))
    assert 1000 < ttl <= 1000 + 1500  # until it would be full again (3 tokens at 2/s) plus 1 s slack


def test_token_bucket_is_atomic_under_concurrent_takes(redis, redis_url):
    async def scenario():
        client = async_client(redis_url, max_connections=64)
        try:
            bucket = TokenBucket(client)
            return await asyncio.gather(*(bucket.take("hot", 1.0, 10.0, 1_700_000_000_000) for _ in range(60)))
        finally:
            await client.aclose()

    results = asyncio.run(scenario())
    assert sum(allowed for allowed, _ in results) == 10


@pytest.mark.parametrize("args, field", [
    ((0.0, 3.0, 1), "per_second"), ((1.0, float("inf"), 1), "burst"), ((1.0, 3.0, 1, 4.0), "cost"),
    ((1.0, 3.0, 1.5), "now_ms"),
])
def test_token_bucket_rejects_impossible_settings(redis_url, args, field):
    async def scenario():
        client = async_client(redis_url)
        try:
            await TokenBucket(client).take("x", *args)
        finally:
            await client.aclose()

    with pytest.raises(ValueError, match=f"^{field}:"):
        asyncio.run(scenario())


# -- the rate-limit interceptor -------------------------------------------------------------------


def test_over_the_rate_is_resource_exhausted_with_retry_after(redis, redis_url):
    keys = load_api_keys(KEYS_SECTION)
    clock = Clock()

    async def scenario():
        client = async_client(redis_url)
        limiter = RateLimitInterceptor(TokenBucket(client), keys, clock=clock)
        try:
            async with serving([AuthInterceptor(keys), limiter]) as channel:
                burst = [await status_of(personalize(channel, WEB)) for _ in range(3)]
                over = await status_of(personalize(channel, WEB))
                unlimited = [await status_of(personalize(channel, READER)) for _ in range(10)]
                clock.now_ms += 400
                still_over = await status_of(personalize(channel, WEB))
                clock.now_ms += 600
                refilled = await status_of(personalize(channel, WEB))
                health_ok = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                return burst, over, unlimited, still_over, refilled, health_ok, limiter
        finally:
            await client.aclose()

    burst, over, unlimited, still_over, refilled, health_ok, limiter = asyncio.run(scenario())
    assert [code for code, _, _ in burst] == [grpc.StatusCode.OK] * 3
    code, details, trailers = over
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert trailers[RETRY_AFTER_HEADER] == "1000"  # one token at 1/s
    assert "'web'" in details and "retry after 1000 ms" in details and WEB not in details
    assert [c for c, _, _ in unlimited] == [grpc.StatusCode.OK] * 10  # a key without a rate is never limited
    assert still_over[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and still_over[2][RETRY_AFTER_HEADER] == "600"
    assert refilled[0] == grpc.StatusCode.OK
    assert health_ok.status == health_pb2.HealthCheckResponse.SERVING
    assert limiter.limited_total == 2 and limiter.fail_open_total == 0
    assert redis.exists(bucket_key("web")) and not redis.exists(bucket_key("reader"))


def test_rate_limit_fails_open_while_redis_is_down_and_resumes_after():
    """A private Redis is stopped mid-run: calls pass and are counted; a new Redis limits again."""
    keys = load_api_keys(KEYS_SECTION)
    clock = Clock()
    first = EmbeddedRedis(tcp=True).start()
    second = None

    async def scenario():
        nonlocal second
        client = async_client(first.url)
        limiter = RateLimitInterceptor(TokenBucket(client), keys, clock=clock, backoff_s=0.0)
        try:
            async with serving([AuthInterceptor(keys), limiter]) as channel:
                before = [(await status_of(personalize(channel, WEB)))[0] for _ in range(4)]
                first.stop()
                down = [(await status_of(personalize(channel, WEB)))[0] for _ in range(6)]
                failed_open = limiter.fail_open_total
                second = EmbeddedRedis(tcp=True).start()  # Redis is back (here: a fresh, empty one)
                limiter.bucket = TokenBucket(async_client(second.url))
                after = [(await status_of(personalize(channel, WEB)))[0] for _ in range(4)]
                await limiter.bucket.client.aclose()
                return before, down, failed_open, after, limiter
        finally:
            await client.aclose()

    try:
        before, down, failed_open, after, limiter = asyncio.run(scenario())
    finally:
        first.stop()
        if second is not None:
            second.stop()
    ok, exhausted = grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED
    assert before == [ok, ok, ok, exhausted]
    assert down == [ok] * 6 and failed_open == 6
    assert after == [ok, ok, ok, exhausted] and limiter.fail_open_total == 6


def test_rate_limit_fails_open_on_a_hung_redis_within_its_timeout():
    """A server that accepts connections and never answers: each call waits at most `timeout_s`, then
    the back-off skips Redis entirely."""
    keys = load_api_keys(KEYS_SECTION)

    async def scenario():
        held: list[asyncio.StreamWriter] = []

        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)

        silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        client = redis.asyncio.Redis(host="127.0.0.1", port=port, socket_connect_timeout=2.0, socket_timeout=5.0)
        limiter = RateLimitInterceptor(TokenBucket(client), keys, timeout_s=0.2, backoff_s=60.0)
        try:
            async with serving([AuthInterceptor(keys), limiter]) as channel:
                started = time.perf_counter()
                codes = [(await status_of(personalize(channel, WEB)))[0] for _ in range(5)]
                return codes, time.perf_counter() - started, limiter
        finally:
            for w in held:
                w.close()
            silent.close()
            await client.aclose()

    codes, elapsed, limiter = asyncio.run(scenario())
    assert codes == [grpc.StatusCode.OK] * 5
    assert limiter.fail_open_total == 5
    assert elapsed < 5.0  # one 0.2 s timeout, then the back-off: nowhere near the 5 s socket timeout


def test_serving_gateway_imports_neither_tensorflow_nor_beam():
    code = ("import sys, json, serving.gateway, serving.ab, stores.rate_limit; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'apache_beam'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout) == []
