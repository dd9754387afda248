"""The one place every part of Pulserank gets Redis.

``REDIS_URL`` (``redis://``, ``rediss://`` for TLS, or ``unix://``) selects an external server.
Without it, the first caller in a process starts one private ``EmbeddedRedis`` (lazily, once,
thread-safely) and every later caller in that process shares it; it stops at exit.

Caveat: "per process" means separate processes do NOT share an embedded server. A parent that
spawns workers which must see the same state (multi-process Beam, a serving process beside a
driver) should export ``REDIS_URL=redis_url()`` into their environment. A forked child inherits
the parent's URL (and uses the parent's server) but never stops it.
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis

from stores.redis_server import EmbeddedRedis

ENV_URL = "REDIS_URL"

_lock = threading.Lock()
_embedded: EmbeddedRedis | None = None


def _reset_lock_after_fork() -> None:
    # A fork taken while another thread held the lock would leave it held forever in the child.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_after_fork)


def _external_url() -> str | None:
    return os.environ.get(ENV_URL, "").strip() or None


def redis_url() -> str:
    """``$REDIS_URL`` if set, else the URL of this process's embedded server (started on demand)."""
    global _embedded
    external = _external_url()
    if external:
        return external
    with _lock:
        if _embedded is None:
            _embedded = EmbeddedRedis().start()
        return _embedded.url


def get_redis(
    url: str | None = None,
    *,
    decode_responses: bool = False,
    socket_timeout: float | None = 10.0,
    **overrides: Any,
) -> redis.Redis:
    """A new client (own connection pool) for ``url`` or :func:`redis_url`; the caller closes it.

    ``socket_timeout`` bounds every read: blocking commands (``XREADGROUP BLOCK``, ``BLPOP``)
    must block for less than it, or pass ``socket_timeout=None``. ``overrides`` go straight to
    ``redis.Redis.from_url``.
    """
    options: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 30,  # PING a connection idle this long before reusing it
    }
    options.update(overrides)
    return redis.Redis.from_url(url or redis_url(), **options)


def embedded_server() -> EmbeddedRedis | None:
    """The embedded server this process uses, if one was started (None under ``REDIS_URL``)."""
    return _embedded


def shutdown_embedded() -> None:
    """Stop the embedded server if this process started one; a no-op otherwise.

    Call it before ``os._exit`` (which skips the atexit hook). Safe to call repeatedly; a later
    :func:`redis_url` starts a fresh, empty server.
    """
    global _embedded
    with _lock:
        server, _embedded = _embedded, None
    if server is not None:
        server.stop()  # does nothing in a forked child: the server belongs to the parent


def mask_url(url: str) -> str:
    """``url`` with any password (in the userinfo or a ``password=`` query option) masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, sep, password = userinfo.partition(":")  # a lone userinfo is the username
        if sep and password:
            netloc = f"{user}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() == "password" for k, _ in pairs):
            masked = [(k, "***" if k.lower() == "password" else v) for k, v in pairs]
            query = urlencode(masked, safe="*/")
    # Built by hand: urlunsplit would turn unix:///path (empty netloc) into unix:/path.
    masked_url = f"{parts.scheme}://{netloc}{parts.path}"
    if query:
        masked_url += f"?{query}"
    if parts.fragment:
        masked_url += f"#{parts.fragment}"
    return masked_url


def describe() -> str:
    """One line for logs: which Redis this process uses (passwords masked). Starts nothing."""
    external = _external_url()
    if external:
        return f"{ENV_URL} {mask_url(external)}"
    server = _embedded
    if server is not None and server.running:
        return f"embedded redis-server {server.version} at {server.url}, pid {server.pid}"
    return "embedded redis-server (not started yet; starts on first use)"
