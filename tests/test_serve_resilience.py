"""Issue 5's resilience acceptance, under steady Personalize load from client threads (blocking
stubs, a deadline, client retries off): Redis SIGKILLed and brought back, the production alias
moved (promote, rollback, a version whose ONNX file is corrupt), and A/B variants each served by
the version of their own alias.

The module runs on a private redis-server (`EmbeddedRedis` on a loopback port, so a new server
can take over the address) and on a copy of the suite's cached registry (the shared cache is
never modified), holding three versions: the trained one, the same files under a second name
(deployed too, so it has its own collections and features), and one whose ranker is garbage.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis as redis_py

from models import registry
from pipelines.deploy import deploy
from schemas import personalization_pb2 as pb
from schemas import personalization_pb2_grpc as pb_grpc
from schemas.clock import Clock
from serving import ab
from serving.config import ServeConfig
from serving.personalize import ServingSizes
from serving.server import ServerThread
from stores import deployment, redis_server
from stores.redis_server import EmbeddedRedis
from tests.test_serve import replay_and_deploy

DEADLINE_S = 2.0  # per request: far above a healthy answer, so a hang shows as DEADLINE_EXCEEDED
# A smaller candidate pool than the default 500 (the synthetic catalogue has 90 items anyway): the
# candidates' feature replies are what a request spends most time on (redis-py parses them in
# Python), and these checks need ≥ 50 requests/s from one origin on 2 shared cores.
SIZES = ServingSizes(collaborative=30, content=30, trending=30, candidates=30, rank_top=30)


@dataclass
class Call:
    sent: float  # time.monotonic()
    done: float
    user: str
    code: str  # grpc.StatusCode name
    degraded: bool = False
    version: str = ""
    variant: str = ""
    items: int = 0


class Load:
    """Personalize calls from `threads` client threads, paced to `rate` per second in all, until
    `stop()`; every call's outcome is kept. One plain channel with retries disabled."""

    def __init__(self, address: str, users: list[str], rate: float, threads: int = 4) -> None:
        self.channel = grpc.insecure_channel(address, options=[("grpc.enable_retries", 0)])
        self.stub = pb_grpc.PersonalizationStub(self.channel)
        self.users, self.rate, self.n = users, rate, threads
        self.calls: list[Call] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        period = self.n / self.rate
        next_at = time.monotonic() + i / self.rate
        k = i
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at += period
            user = self.users[k % len(self.users)]
            k += self.n
            sent = time.monotonic()
            try:
                r = self.stub.Personalize(pb.PersonalizeRequest(user_id=user, n=10), timeout=DEADLINE_S)
                call = Call(sent, time.monotonic(), user, "OK", r.degraded, r.model_version, r.variant, len(r.items))
            except grpc.RpcError as exc:
                call = Call(sent, time.monotonic(), user, exc.code().name)
            with self._lock:
                self.calls.append(call)

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(DEADLINE_S + 5)
        self.stopped = time.monotonic()
        self.channel.close()

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def wait_for(self, after: float, predicate, timeout: float) -> Call | None:
        """The first call sent after `after` that satisfies `predicate`, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((c for c in self.snapshot() if c.sent >= after and predicate(c)), None)
            if hit is not None:
                return hit
            time.sleep(0.02)
        return None


def _copy_version(root: str, source: str, name: str, replace: dict[str, bytes] | None = None,
                  work: Path | None = None) -> str:
    """Publishes `source`'s files and metadata as version `name`, with some files' bytes replaced."""
    v = registry.load_version(root, source)
    files = {f: v.file_path(f) for f in v.files}
    for f, data in (replace or {}).items():
        path = work / f"{name}-{f}"
        path.write_bytes(data)
        files[f] = str(path)
    meta = {k: val for k, val in v.metadata.items() if k not in ("version", "files", "created_at")}
    return registry.publish(root, name, files, meta).version


@pytest.fixture(scope="module")
def world(trained_registry, tmp_path_factory):
    """A private Redis holding the training part of the log, v1 and v2 deployed and v3 (corrupt)
    marked deployed; a registry copy with production → v1."""
    work = tmp_path_factory.mktemp("resilience")
    root = str(work / "registry")
    shutil.copytree(trained_registry.root, root)
    v1 = trained_registry.version
    v2 = _copy_version(root, v1, f"{v1}-second")
    v3 = _copy_version(root, v1, f"{v1}-corrupt", {"ranker.onnx": b"not an onnx model " * 64}, work)
    server = EmbeddedRedis(tcp=True).start()
    box = {"redis": server}
    try:
        url = server.url
        log, end, truth, store = replay_and_deploy(root, v1, trained_registry.data_dir, url, work)
        deploy(root, v2, [str(log)], url, store, clock=Clock(end))
        client = redis_py.Redis.from_url(url)
        deployment.mark_deployed(client, v3, deployment.deployed(client)[v1])  # serving must refuse it at load
        client.close()
        assert registry.read_alias(root).version == v1
        users = sorted(truth) + [f"cold-user-{i}" for i in range(10)]
        yield {"root": root, "url": url, "store": store, "end": end, "users": users, "v1": v1, "v2": v2, "v3": v3,
               "box": box, "work": work}
    finally:
        box["redis"].stop()


def _origin(world, **kw) -> ServerThread:
    config = ServeConfig(listen="127.0.0.1:0", registry=world["root"], redis_url=world["url"],
                         vector_store=world["store"], sizes=SIZES, **kw)
    return ServerThread(config, Clock(world["end"]))


def test_ab_variants_serve_their_own_alias(world) -> None:
    root, v1, v2 = world["root"], world["v1"], world["v2"]
    registry.promote(root, v2, alias="candidate")
    experiment = {"name": "exp-resilience", "variants": [
        {"name": "control", "weight": 0.5, "model": "production"},
        {"name": "treatment", "weight": 0.5, "model": "candidate", "n0": 5, "epsilon": 0.05}]}
    server = _origin(world, experiment=experiment)
    exp = ab.load_experiment(experiment)
    expected = {"control": v1, "treatment": v2}
    users = world["users"] + [f"ab-user-{i}" for i in range(200)]
    channel = grpc.insecure_channel(server.address, options=[("grpc.enable_retries", 0)])
    stub = pb_grpc.PersonalizationStub(channel)
    try:
        with ThreadPoolExecutor(4) as pool:
            replies = dict(zip(users, pool.map(
                lambda u: stub.Personalize(pb.PersonalizeRequest(user_id=u, n=10), timeout=DEADLINE_S), users),
                strict=True))
    finally:
        channel.close()
        server.stop()
    assert all(len(r.items) == 10 and not r.degraded for r in replies.values())
    for user, r in replies.items():
        variant = ab.allocate(user, exp).name
        assert (r.variant, r.model_version) == (variant, expected[variant]), user
    shares = Counter(r.variant for r in replies.values())
    print(f"\n  [measured] A/B over {len(replies)} users: {dict(shares)}, control → {v1}, treatment → {v2}")
    assert set(shares) == {"control", "treatment"}


def test_hot_swap_under_load_drops_nothing_and_refuses_a_corrupt_version(world) -> None:
    root, v1, v2, v3 = world["root"], world["v1"], world["v2"], world["v3"]
    server = _origin(world)
    try:
        with Load(server.address, world["users"], rate=40, threads=3) as load:
            time.sleep(1.0)
            promoted = time.monotonic()
            registry.promote(root, v2)
            to_v2 = load.wait_for(promoted, lambda c: c.version == v2, timeout=6)
            assert to_v2 is not None, "responses never switched to the promoted version"
            time.sleep(1.0)
            rolled = time.monotonic()
            registry.rollback(root)
            to_v1 = load.wait_for(rolled, lambda c: c.version == v1, timeout=6)
            assert to_v1 is not None, "responses never switched back after the rollback"
            time.sleep(0.5)
            corrupt = time.monotonic()
            registry.promote(root, v3)  # the checksums match: only loading the ONNX file can tell
            time.sleep(3.5)  # several alias polls
            corrupt_end = time.monotonic()
            personalizer = server.running.origin.models["production"]
            seen, serving = personalizer.active.version, personalizer.version
        registry.rollback(root)
    finally:
        server.stop()
    assert registry.read_alias(root).version == v1
    calls = load.calls
    failed = [c for c in calls if c.code != "OK" or c.degraded or c.items != 10]
    assert not failed, f"{len(failed)} failed or degraded of {len(calls)}: {failed[:3]}"
    # once switched, the old version never comes back until the rollback (one swap, no flapping)
    assert {c.version for c in calls if to_v2.done < c.sent < rolled} == {v2}
    assert {c.version for c in calls if to_v1.done < c.sent < corrupt} == {v1}
    during = [c for c in calls if corrupt <= c.sent <= corrupt_end]
    assert during and {c.version for c in during} == {v1}, Counter(c.version for c in during)
    assert v3 not in {c.version for c in calls}
    assert (seen, serving) == (v3, v1), "the alias move to the corrupt version was followed and refused at load"
    rate = len(calls) / (load.stopped - load.started)
    print(f"\n  [measured] hot swap: {len(calls)} requests at {rate:.0f}/s, 0 failed; promote → "
          f"{to_v2.done - promoted:.2f}s to serve {v2}; rollback → {to_v1.done - rolled:.2f}s back to {v1}; "
          f"corrupt {v3} promoted: {len(during)} requests over {corrupt_end - corrupt:.1f}s all on {v1}")


def _restart(old: EmbeddedRedis, rdb_dir: Path, port: int) -> EmbeddedRedis:
    """A new redis-server on `port` that loads `rdb_dir/dump.rdb` (EmbeddedRedis picks its port
    through `_free_loopback_port`, so it is pinned for this start; a later `--dir` wins)."""
    old.stop()  # reaps the killed process
    pick = redis_server._free_loopback_port
    redis_server._free_loopback_port = lambda: port
    try:
        return EmbeddedRedis(tcp=True, extra_args=["--dir", str(rdb_dir)]).start()
    finally:
        redis_server._free_loopback_port = pick


def test_redis_sigkilled_under_load_degrades_and_recovers(world) -> None:
    old: EmbeddedRedis = world["box"]["redis"]
    port = int(world["url"].rsplit(":", 1)[1])
    rdb_dir = world["work"] / "rdb"
    rdb_dir.mkdir()
    client = redis_py.Redis.from_url(world["url"])
    client.save()
    client.close()
    shutil.copy(old.directory / "dump.rdb", rdb_dir / "dump.rdb")
    server = _origin(world)
    try:
        with Load(server.address, world["users"], rate=80, threads=6) as load:
            time.sleep(1.5)
            killed = time.monotonic()
            os.kill(old.pid, signal.SIGKILL)
            time.sleep(2.0)
            restarting = time.monotonic()
            world["box"]["redis"] = new = _restart(old, rdb_dir, port)
            up = time.monotonic()
            assert new.url == world["url"]
            recovered = load.wait_for(up, lambda c: c.code == "OK" and not c.degraded, timeout=5)
            time.sleep(2.0)
    finally:
        server.stop()
    calls = load.calls
    duration = load.stopped - load.started
    rate = len(calls) / duration
    failed = [c for c in calls if c.code != "OK"]
    degraded = [c for c in calls if c.degraded]
    first = min((c for c in degraded if c.sent >= killed - 0.1), key=lambda c: c.done, default=None)
    phases = {name: sum(lo <= c.sent < hi for c in calls) / (hi - lo) for name, lo, hi in
              (("before", load.started, killed), ("down", killed, up), ("after", up, load.stopped))}
    print(f"\n  [measured] Redis SIGKILL under load: {len(calls)} requests in {duration:.1f}s ({rate:.0f}/s; "
          + ", ".join(f"{k} {v:.0f}/s" for k, v in phases.items()) + f"), "
          f"{len(failed)} non-OK, {len(degraded)} degraded; first degraded answer "
          f"{(first.done - killed) if first else float('nan'):.3f}s after the kill; down {restarting - killed:.1f}s, "
          f"restart took {up - restarting:.2f}s; first normal answer "
          f"{(recovered.done - up) if recovered else float('nan'):.3f}s after Redis was back")
    assert duration >= 5 and rate >= 50, "the load this check needs was not offered"
    assert not failed, f"{len(failed)} non-OK: {Counter(c.code for c in failed)}"
    assert not [c for c in calls if c.done < killed and c.degraded]
    assert first is not None and first.done - killed <= 1.0
    outage = [c for c in calls if killed + 1.0 <= c.sent and c.done <= restarting]
    assert outage and all(c.degraded for c in outage), Counter(c.degraded for c in outage)
    assert recovered is not None, "the degraded flag never cleared after Redis came back"
    after = [c for c in calls if c.sent >= recovered.done]
    bad = [(round(c.sent - up, 3), c.degraded, c.items) for c in after if c.degraded or c.items != 10]
    assert after and not bad, f"after recovery (s after Redis was back, degraded, items): {bad}"  # data restored
    assert all(c.items == 10 for c in calls)  # degraded answers too: the trending snapshot
