"""Redis Cluster: the stores on a real 3-master cluster (started here on loopback ports) and on one
node obey one contract, and a master killed mid-replay fails the replay loudly, never silently.

The contract tests run once per backend (`backend` is parametrized): feature-store merges, the
bandit store and its swap, the idempotency guards of live mode, the rate limiter, serving's reads.
The replay tests compare a cluster run with a single-node run key by key, then kill a master.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pytest
import redis as redis_lib

from pipelines.datasets.synthetic import SyntheticConfig, generate
from pipelines.replay import run as replay
from schemas import keys
from schemas.clock import format_instant, parse_instant
from schemas.events import EventType
from schemas.features import FeatureConfig
from stores import deployment, event_stream
from stores.deployment import ItemFeatures
from stores.feature_store import FeatureStore, Write, decode_decayed
from stores.rate_limit import TokenBucket, bucket_key
from stores.redis_client import (
    ClusterUnavailable,
    check_cluster,
    get_async_redis,
    get_redis,
    is_cluster,
    key_count,
    mask_url,
    parse_cluster_url,
    unreachable_slots,
)
from stores.redis_cluster import EmbeddedCluster, slot_ranges
from stores.serving_reads import fetch_context, fetch_items, read_bandit_counts
from tests.reference import Diff, parse_and_dedupe, raw, snapshot, vectors
from transforms import observe
from transforms.features import to_write
from transforms.observe import ItemInfo
from transforms.summaries import partial

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = SyntheticConfig(scale=0.05, span_days=3, duplicate_rate=0.06, disorder_rate=0.06)
VERSION = "v-test"


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(masters=3) as c:
        yield c


@pytest.fixture
def cluster_client(cluster: EmbeddedCluster) -> Iterator[redis_lib.RedisCluster]:
    cluster.wait_ok()  # a test that killed a master restarted it; make sure the cluster is whole
    client = get_redis(cluster.url)
    client.flushdb()  # on every master
    try:
        yield client
    finally:
        client.close()


@dataclass
class Backend:
    name: str
    url: str
    client: redis_lib.Redis | redis_lib.RedisCluster


@pytest.fixture(params=["single", "cluster"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "single":
        return Backend("single", request.getfixturevalue("redis_url"), request.getfixturevalue("redis"))
    cluster = request.getfixturevalue("cluster")
    return Backend("cluster", cluster.url, request.getfixturevalue("cluster_client"))


# -- a small synthetic log, and the feature writes it makes (plain Python, no Beam) -----------------


@dataclass
class Log:
    dir: Path
    end_ms: int

    @property
    def lines(self) -> list[str]:
        return [*(self.dir / "items.jsonl").read_text().splitlines(),
                *(self.dir / "events.jsonl").read_text().splitlines()]

    def argv(self, tmp: Path, vector_dir: Path) -> list[str]:
        return ["--input", f"{self.dir}/items.jsonl,{self.dir}/events.jsonl", "--as_of", format_instant(self.end_ms),
                "--dead_letters", str(tmp / "dead"), "--vector_store", f"embedded://{vector_dir}"]


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Log:
    out = tmp_path_factory.mktemp("cluster-log")
    generate(out, 11, SYNTHETIC)
    ts = [parse_instant(json.loads(x)["ts"]) for x in (out / "events.jsonl").read_text().splitlines()]
    return Log(out, max(ts))


def feature_writes(lines: list[str], config: FeatureConfig | None = None) -> list[Write]:
    """What the replay merges for `lines`, one write per key: catalog upserts, then every summary."""
    config = config or FeatureConfig()
    events = parse_and_dedupe(lines)
    writes, infos, parts = [], {}, {}
    for e in sorted((e for e in events if e.type is EventType.ITEM), key=lambda e: (e.ts, e.event_id)):
        fields_ = observe.catalog_fields(e, config)
        writes.append(Write("item", keys.item_attributes(e.item_id), "", (e.ts, e.event_id, fields_)))
        infos[e.item_id] = observe.item_info(fields_, config.content_model)
    for e in events:
        if e.type is EventType.ITEM:
            continue
        info = infos.get(e.item_id, ItemInfo())
        for key, p in [*observe.context_observations(e, info), *observe.bandit_observations(e, config),
                       *observe.trending_observations(e, config),
                       *observe.embedding_observations(e, info, config.content_model, config)]:
            parts[key] = partial.merge(parts[key], p) if key in parts else p
    return writes + [to_write(k, p) for k, p in sorted(parts.items())]


def _nodes_of(client: redis_lib.RedisCluster, names: list[str]) -> set[str]:
    return {client.get_node_from_key(k).name for k in names}


# -- the embedded cluster and the URL ---------------------------------------------------------------


def test_cluster_urls_parse_and_mask() -> None:
    first, nodes = parse_cluster_url("rediss+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002?ssl_cert_reqs=none")
    assert first == "rediss://app:s3cret@10.0.0.1:7000?ssl_cert_reqs=none"
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002)]
    assert mask_url("redis+cluster://app:s3cret@a:1,b:2") == "redis+cluster://app:***@a:1,b:2"
    with pytest.raises(ValueError, match="'b' .* is not host:port"):
        parse_cluster_url("redis+cluster://a:1,b")
    assert slot_ranges(3) == [(0, 5460), (5461, 10922), (10923, 16383)]  # as redis-cli splits them


def test_embedded_cluster_has_three_masters_covering_every_slot(cluster: EmbeddedCluster,
                                                                cluster_client: redis_lib.RedisCluster) -> None:
    assert is_cluster(cluster_client) and len(cluster_client.get_primaries()) == 3
    info = cluster_client.cluster_info(target_nodes=redis_lib.RedisCluster.PRIMARIES)
    assert {i["cluster_state"] for i in info.values()} == {"ok"}
    assert {int(i["cluster_slots_assigned"]) for i in info.values()} == {16384}
    slots = cluster_client.cluster_slots(target_nodes=redis_lib.RedisCluster.RANDOM)
    assert sorted(slots) == [(0, 5460), (5461, 10922), (10923, 16383)]
    assert unreachable_slots(cluster.url) == []
    check_cluster(cluster.url)  # raises nothing while every master answers
    assert (cluster.directory / "node0" / "nodes.conf").exists()


# -- the shared contract: one node and the cluster -------------------------------------------------


def test_feature_store_merges_once_and_re_merging_changes_nothing(backend: Backend, log: Log) -> None:
    writes = feature_writes(log.lines)
    store = FeatureStore(backend.client)
    first = store.apply(writes)
    guarded = sum(1 for w in writes if w.kind != "item")
    assert first.merged == len(writes) and first.skipped == 0
    state = raw(backend.client)
    again = store.apply(writes)
    assert again.merged == 0 and again.skipped == len(writes)  # guards (and item last-writer-wins) hold
    assert raw(backend.client) == state
    assert store.guard_stats()["guards"] == guarded  # SCAN finds every guard, on every master
    assert key_count(backend.client) == len(state) + guarded
    if backend.name == "cluster":
        assert len(_nodes_of(backend.client, [w.key for w in writes])) == 3


def test_feature_store_reloads_its_scripts_on_a_master_that_lost_them(backend: Backend, log: Log) -> None:
    writes = feature_writes(log.lines)
    store = FeatureStore(backend.client)
    backend.client.script_flush()  # on every master: as after a restart without the scripts cached
    assert store.apply(writes).merged == len(writes)
    backend.client.script_flush()
    assert store.apply(writes).skipped == len(writes)


def test_one_node_and_the_cluster_store_the_same_bytes(redis: redis_lib.Redis,
                                                       cluster_client: redis_lib.RedisCluster, log: Log) -> None:
    writes = feature_writes(log.lines)
    FeatureStore(redis).apply(writes)
    FeatureStore(cluster_client).apply(writes)
    single = raw(redis)
    assert single and raw(cluster_client) == single


def _decayed_write(key: str, sid: str, rows: dict[str, tuple[float, float]]) -> Write:
    from transforms.summaries.decay import Decayed

    return Write("decayed", key, sid, (None, {k: Decayed(0, np.array(v, float)) for k, v in rows.items()}))


def test_bandit_store_merges_reads_and_swaps(backend: Backend) -> None:
    client, store = backend.client, FeatureStore(backend.client)
    segments = [f"seg-{i}" for i in range(12)]
    for seg in segments:
        assert store.apply([_decayed_write(keys.bandit(seg), "s1", {"a": (1.0, 2.0), "b": (0.0, 1.0)})]).merged == 1
        assert store.apply([_decayed_write(keys.bandit(seg), "s1", {"a": (1.0, 2.0)})]).skipped == 1  # guarded
    assert store.bandit_segments() == deployment.bandit_segments(client) == sorted(segments)
    assert {i: tuple(d.sums) for i, d in store.bandit("seg-3", ["a", "b", "zz"]).items()} == {
        "a": (1.0, 2.0), "b": (0.0, 1.0)}
    if backend.name == "cluster":
        assert len(_nodes_of(client, [keys.bandit(s) for s in segments])) >= 2

    # The re-derivation's swap: a WATCH/MULTI on one slot (every key of a segment shares its tag).
    seg, run = "seg-3", "run1"
    deployment.snapshot_bandit(client, run, [seg])
    store.apply([_decayed_write(keys.bandit(seg), "s2", {"a": (1.0, 0.0)})])  # streamed during the run
    store.apply([_decayed_write(keys.bandit_rebuild(seg, run, "staging"), "log", {"a": (4.0, 9.0)})])
    assert deployment.swap_bandit(client, seg, run, None, summary_id="log-id") == 1
    got = {k.decode(): tuple(decode_decayed(v).sums) for k, v in client.hgetall(keys.bandit(seg)).items()}
    assert got == {"a": (5.0, 9.0)}
    assert client.exists(keys.guard(keys.bandit(seg), "log-id"))
    assert not client.exists(keys.bandit_rebuild(seg, run, "staging"), keys.bandit_rebuild(seg, run, "snapshot"))

    counts = asyncio.run(_read_bandits(backend.url))
    assert set(counts) == set(segments) and counts["seg-3"] == {"a": (5.0, 9.0)}


async def _read_bandits(url: str) -> dict:
    client = get_async_redis(url)
    try:
        return await read_bandit_counts(client, now_ms=1_700_000_000_000)
    finally:
        await client.aclose()


def test_live_mode_guards_hold_across_slots(backend: Backend) -> None:
    client = backend.client
    ids = [f"ev-{i}" for i in range(60)]
    event_stream.mark_seen(client, ids[:40], "batch-1", ttl_s=600)
    event_stream.mark_seen(client, ids[20:], "batch-2", ttl_s=600)  # SET NX: the first batch keeps its ids
    assert event_stream.seen_elsewhere(client, [*ids, "ev-new"], "batch-2") == set(ids[:40])
    assert event_stream.seen_elsewhere(client, ids, "batch-1") == set(ids[40:])  # its own markers are unseen
    if backend.name == "cluster":
        assert len(_nodes_of(client, [keys.seen_event(i) for i in ids])) == 3

    letters = [{"source": f"log.jsonl:{n}", "line": n, "raw": "{", "field": "$", "reason": "not json"}
               for n in range(5)]
    assert event_stream.dead_letter(client, letters) == 5
    assert event_stream.dead_letter(client, letters) == 0  # a redelivered batch adds none twice
    assert [d["source"] for d in event_stream.dead_letters(client)] == [r["source"] for r in letters]

    # The stream and its consumer group: a crashed batch comes back whole.
    event_stream.ensure_group(client)
    sent = event_stream.append(client, [{"event_id": f"e{i}"} for i in range(4)])
    batch, redelivered = event_stream.read_batch(client, "c1", count=3, block_ms=0)
    assert [e.id for e in batch] == sent[:3] and not redelivered
    again, redelivered = event_stream.read_batch(client, "c1", count=3, block_ms=0)
    assert [e.id for e in again] == sent[:3] and redelivered
    assert event_stream.ack(client, [e.id for e in again]) == 3
    event_stream.mark_archived(client, sent[2])
    assert event_stream.trim(client) == 3


def test_rate_limiter_takes_atomically_per_bucket(backend: Backend) -> None:
    t0 = 1_700_000_000_000
    names = [f"key-{i}" for i in range(6)]

    async def scenario() -> tuple[list, list]:
        client = get_async_redis(backend.url, max_connections=64)
        try:
            bucket = TokenBucket(client)
            seq = [await bucket.take("web", 2.0, 3.0, t0) for _ in range(4)]
            seq.append(await bucket.take("web", 2.0, 3.0, t0 + 500))
            hot = await asyncio.gather(*(bucket.take(n, 1.0, 5.0, t0) for n in names for _ in range(8)))
            return seq, list(hot)
        finally:
            await client.aclose()

    seq, hot = asyncio.run(scenario())
    assert seq == [(True, 0)] * 3 + [(False, 500), (True, 0)]
    assert sum(allowed for allowed, _ in hot) == 5 * len(names)  # each bucket's burst, no more
    if backend.name == "cluster":
        assert len(_nodes_of(backend.client, [bucket_key(n) for n in names])) >= 2


def _item_rows(n: int) -> list[ItemFeatures]:
    rng = np.random.default_rng(0)
    return [ItemFeatures(f"item-{i:05d}", ("toys", ""), rng.normal(size=8).astype(np.float32),
                         rng.normal(size=4).astype(np.float32), i, 1_700_000_000_000) for i in range(n)]


async def _serving_reads(url: str, user_id: str, now_ms: int, ids: list[str]) -> tuple:
    client = get_async_redis(url)
    try:
        context = await fetch_context(client, user_id, VERSION, "seg-0", now_ms)
        items = await fetch_items(client, VERSION, ids, "seg-0", now_ms)
        nothing = await fetch_items(client, VERSION, [], "seg-0", now_ms)  # no candidates: no commands
        return context, items, nothing
    finally:
        await client.aclose()


def _plain(obj: object) -> object:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    return obj


def test_serving_reads_item_features_across_slots(redis: redis_lib.Redis, cluster_client: redis_lib.RedisCluster,
                                                 cluster: EmbeddedCluster, redis_url: str, log: Log) -> None:
    rows = _item_rows(40)
    ids = [r.item_id for r in rows] + ["item-missing"]
    user = "user-00014"
    out = {}
    for name, client, url in (("single", redis, redis_url), ("cluster", cluster_client, cluster.url)):
        FeatureStore(client).apply(feature_writes(log.lines))
        deployment.write_item_features(client, VERSION, rows)
        deployment.write_user_embeddings(client, VERSION, [user], np.ones((1, 4), np.float32), log.end_ms)
        deployment.write_seen(client, {user: {"item-00001": log.end_ms}})
        out[name] = asyncio.run(_serving_reads(url, user, log.end_ms, ids))

    context, items, nothing = out["cluster"]
    assert _nodes_of(cluster_client, [keys.item_model_features(i, VERSION) for i in ids]) == {
        n.name for n in cluster_client.get_primaries()}  # one pipelined read spans every master
    assert set(items.features) == set(ids) - {"item-missing"}
    assert all(items.features[r.item_id].popularity == r.popularity for r in rows)
    np.testing.assert_array_equal(items.features["item-00007"].content, rows[7].content)
    assert items.attributes and items.bandit_global  # catalogue and bandit rows from other slots
    assert context.recent and context.trending and context.seen == {"item-00001": log.end_ms}
    assert context.embedding is not None
    assert not nothing.features and not nothing.bandit
    assert _plain(out["cluster"]) == _plain(out["single"])


# -- the replay: cluster = one node; a master killed mid-replay -------------------------------------


@dataclass
class State:
    raw: dict
    vectors: dict
    items: int  # catalogue hashes
    guards: int


def _state(client: redis_lib.Redis | redis_lib.RedisCluster, log: Log, vector_dir: Path) -> State:
    view = snapshot(client, log.end_ms)
    items = sum(1 for _ in client.scan_iter(match=keys.item_attributes("*"), count=1000))
    guards = sum(1 for _ in client.scan_iter(match=keys.guard_pattern(), count=1000))
    return State(raw(client), vectors(f"embedded://{vector_dir}", view), items, guards)


@pytest.fixture(scope="module")
def clean_single(log: Log, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> State:
    tmp = tmp_path_factory.mktemp("single")
    client = get_redis(redis_url)
    client.flushdb()
    try:
        result = replay([*log.argv(tmp, tmp / "vec"), "--redis_url", redis_url])
        assert result.reconciles and result["keys_merged"] > 0
        return _state(client, log, tmp / "vec")
    finally:
        client.close()


@pytest.fixture(scope="module")
def clean_cluster(log: Log, cluster: EmbeddedCluster, tmp_path_factory: pytest.TempPathFactory) -> State:
    tmp = tmp_path_factory.mktemp("cluster")
    cluster.wait_ok()
    client = get_redis(cluster.url)
    client.flushdb()
    try:
        result = replay([*log.argv(tmp, tmp / "vec"), "--redis_url", cluster.url])
        assert result.reconciles and result["keys_merged"] > 0
        return _state(client, log, tmp / "vec")
    finally:
        client.close()


def _same_vectors(a: dict, b: dict) -> None:
    diff = Diff()
    for name, vecs in a.items():
        diff.compare(vecs, b.get(name, {}))
    assert a and set(a) == set(b) and not diff.problems, "\n".join(diff.problems[:20])


def test_a_replay_on_the_cluster_stores_what_it_stores_on_one_node(clean_single: State, clean_cluster: State) -> None:
    assert clean_cluster.raw == clean_single.raw  # key by key, byte for byte
    assert clean_cluster.guards == clean_single.guards > 0
    _same_vectors(clean_single.vectors, clean_cluster.vectors)


def _wait(condition, timeout: float, what: str, proc: subprocess.Popen, stderr: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the replay ended (code {proc.returncode}) before {what}:\n"
                                 f"{stderr.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_killing_a_master_mid_replay_fails_naming_its_slots_and_a_rerun_equals_a_clean_run(
        cluster: EmbeddedCluster, cluster_client: redis_lib.RedisCluster, clean_cluster: State, log: Log,
        tmp_path: Path) -> None:
    victim = cluster.nodes[2]
    argv = log.argv(tmp_path, tmp_path / "vec")
    env = {**os.environ, "REDIS_URL": cluster.url, "PYTHONWARNINGS": "ignore::FutureWarning"}
    count = lambda pattern: sum(1 for _ in cluster_client.scan_iter(match=pattern, count=1000))  # noqa: E731
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.replay", *argv], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=err_file)
    try:
        # The catalogue is written first; the feature merges follow once every item is looked up.
        _wait(lambda: count(keys.item_attributes("*")) == clean_cluster.items, 120, "the catalogue", proc, stderr)
        # Hold the victim's writes (its reads go on), so the replay is caught with merges half done.
        pauser = victim.client()
        pauser.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        pauser.close()
        _wait(lambda: count(keys.guard_pattern()) > 0, 60, "merges on the other masters", proc, stderr)
        guards = count(keys.guard_pattern())
        cluster.kill(2)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lo, hi = victim.slots
    err = stderr.read_text()
    assert proc.returncode == 3, err[-3000:]
    assert f"slots {lo}-{hi} (master {victim.address}" in err and "no failover" in err, err[-3000:]
    assert 0 < guards < clean_cluster.guards
    with pytest.raises(ClusterUnavailable, match=f"slots {lo}-{hi}"):
        check_cluster(cluster.url)
    # The CLI says the same, with no traceback, while the master is still down.
    cli = subprocess.run([sys.executable, "-m", "pulserank.cli", "replay", "--input", argv[1], "--as-of", argv[3],
                          "--dead-letters", str(tmp_path / "cli-dead"), "--vector-store", f"embedded://{tmp_path}/v2",
                          "--redis-url", cluster.url], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 3, cli.stderr[-3000:]
    assert "pulserank replay: Redis Cluster" in cli.stderr and f"slots {lo}-{hi}" in cli.stderr

    cluster.restart(2)  # same port, nodes.conf and append-only file: its acknowledged writes are back
    again = replay([*argv, "--redis_url", cluster.url])
    assert again.reconciles and again["keys_merged"] > 0 and again["merges_skipped_by_guard"] >= guards
    client = get_redis(cluster.url)
    try:
        after = _state(client, log, tmp_path / "vec")
    finally:
        client.close()
    assert after.raw == clean_cluster.raw  # nothing lost, nothing merged twice
    assert after.guards == clean_cluster.guards
    _same_vectors(clean_cluster.vectors, after.vectors)
