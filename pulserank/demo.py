"""The main job on embedded defaults: fetch a data set, replay it, show what reached Redis.

Later issues extend this same command into the full loop (train, serve, live events).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipelines.datasets import FetchOptions, fetch
from pipelines.replay import run as run_replay
from stores.activity import read_activity
from stores.redis_client import describe, get_redis, redis_url


def _sample_event(path: Path) -> dict:
    with path.open() as fh:
        return json.loads(fh.readline())


def run_demo(data: str, workdir: Path, cache_dir: Path) -> int:
    started = time.perf_counter()
    data_dir = workdir / "data" / data
    manifest_path = data_dir / "manifest.json"
    if manifest_path.exists():
        print(f"[1/3] data set {data}: reusing {data_dir}")
        manifest = json.loads(manifest_path.read_text())
    else:
        print(f"[1/3] data set {data}: fetching into {data_dir}")
        manifest = fetch(data, data_dir, FetchOptions(cache_dir=cache_dir))
    for name, info in manifest["files"].items():
        print(f"      {name}: {info['events']:,} events")

    url = redis_url()
    print(f"[2/3] replaying into Redis ({describe()})")
    t0 = time.perf_counter()
    inputs = ",".join(str(data_dir / name) for name in manifest["files"])
    result = run_replay(
        ["--input", inputs, "--dead_letters", str(workdir / "dead-letters" / data), "--redis_url", url]
    )
    c = result.counters
    print(
        f"      read {c.get('events_read', 0):,} = written {c.get('events_written', 0):,}"
        f" + dead letters {c.get('dead_letters', 0):,} + duplicates {c.get('duplicates', 0):,}"
        f" in {time.perf_counter() - t0:.1f}s; {c.get('keys_written', 0):,} keys written"
    )

    client = get_redis(url)
    print(f"[3/3] read back from Redis: {client.dbsize():,} keys")
    sample = _sample_event(data_dir / max(manifest["files"], key=lambda f: manifest["files"][f]["events"]))
    for kind, entity in (("user", sample["user_id"]), ("item", sample["item_id"])):
        print(f"      {kind} {entity}: {read_activity(client, kind, entity)}")
    print(f"done in {time.perf_counter() - started:.1f}s; the embedded Redis stops with this command")
    return 0 if result.reconciles else 1
