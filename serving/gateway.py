"""The gateway: gRPC server interceptors for API keys with scopes and a per-key rate limit.

Install them in this order: `grpc.aio.server(interceptors=[AuthInterceptor(...),
RateLimitInterceptor(...)])` — requests without a valid key are refused before they cost a
Redis round trip. Health (`/grpc.health.v1.Health/*`) and reflection (`/grpc.reflection.*`) are
always open, so load balancers and tooling work without a key.

Keys come from the `api_keys` config section and travel in metadata `x-api-key`; a key is
logged and reported only by its `name`, never its value. The authenticated key is available to
handlers as `current_key_name` / `current_key`: grpc.aio runs interceptors and the handler in
one contextvars.Context, so a ContextVar set here is what the handler sees (handlers must be
`async def`, the grpc.aio default; sync handlers run on a thread without that context).

The rate limit FAILS OPEN while Redis is unreachable: the limiter protects capacity, it is not
an access control (authentication and scopes never touch Redis and keep working), and the serving
path is built to keep answering from memory while Redis is down — rejecting every request there
would turn a Redis outage into a full outage. Each such pass is counted (`fail_open_total`) and
the transition into and out of it is logged.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import redis.exceptions

from stores.rate_limit import TokenBucket

log = logging.getLogger(__name__)

SCOPES = ("personalize", "events", "admin")
SERVICE = "pulserank.v1.Personalization"
METHOD_SCOPES: dict[str, str] = {
    f"/{SERVICE}/Personalize": "personalize",
    f"/{SERVICE}/Explain": "personalize",
    f"/{SERVICE}/RecordEvents": "events",
}
DEFAULT_SCOPE = "admin"  # any other method (admin ones, unknown ones) needs the admin scope
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
API_KEY_HEADER = "x-api-key"
RETRY_AFTER_HEADER = "retry-after-ms"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY_FIELDS = ("name", "key", "key_env", "scopes", "rate")


@dataclass(frozen=True)
class ApiKey:
    name: str  # identity in logs and the rate-limit bucket: the only part ever logged
    key: str = field(repr=False)  # the secret clients send; kept out of repr so it never reaches a log
    scopes: frozenset[str] = frozenset()
    per_second: float | None = None  # token-bucket refill; None → unlimited
    burst: float | None = None  # bucket size; None with a rate → max(1, per_second)


# Set by AuthInterceptor for the handler of the same call (None: open method, or open mode without a known key).
current_key_name: ContextVar[str | None] = ContextVar("pulserank_key_name", default=None)
current_key: ContextVar[ApiKey | None] = ContextVar("pulserank_key", default=None)


# -- config ---------------------------------------------------------------------------------------


def load_api_keys(section: list[dict] | None, environ: Mapping[str, str] | None = None) -> dict[str, ApiKey]:
    """The `api_keys` config section → {key: ApiKey}; absent or empty → {} (the server may run open).

    Each entry: `name`, `key` (or `key_env`, the environment variable holding it, to keep secrets
    out of config files), `scopes` (a non-empty subset of SCOPES), optional `rate: {per_second,
    burst}`. Raises ValueError naming the field, e.g. "api_keys[1].scopes: unknown scope 'write'";
    messages never contain a key.
    """
    if section is None:
        return {}
    if not isinstance(section, list):
        raise ValueError(f"api_keys: expected a list of keys, got {type(section).__name__}")
    environ = os.environ if environ is None else environ
    by_key: dict[str, ApiKey] = {}
    index_of_key: dict[str, int] = {}
    index_of_name: dict[str, int] = {}
    for i, raw in enumerate(section):
        path = f"api_keys[{i}]"
        api_key = _api_key(raw, path, environ)
        if api_key.name in index_of_name:
            raise ValueError(f"{path}.name: {api_key.name!r} repeats api_keys[{index_of_name[api_key.name]}]")
        if api_key.key in index_of_key:
            raise ValueError(f"{path}.key: the same key as api_keys[{index_of_key[api_key.key]}]")
        index_of_name[api_key.name] = index_of_key[api_key.key] = i
        by_key[api_key.key] = api_key
    return by_key


def _api_key(raw: object, path: str, environ: Mapping[str, str]) -> ApiKey:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a mapping with name, key and scopes, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in _KEY_FIELDS)
    if unknown:
        raise ValueError(f"{path}.{unknown[0]}: unknown field (known: {', '.join(_KEY_FIELDS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{path}.name: expected 1–64 of A–Z a–z 0–9 . _ - (starting alphanumeric), got "
                         f"{str(name)[:80]!r}")
    key = _secret(raw, path, environ)
    scopes = raw.get("scopes")
    if not isinstance(scopes, list) or not scopes:
        raise ValueError(f"{path}.scopes: expected a non-empty list, a subset of {', '.join(SCOPES)}")
    for scope in scopes:
        if scope not in SCOPES:
            raise ValueError(f"{path}.scopes: unknown scope {str(scope)[:40]!r} (known: {', '.join(SCOPES)})")
    per_second, burst = _rate(raw.get("rate"), f"{path}.rate")
    return ApiKey(name, key, frozenset(scopes), per_second, burst)


def _secret(raw: Mapping[str, Any], path: str, environ: Mapping[str, str]) -> str:
    if ("key" in raw) == ("key_env" in raw):
        raise ValueError(f"{path}.key: give exactly one of key and key_env")
    if "key_env" in raw:
        var = raw["key_env"]
        if not isinstance(var, str) or not var:
            raise ValueError(f"{path}.key_env: expected an environment variable name")
        key, field_name = environ.get(var), f"{path}.key_env"
        if key is None:
            raise ValueError(f"{field_name}: environment variable {var!r} is not set")
    else:
        key, field_name = raw["key"], f"{path}.key"
    # gRPC carries text metadata as printable ASCII; a key a client cannot send is a config mistake
    if not isinstance(key, str) or not key or len(key) > 256 or not all("!" <= c <= "~" for c in key):
        raise ValueError(f"{field_name}: the key must be 1–256 printable ASCII characters without spaces")
    return key


def _rate(raw: object, path: str) -> tuple[float | None, float | None]:
    if raw is None:
        return None, None
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected {{per_second, burst}}, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in ("per_second", "burst"))
    if unknown:
        raise ValueError(f"{path}.{unknown[0]}: unknown field (known: per_second, burst)")
    per_second = _positive(raw.get("per_second"), f"{path}.per_second")
    burst = max(1.0, per_second) if raw.get("burst") is None else _positive(raw["burst"], f"{path}.burst")
    if burst < 1:
        raise ValueError(f"{path}.burst: must be ≥ 1 (a bucket that cannot hold one request refuses all), "
                         f"got {burst:g}")
    return per_second, burst


def _positive(value: object, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{field_name}: expected a number > 0, got {value!r}")
    return float(value)


# -- interceptors ---------------------------------------------------------------------------------


def is_open_method(method: str) -> bool:
    """Health and reflection: always reachable without a key."""
    return method.startswith(OPEN_PREFIXES)


def method_scope(method: str) -> str:
    return METHOD_SCOPES.get(method, DEFAULT_SCOPE)


def metadata_value(metadata: Iterable[tuple[str, Any]] | None, name: str) -> str | None:
    """The first value of text metadata `name` (gRPC lower-cases keys), or None."""
    for key, value in metadata or ():
        if key == name:
            return value if isinstance(value, str) else None
    return None


def _terminator(code: grpc.StatusCode, details: str,
                trailing_metadata: tuple[tuple[str, str], ...] = ()) -> grpc.RpcMethodHandler:
    """A handler that ends the RPC with `code`: how an aio interceptor refuses a call."""

    async def abort(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, details, trailing_metadata)

    return grpc.unary_unary_rpc_method_handler(abort)


Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """API key (`x-api-key`) and scope checks; sets `current_key` / `current_key_name`.

    `open=True` lets every call through (a known key presented is still identified, so its name
    reaches handlers and logs); the server logs that it runs open. Refusals are counted in
    `rejected_total` by status code name.
    """

    def __init__(self, keys: Mapping[str, ApiKey], open: bool = False) -> None:
        if not keys and not open:
            raise ValueError("api_keys: no keys configured and not open: every call would be refused "
                             "(configure keys, or run open on loopback)")
        self.keys = dict(keys)
        self.open = open
        self.rejected_total: dict[str, int] = {"UNAUTHENTICATED": 0, "PERMISSION_DENIED": 0}

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if is_open_method(method):
            return await continuation(handler_call_details)
        presented = metadata_value(handler_call_details.invocation_metadata, API_KEY_HEADER)
        key = self.keys.get(presented) if presented else None
        current_key.set(key)
        current_key_name.set(key.name if key is not None else None)
        if self.open:
            return await continuation(handler_call_details)
        if key is None:
            self.rejected_total["UNAUTHENTICATED"] += 1
            what = "missing API key" if not presented else "unknown API key"
            return _terminator(grpc.StatusCode.UNAUTHENTICATED, f"{what}: send a valid key in metadata "
                                                                f"'{API_KEY_HEADER}'")
        scope = method_scope(method)
        if scope not in key.scopes:
            self.rejected_total["PERMISSION_DENIED"] += 1
            return _terminator(grpc.StatusCode.PERMISSION_DENIED,
                               f"API key {key.name!r} lacks scope {scope!r}, which {method} needs "
                               f"(it has: {', '.join(sorted(key.scopes))})")
        return await continuation(handler_call_details)


def wall_clock_ms() -> int:
    """Real time in epoch ms: rate limits refill in real time even when serving's clock is pinned."""
    return time.time_ns() // 1_000_000


