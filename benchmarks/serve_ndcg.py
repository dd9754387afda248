"""NDCG@10 through the gRPC API vs the offline evaluation of the same registered version.

    python -m benchmarks.serve_ndcg --input '/data/ml100k/*.jsonl' --registry R [--version V]

The version must have been trained with a held-out split (`pulserank train`'s default: per-user
random 25 %, seed 0). The training part of the log is replayed into Redis (the embedded server
unless REDIS_URL is set — its DB is flushed) and deployed; an origin serves it with the clock
pinned to the log's end; every held-out user is asked for 10 items in the default mode (no
candidate list, exploration disabled). Prints both NDCG@10 figures and the request latency.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from models import registry
from pipelines import replay
from pipelines.deploy import deploy
from pipelines.holdout_log import write_training_log
from schemas import personalization_pb2 as pb
from schemas import personalization_pb2_grpc as pb_grpc
from schemas.clock import AS_OF_ENV, Clock
from serving.config import ServeConfig
from serving.server import ServerThread
from stores.redis_client import get_redis, redis_url


def ndcg(ranked: list[str], relevant: set[str], k: int = 10) -> float:
    dcg = sum(1.0 / np.log2(i + 2) for i, item in enumerate(ranked[:k]) if item in relevant)
    return dcg / sum(1.0 / np.log2(i + 2) for i in range(min(len(relevant), k)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True)
    p.add_argument("--registry", required=True)
    p.add_argument("--version", default=None, help="default: the production version, else the newest")
    args = p.parse_args()
    alias = registry.read_alias(args.registry)
    version = args.version or (alias.version if alias else registry.listing(args.registry)[-1].version)
    meta = registry.load_version(args.registry, version).metadata
    holdout = meta.get("holdout") or {"kind": "random", "seed": 0}
    work = Path(tempfile.mkdtemp(prefix="serve-ndcg-"))
    log = work / "train.jsonl"
    t0 = time.perf_counter()
    end, truth = write_training_log(args.input.split(","), log, holdout["kind"], holdout["seed"])
    url = redis_url()
    get_redis(url).flushdb()
    store = f"embedded://{work / 'vectors'}"
    os.environ[AS_OF_ENV] = str(end)
    replay.run(["--input", str(log), "--redis_url", url, "--as_of", str(end), "--dead_letters", str(work / "dl"),
                "--vector_store", store])
    root = work / "registry"  # a registry whose production alias is the version asked for
    registry.publish(str(root), version, {n: registry.load_version(args.registry, version).file_path(n)
                                          for n in meta["files"]}, meta)
    registry.promote(str(root), version)
    # every user of the log, as the offline evaluation scores them: no idle cut-off (else users
    # idle > 90 days at the log's end get neither a seen set nor an embedding)
    deploy(str(root), version, [str(log)], url, store, clock=Clock(end), idle_days=None)
    prepared = time.perf_counter() - t0
    server = ServerThread(ServeConfig(listen="127.0.0.1:0", registry=str(root), redis_url=url, vector_store=store),
                          Clock(end))
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.PersonalizationStub(channel)
            scores, latency = [], []
            for user in sorted(truth):
                started = time.perf_counter()
                resp = stub.Personalize(pb.PersonalizeRequest(user_id=user, n=10, disable_exploration=True),
                                        timeout=10)
                latency.append((time.perf_counter() - started) * 1000)
                scores.append(ndcg([i.item_id for i in resp.items], truth[user]))
    finally:
        server.stop()
    api, offline = float(np.mean(scores)), meta["metrics"]["model"]["ndcg@10"]
    print(f"version {version}: NDCG@10 through the API {api:.4f}, offline {offline:.4f}, "
          f"|diff| {abs(api - offline):.4f} over {len(scores)} users")
    print(f"sequential Personalize latency: p50 {np.percentile(latency, 50):.1f} ms, "
          f"p99 {np.percentile(latency, 99):.1f} ms; preparation (split, replay, deploy) {prepared:.1f} s")


if __name__ == "__main__":
    main()
