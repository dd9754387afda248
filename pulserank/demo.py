"""The main job on embedded defaults: fetch a data set, replay it, show what reached Redis.

Later issues extend this same command into the full loop (train, serve, live events).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipelines.datasets import FetchOptions, fetch
from pipelines.replay import run as run_replay
from stores.feature_store import FeatureStore
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
    inputs = ",".join(str(data_dir / name) for name in manifest["files"])
    result = run_replay(["--input", inputs, "--dead_letters", str(workdir / "dead-letters" / data),
                         "--redis_url", url, "--vector_store", f"embedded://{workdir / 'vectors'}"])
    print(f"      {result.summary()}")

    client = get_redis(url)
    print(f"[3/3] read back from Redis: {client.dbsize():,} keys")
    sample = _sample_event(data_dir / max(manifest["files"], key=lambda f: manifest["files"][f]["events"]))
    user = FeatureStore(client).user_features(sample["user_id"])
    print(f"      user {sample['user_id']}: last {len(user['recent'])} interactions, newest"
          f" {user['recent'][0] if user['recent'] else None}")
    print(f"done in {time.perf_counter() - started:.1f}s; the embedded Redis stops with this command")
    return 0 if result.reconciles else 1
