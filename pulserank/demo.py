"""The main job on embedded defaults: fetch a data set, replay it, show what reached Redis.

Later issues extend this same command into the full loop (train, serve, live events).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipelines.datasets import FetchOptions, fetch
from pipelines.replay import run as run_replay
from schemas.clock import clock_from, format_instant, parse_instant
from stores.feature_store import FeatureStore
from stores.redis_client import describe, get_redis, redis_url


def _last_event(paths: list[Path]) -> dict:
    """The latest event of the logs: the demo pins the clock to it (a 1998 log as of its end)."""
    last: dict = {}
    for path in paths:
        with path.open() as fh:
            for line in fh:
                event = json.loads(line)
                if event.get("user_id") and (not last or parse_instant(event["ts"]) >= parse_instant(last["ts"])):
                    last = event
    return last


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
    logs = [data_dir / name for name in manifest["files"]]
    sample = _last_event(logs)
    as_of = format_instant(parse_instant(sample["ts"]) + 1)
    print(f"[2/3] replaying into Redis ({describe()}) with the clock pinned to the log's end, {as_of}")
    result = run_replay(["--input", ",".join(map(str, logs)), "--dead_letters", str(workdir / "dead-letters" / data),
                         "--redis_url", url, "--vector_store", f"embedded://{workdir / 'vectors'}", "--as_of", as_of])
    print(f"      {result.summary()}")

    client = get_redis(url)
    print(f"[3/3] read back from Redis: {client.dbsize():,} keys")
    user = FeatureStore(client, clock_from(as_of)).user_features(sample["user_id"])
    session = user["session"] or {}
    print(f"      the log's last user, {sample['user_id']}, as of {as_of}:")
    print(f"        activity in the last 24 h: {user['windows']['24h']}")
    print(f"        session: {session.get('length', 0)} events over {session.get('duration_ms', 0) / 60_000:.0f} min;"
          f" last {len(user['recent'])} interactions, newest {user['recent'][0] if user['recent'] else None}")
    print(f"done in {time.perf_counter() - started:.1f}s; the embedded Redis stops with this command")
    return 0 if result.reconciles else 1
