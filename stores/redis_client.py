"""The one place every part of Pulserank gets Redis.

``REDIS_URL`` (``redis://``, ``rediss://`` for TLS, or ``unix://``) selects an external server;
``redis+cluster://host:port[,host:port…]`` (``rediss+cluster://`` for TLS; user, password and
query options as in ``redis://``) selects a Redis Cluster, for which :func:`get_redis` returns a
``redis.cluster.RedisCluster`` (and :func:`get_async_redis` its asyncio twin). List several
nodes: any one that answers tells the client the whole slot map. Without a URL, the first caller
in a process starts one private ``EmbeddedRedis`` (lazily, once, thread-safely) and every later
caller in that process shares it; it stops at exit.

On a cluster (only database 0, no unix sockets) the stores rely on the hash tags of
``schemas/keys.py``: each Lua merge and each transaction touches one slot; pipelines are split by
slot by redis-py's cluster pipeline; SCAN goes node by node. A master that cannot be reached
makes its slots fail: :func:`check_cluster` names them (:class:`ClusterUnavailable`).

Caveat: "per process" means separate processes do NOT share an embedded server. A parent that
spawns workers which must see the same state (multi-process Beam, a serving process beside a
driver) should export ``REDIS_URL=redis_url()`` into their environment. A forked child inherits
the parent's URL (and uses the parent's server) but never stops it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
import redis.asyncio
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from stores.redis_server import EmbeddedRedis

ENV_URL = "REDIS_URL"
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}  # → the scheme of one node
# A dead master must fail a write within seconds, not after redis-py's default 10 retries per command
# (a pipeline retries its failed commands one by one): 3 quick retries ride out a MOVED/resharding.
CLUSTER_RETRIES = 3

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
) -> redis.Redis | redis.RedisCluster:
    """A new client (own connection pool) for ``url`` or :func:`redis_url`; the caller closes it.

    ``socket_timeout`` bounds every read: blocking commands (``XREADGROUP BLOCK``, ``BLPOP``)
    must block for less than it, or pass ``socket_timeout=None``. ``overrides`` go straight to
    ``redis.Redis.from_url`` (``RedisCluster.from_url`` for a ``redis+cluster://`` URL, which
    contacts the cluster at once to learn its slot map).
    """
    options: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 30,  # PING a connection idle this long before reusing it
    }
    url = url or redis_url()
    if is_cluster_url(url):
        first, nodes = parse_cluster_url(url)
        options["retry"] = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), CLUSTER_RETRIES)
        options.update(overrides)
        others = [redis.cluster.ClusterNode(host, port) for host, port in nodes[1:]]
        return redis.RedisCluster.from_url(first, startup_nodes=others, **options)
    options.update(overrides)
    return redis.Redis.from_url(url, **options)


def get_async_redis(
    url: str | None = None,
    *,
    decode_responses: bool = False,
    socket_timeout: float | None = 10.0,
    **overrides: Any,
) -> redis.asyncio.Redis | redis.asyncio.RedisCluster:
    """The asyncio twin of :func:`get_redis` (serving): same URLs, same options; the caller closes it."""
    options: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 30,
    }
    url = url or redis_url()
    if is_cluster_url(url):
        first, nodes = parse_cluster_url(url)
        options["retry"] = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), CLUSTER_RETRIES)
        options.update(overrides)
        others = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in nodes[1:]]
        return redis.asyncio.RedisCluster.from_url(first, startup_nodes=others, **options)
    options.update(overrides)
    return redis.asyncio.Redis.from_url(url, **options)


def is_cluster_url(url: str) -> bool:
    """Whether `url` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def is_cluster(client: object) -> bool:
    """Whether `client` (or pipeline) talks to a Redis Cluster, sync or asyncio."""
    return isinstance(client, redis.RedisCluster | redis.asyncio.RedisCluster
                      | redis.cluster.ClusterPipeline | redis.asyncio.cluster.ClusterPipeline)


def parse_cluster_url(url: str) -> tuple[str, list[tuple[str, int]]]:
    """``redis+cluster://[user:pw@]h1:p1,h2:p2[/0][?opts]`` → (``redis://[user:pw@]h1:p1[/0][?opts]``,
    [(h1, p1), (h2, p2)]): the first node's plain URL (its credentials and options serve every
    node) and every node given. IPv6 hosts go in brackets (``[::1]:7000``)."""
    nodes = _split_cluster_url(url)[2]
    return node_url(url, *nodes[0]), nodes


def node_url(url: str, host: str, port: int) -> str:
    """The plain ``redis://`` (``rediss://``) URL of one node of cluster `url`, same credentials and options."""
    scheme, auth, _, tail = _split_cluster_url(url)
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{auth}{shown}:{port}{tail}"


