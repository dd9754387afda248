"""The project's own Redis: a real redis-server that starts on demand and never outlives its owner."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import redis as redis_py

from stores import redis_client
from stores.redis_server import ENV_BINARY, EmbeddedRedis, RedisServerError, sweep_stale_dirs

REPO = Path(__file__).resolve().parents[1]

# Uses the project's Redis like any other process would, prints the server pid, then ends as told.
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from stores import redis_client

    client = redis_client.get_redis()
    client.set("k", "v")
    print(client.info("server")["process_id"], redis_client.embedded_server().directory, flush=True)
    mode = sys.argv[1]
    if mode == "exit":
        sys.exit(0)
    if mode == "raise":
        raise RuntimeError("boom")
    time.sleep(60)  # "sigkill" / "sigterm": the test sends the signal
    """
)


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _is_live_redis(pid: int) -> bool:
    """True while ``pid`` is a running redis-server (a zombie awaiting its new parent is dead)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "X")
    return state not in ("Z", "X") and b"redis-server" in cmdline


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_live_redis(pid):
            return True
        time.sleep(0.02)
    return not _is_live_redis(pid)


# -- the fixture is a real server --------------------------------------------------------------


def test_fixture_is_a_real_redis_server(redis: redis_py.Redis) -> None:
    info = redis.info("server")
    assert info["redis_version"] and int(info["process_id"]) > 0

    assert redis.set("greeting", "hello") and redis.get("greeting") == b"hello"

    with redis.pipeline() as pipe:
        pipe.hset("h", mapping={"a": 1, "b": 2}).hincrby("h", "a", 5).hgetall("h")
        *_, stored = pipe.execute()
    assert stored == {b"a": b"6", b"b": b"2"}

    script = "return redis.call('INCRBY', KEYS[1], ARGV[1]) * 2"
    assert redis.eval(script, 1, "counter", 21) == 42

    redis.xgroup_create("events", "workers", id="0", mkstream=True)
    first = redis.xadd("events", {"type": "click", "item_id": "i1"})
    redis.xadd("events", {"type": "view", "item_id": "i2"})
    [[stream, entries]] = redis.xreadgroup("workers", "w1", {"events": ">"}, count=10)
    assert stream == b"events" and [e[1][b"type"] for e in entries] == [b"click", b"view"]
    assert redis.xack("events", "workers", first) == 1
    assert redis.xpending("events", "workers")["pending"] == 1


def test_embedded_server_is_private_and_ephemeral() -> None:
    with EmbeddedRedis() as server:
        pid = server.pid
        assert pid is not None and server.url.startswith("unix://")
        sock = Path(server.url.removeprefix("unix://"))
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        client = redis_client.get_redis(server.url, decode_responses=True)
        config = client.config_get("*")
        assert (config["port"], config["save"], config["appendonly"]) == ("0", "", "no")
        client.close()
    assert not sock.parent.exists()
    assert not Path(f"/proc/{pid}").exists()  # stop() reaped it: not even a zombie


def test_server_started_from_a_short_lived_thread_survives_the_thread() -> None:
    # PDEATHSIG follows the forking thread: start() off the main thread forks from an owner thread.
    box: dict[str, EmbeddedRedis] = {}
    thread = threading.Thread(target=lambda: box.setdefault("server", EmbeddedRedis().start()))
    thread.start()
    thread.join()
    server = box["server"]
    try:
        time.sleep(0.3)
        assert server.running and redis_client.get_redis(server.url).ping()
    finally:
        pid = server.pid
        server.stop()
    assert pid is not None and not Path(f"/proc/{pid}").exists()


def test_startup_failure_reports_the_server_log() -> None:
    with pytest.raises(RedisServerError, match=r"(?s)exited with code.*no-such-directive"):
        EmbeddedRedis(extra_args=["--no-such-directive", "1"]).start()


# -- lifecycle: the server never outlives the process that started it ---------------------------


@pytest.mark.parametrize("mode", ["exit", "raise", "sigkill", "sigterm"])
def test_server_dies_with_its_owner(mode: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode],
        cwd=REPO,
        env=_child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.split()[0].isdigit(), f"child printed {line!r}; stderr: {child.stderr.read()}"  # type: ignore[union-attr]
        pid, directory = int(line.split()[0]), Path(line.split()[1])
        assert directory.is_dir()
        if mode == "sigkill":
            assert _is_live_redis(pid)
            child.send_signal(signal.SIGKILL)  # no atexit: only PDEATHSIG can stop the server
        elif mode == "sigterm":
            assert _is_live_redis(pid)
            child.send_signal(signal.SIGTERM)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert _wait_gone(pid), f"redis-server pid {pid} outlived its owner ({mode})"
    if mode in ("exit", "raise"):
        assert not directory.exists()  # the atexit stop() removed it
    else:
        sweep_stale_dirs()  # what the next start does: a killed owner's dir goes then
        assert not directory.exists()


def test_no_server_survives_a_pytest_run(tmp_path: Path) -> None:
    # A nested pytest loads this repo's tests/conftest.py as a plugin; nothing is written in tests/.
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_nested_redis.py").write_text(
        "def test_uses_redis(redis):\n"
        "    redis.set('k', 'v')\n"
        "    print('REDIS_PID', redis.info('server')['process_id'])\n"
    )
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-s",
            "-p", "no:cacheprovider", "-p", "tests.conftest",
            "--rootdir", str(tmp_path), "-c", str(tmp_path / "pytest.ini"),
            str(tmp_path / "test_nested_redis.py"),
        ],
        cwd=REPO,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    [pid] = [int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("REDIS_PID")]
    assert _wait_gone(pid, timeout=2.0), f"redis-server pid {pid} survived the pytest run"


# -- configuration ------------------------------------------------------------------------------


def test_redis_url_is_honoured_and_no_server_is_started() -> None:
    with EmbeddedRedis(tcp=True) as server:
        assert server.url.startswith("redis://127.0.0.1:")
        url = f"{server.url}/0"
        script = textwrap.dedent(
            """
            import json
            from stores import redis_client
            client = redis_client.get_redis()
            client.set("written-by-child", "yes")
            print(json.dumps({"describe": redis_client.describe(),
                              "embedded": redis_client.embedded_server() is not None,
                              "server_pid": client.info("server")["process_id"]}))
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=REPO,
            env=_child_env(REDIS_URL=url),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report == {"describe": f"REDIS_URL {url}", "embedded": False, "server_pid": server.pid}
        assert redis_client.get_redis(server.url).get("written-by-child") == b"yes"


def test_describe_masks_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "rediss://app:s3cret@cache.internal:6380/2")
    assert redis_client.redis_url() == "rediss://app:s3cret@cache.internal:6380/2"
    assert redis_client.describe() == "REDIS_URL rediss://app:***@cache.internal:6380/2"
    assert "zz" not in redis_client.mask_url("unix:///run/redis.sock?db=1&password=zz")


def test_rediss_urls_use_tls() -> None:
    client = redis_client.get_redis("rediss://localhost:1/0")  # builds lazily: no server needed
    assert issubclass(client.connection_pool.connection_class, redis_py.SSLConnection)
    unix = redis_client.get_redis("unix:///nonexistent/redis.sock")
    assert issubclass(unix.connection_pool.connection_class, redis_py.UnixDomainSocketConnection)


def test_missing_binary_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_BINARY, "/nonexistent")
    with pytest.raises(RedisServerError, match=ENV_BINARY):
        EmbeddedRedis().start()