class RateLimitInterceptor(grpc.aio.ServerInterceptor):
    """Per-key token bucket in Redis; over the rate → RESOURCE_EXHAUSTED + `retry-after-ms` trailer.

    Keys without a rate, unknown keys (the auth interceptor refuses those) and open methods pass
    untouched. When Redis fails or answers slower than `timeout_s`, the call passes (FAIL OPEN,
    see the module docstring), `fail_open_total` counts it, and Redis is not asked again for
    `backoff_s`, so a hung Redis costs one timeout per back-off rather than one per request.
    """

    def __init__(self, bucket: TokenBucket, keys: Mapping[str, ApiKey], clock: Callable[[], int] = wall_clock_ms,
                 timeout_s: float = 0.05, backoff_s: float = 1.0) -> None:
        self.bucket = bucket
        self.keys = dict(keys)
        self.clock = clock
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.fail_open_total = 0
        self.limited_total = 0
        self._failing = False
        self._retry_at = 0.0  # time.monotonic() before which Redis is not asked (after a failure)

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if is_open_method(handler_call_details.method):
            return await continuation(handler_call_details)
        presented = metadata_value(handler_call_details.invocation_metadata, API_KEY_HEADER)
        key = self.keys.get(presented) if presented else None
        if key is None or key.per_second is None:
            return await continuation(handler_call_details)
        if self._failing and time.monotonic() < self._retry_at:
            self.fail_open_total += 1
            return await continuation(handler_call_details)
        burst = key.burst if key.burst is not None else max(1.0, key.per_second)
        try:
            async with asyncio.timeout(self.timeout_s):  # no extra task, unlike wait_for
                allowed, retry_ms = await self.bucket.take(key.name, key.per_second, burst, self.clock())
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            self.fail_open_total += 1
            self._retry_at = time.monotonic() + self.backoff_s
            if not self._failing:
                self._failing = True
                log.warning("rate limit failing open: Redis unreachable (%s: %s); calls pass unlimited until it "
                            "answers", type(exc).__name__, exc)
            return await continuation(handler_call_details)
        if self._failing:
            self._failing = False
            log.warning("rate limit enforced again: Redis answers (%d calls passed unlimited so far)",
                        self.fail_open_total)
        if allowed:
            return await continuation(handler_call_details)
        self.limited_total += 1
        return _terminator(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"rate limit of API key {key.name!r} exceeded ({key.per_second:g}/s, burst {burst:g}); "
                           f"retry after {retry_ms} ms", ((RETRY_AFTER_HEADER, str(retry_ms)),))