def _split_cluster_url(url: str) -> tuple[str, str, list[tuple[str, int]], str]:
    """(plain scheme, ``user:pw@`` or "", nodes, path and query)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"redis url: {mask_url(url)!r} is not a redis+cluster:// or rediss+cluster:// URL")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, _, hosts = netloc.rpartition("@")
    nodes = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"redis url: cluster node {item.strip()!r} in {mask_url(url)!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    return CLUSTER_SCHEMES[scheme.lower()], f"{userinfo}@" if userinfo else "", nodes, tail


def key_count(client: redis.Redis | redis.RedisCluster) -> int:
    """Keys in the database: DBSIZE, summed over every master on a cluster."""
    if is_cluster(client):
        return int(client.dbsize(target_nodes=redis.RedisCluster.PRIMARIES))
    return int(client.dbsize())


# -- cluster outages --------------------------------------------------------------------------


class ClusterUnavailable(redis.exceptions.ConnectionError):
    """Some hash slots of a Redis Cluster have no reachable master: writes to them failed."""


@dataclass(frozen=True)
class SlotOutage:
    first: int
    last: int
    master: str | None  # host:port of the master that owns the range (None: no master owns it)
    error: str

    def __str__(self) -> str:
        owner = f"master {self.master}" if self.master else "no master"
        return f"slots {self.first}-{self.last} ({owner}: {self.error})"


def unreachable_slots(url: str, timeout: float = 1.0) -> list[SlotOutage]:
    """The slot ranges of cluster `url` whose master does not answer PING (or that no master owns).

    The slot map comes from the first node of the URL that answers ``CLUSTER SLOTS``; if none does,
    every slot is reported. Empty: every slot has a reachable master.
    """
    _, nodes = parse_cluster_url(url)
    slot_map, errors = None, []
    for host, port in nodes:
        client = redis.Redis.from_url(node_url(url, host, port), socket_timeout=timeout,
                                      socket_connect_timeout=timeout)
        try:
            slot_map = client.execute_command("CLUSTER SLOTS")
            break
        except redis.RedisError as exc:
            errors.append(f"{host}:{port} {exc}")
        finally:
            client.close()
    if slot_map is None:
        return [SlotOutage(0, 16383, None, "no node of the URL answered: " + "; ".join(errors))]
    health: dict[tuple[str, int], str | None] = {}
    outages, covered = [], set()
    for entry in slot_map:  # parsed: {(first, last): {"primary": (host, port), ...}} or raw lists
        first, last, master = _slot_entry(entry, slot_map)
        covered.update(range(first, last + 1))
        if master not in health:
            probe = redis.Redis.from_url(node_url(url, *master), socket_timeout=timeout,
                                         socket_connect_timeout=timeout)
            try:
                probe.ping()
                health[master] = None
            except redis.RedisError as exc:
                health[master] = str(exc) or type(exc).__name__
            finally:
                probe.close()
        if health[master] is not None:
            outages.append(SlotOutage(first, last, f"{master[0]}:{master[1]}", health[master]))
    start = None
    for slot in range(16385):
        if slot < 16384 and slot not in covered:
            start = slot if start is None else start
        elif start is not None:
            outages.append(SlotOutage(start, slot - 1, None, "not assigned"))
            start = None
    return sorted(outages, key=lambda o: o.first)


def _slot_entry(entry: Any, slot_map: Any) -> tuple[int, int, tuple[str, int]]:
    if isinstance(slot_map, dict):  # redis-py's parsed form: (first, last) → {"primary": (host, port)}
        (first, last), info = entry, slot_map[entry]
        host, port = info["primary"]
    else:  # the raw reply: [first, last, [host, port, id], replicas...]
        first, last, (host, port, *_), *_ = entry
    host = host.decode() if isinstance(host, bytes) else host
    return int(first), int(last), (host, int(port))


def check_cluster(url: str, cause: BaseException | None = None) -> None:
    """Raises :class:`ClusterUnavailable` naming the unreachable slots of cluster `url`, if any.

    With no replicas nobody takes a dead master's slots over (no failover): writes to them fail
    until it is back. Guarded merges make a re-run after recovery equal a clean run.
    """
    if not is_cluster_url(url):
        return
    outages = unreachable_slots(url)
    if outages:
        lost = sum(o.last - o.first + 1 for o in outages)
        first_line = next(iter(str(cause).strip().splitlines()), type(cause).__name__) if cause else ""
        # the cause adds nothing when it is this very report (raised by a worker) or an outage's own error
        said = any(o.error in first_line for o in outages) or "hash slots unreachable" in first_line
        because = f" (first error: {first_line[:200]})" if first_line and not said else ""
        raise ClusterUnavailable(
            f"Redis Cluster {mask_url(url)}: {lost} of 16384 hash slots unreachable — "
            + "; ".join(map(str, outages))
            + f". Writes to them failed{because}; no replica took over (no failover). Nothing was "
            "dropped silently: restart that master (same port and nodes.conf) and re-run — guarded "
            "merges make the re-run equal a clean run."
        )


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
