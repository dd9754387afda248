"""Redis memory per active user and per item after a replay (and a deploy): where the bytes go.

    python -m benchmarks.redis_memory [--data movielens100k | synthetic | DIR] [--scale 10]
        [--registry DIR [--version V] | --train] [--idle-days 90] [--redis-config K=V,...] [--json OUT]

A fresh embedded redis-server (never `REDIS_URL`: the figures need an empty server of their own)
gets the data set replayed into it with the clock pinned to the log's end, as the demo does.
With a model (`--registry DIR`, or `--train`: a small model trained once on the same log through
`pulserank train` and cached under ~/.cache/pulserank/bench-memory), the production (or
`--version`) version is deployed too, so every serving feature is present: the batch user
embedding (`bemb`), the seen set (`seen`) and the ranker's item features (`feat:<version>`).

Every key is then measured with `MEMORY USAGE key SAMPLES 0` (the whole value, not a sample) and
grouped by hash tag kind (`{u:…}` users, `{i:…}` items, `{s:…}` segments, idempotency guards,
streams, other) and by key part (win, recent, sess, emo, vec, bemb, seen, attrs, feat, …). The
report gives bytes per active user — over the serving features (what serving reads: bemb, seen,
recent, sess, emo; the aim is 1 KB) and over every user key (plus the streaming path's win and
vec) — per part with the share of users holding it, bytes per item, the guards' overhead,
`INFO memory used_memory` before and after, and the ratio to the aim. Deploy runs with no idle
cut-off, so every user of the log gets every serving feature; then the idle-user prune
(`stores.retention`) runs as of the log's end and as of `--idle-days` + 1 day after it, showing
how many users and bytes each pass drops (the second drops them all: every user is idle by then).
`--redis-config` passes server settings, e.g. Redis's own defaults
(`hash-max-ziplist-value=64,zset-max-ziplist-entries=128`) for the figures before the embedded
server's compact encodings (`stores.redis_server.MEMORY_ARGS`).

Data sets are fetched once into ~/.cache/pulserank/bench-memory/data (`synthetic` at `--scale`,
10 by default: 5,000 users, 3,000 items, ~424k events).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("PULSERANK_BENCH_CACHE", Path.home() / ".cache" / "pulserank")) / "bench-memory"
AIM_BYTES_PER_USER = 1024
BATCH = 1000
# Per-user parts: what serving reads (stores/serving_reads.fetch_context; the 1 KB aim), and what
# only the streaming path keeps (activity windows; decayed vector sums behind the vector store's
# user collections).
SERVING_PARTS = ("bemb", "seen", "recent", "sess", "emo")
STREAMING_PARTS = ("win", "vec")
TRAIN_ARGS = ("--tower-epochs", "3", "--ranker-epochs", "1", "--content-dim", "64", "--hashed-dim", "256",
              "--embedding-dim", "32", "--holdout", "none", "--seed", "0", "--promote", "always")
CHILD_ENV = {"PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "2"}


# -- preparation ------------------------------------------------------------------------------------


def data_dir(name: str, scale: float) -> Path:
    """The data set's event logs, fetched once (a directory given by path is used as it is)."""
    from pipelines.datasets import DATASETS, FetchOptions, fetch

    if name not in DATASETS:
        path = Path(name)
        if not (path / "manifest.json").exists():
            sys.exit(f"--data: {name!r} is neither a data set ({', '.join(sorted(DATASETS))}) nor a fetched directory")
        return path
    out = CACHE / "data" / (f"{name}-x{scale:g}" if name == "synthetic" else name)
    if not (out / "manifest.json").exists():
        print(f"fetching {name} into {out} ...", flush=True)
        fetch(name, out, FetchOptions(scale=scale))
    return out


def log_files(data: Path) -> list[str]:
    manifest = json.loads((data / "manifest.json").read_text())
    return [str(data / name) for name in sorted(manifest["files"])]


def log_end(files: list[str]) -> int:
    """The latest event time of the logs (ms): the clock is pinned just after it."""
    from schemas.clock import parse_instant

    end = 0
    for path in files:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                ts = json.loads(line).get("ts")
                if ts is not None:
                    end = max(end, parse_instant(ts))
    return end


def trained_registry(data: Path, files: list[str]) -> Path:
    """A small model trained once on this log through the real CLI, cached by log and train args."""
    digest = hashlib.sha256(" ".join(TRAIN_ARGS).encode() + (data / "manifest.json").read_bytes()).hexdigest()[:16]
    home = CACHE / f"train-{data.name}-{digest}"
    if not (home / "done.json").exists():
        print(f"training a small model on {data.name} into {home} (once) ...", flush=True)
        started = time.perf_counter()
        cmd = [sys.executable, "-m", "pulserank.cli", "train", "--input", ",".join(files),
               "--registry", str(home / "registry"), "--workdir", str(home / "work"), *TRAIN_ARGS]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **CHILD_ENV})
        if proc.returncode != 0:
            sys.exit(f"pulserank train exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        (home / "done.json").write_text(json.dumps({"train_s": time.perf_counter() - started}))
    return home / "registry"


# -- the census -------------------------------------------------------------------------------------


def classify(key: str) -> tuple[str, str, str]:
    """(kind, part, owner id) of a key: kind is user, item, segment, guard, stream or other."""
    from schemas import keys

    if key.startswith("{") or key.startswith(keys.PREFIX + ":{"):
        tag = keys.hash_tag(key)
        rest = key[key.index("}", key.index("{")) + 2:]
        if rest.startswith("g:"):
            return "guard", {"u": "user", "i": "item", "s": "segment"}.get(tag[:1], "stream"), tag[2:]
        kind = {"u:": "user", "i:": "item", "s:": "segment"}.get(tag[:2], "other")
        part = rest.split(":", 1)[0] if rest.startswith(("feat:", "bandit:")) else rest
        return kind, part, tag[2:]
    if key in (keys.EVENT_STREAM, keys.DEAD_LETTER_STREAM):
        return "stream", key.removeprefix(keys.PREFIX + ":"), ""
    if key.startswith(keys.seen_event("")):
        return "other", "seen-event", ""
    return "other", key.removeprefix(keys.PREFIX + ":"), ""


@dataclass
class Census:
    keys: Counter = field(default_factory=Counter)  # (kind, part) → keys
    bytes: Counter = field(default_factory=Counter)  # (kind, part) → bytes
    encodings: dict = field(default_factory=lambda: defaultdict(Counter))  # (kind, part) → encoding → keys
    owner_bytes: dict = field(default_factory=lambda: defaultdict(Counter))  # kind → owner → bytes
    owner_parts: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(set)))  # kind → owner → parts

    def owners(self, kind: str) -> int:
        return len(self.owner_bytes[kind])

    def total(self, kind: str | None = None) -> int:
        return sum(b for (k, _), b in self.bytes.items() if kind is None or k == kind)


def take_census(client) -> Census:
    """Every key's `MEMORY USAGE ... SAMPLES 0` and encoding, pipelined in batches."""
    census = Census()
    batch: list[str] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for k in batch:
            pipe.memory_usage(k, samples=0)
            pipe.object("encoding", k)
        replies = pipe.execute()
        for k, size, enc in zip(batch, replies[::2], replies[1::2], strict=True):
            if size is None:  # expired or deleted meanwhile
                continue
            kind, part, owner = classify(k)
            census.keys[kind, part] += 1
            census.bytes[kind, part] += size
            census.encodings[kind, part][enc.decode() if isinstance(enc, bytes) else str(enc)] += 1
            if kind in ("user", "item", "segment"):
                census.owner_bytes[kind][owner] += size
                census.owner_parts[kind][owner].add(part)
        batch.clear()

    for raw in client.scan_iter(count=BATCH):
        batch.append(raw.decode())
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    return census


def used_memory(client) -> int:
    return int(client.info("memory")["used_memory"])


# -- the report -------------------------------------------------------------------------------------


def report(census: Census, before: int, after: int, out=sys.stdout) -> dict:
    """Prints the figures; returns them as a dict (for `--json`)."""
    users, items = census.owners("user"), census.owners("item")
    user_bytes, item_bytes = census.total("user"), census.total("item")
    per_user = user_bytes / users if users else 0.0
    figures = {
        "used_memory_before": before, "used_memory_after": after, "keys": sum(census.keys.values()),
        "measured_bytes": census.total(), "users": users, "items": items,
        "bytes_per_user": per_user, "bytes_per_item": item_bytes / items if items else 0.0,
        "guard_bytes": census.total("guard"), "parts": {}, "kinds": {},
    }
    print(f"used_memory: {before:,} B empty → {after:,} B after ({after - before:,} B grown); "
          f"{figures['keys']:,} keys measure {figures['measured_bytes']:,} B (MEMORY USAGE SAMPLES 0)", file=out)
    print(f"\n{'kind':<8} {'part':<16} {'keys':>9} {'bytes':>13} {'B/key':>8} {'B/owner':>9} {'share':>6}  encodings",
          file=out)
    for (kind, part), n in sorted(census.keys.items(), key=lambda kv: (kv[0][0], -census.bytes[kv[0]])):
        b = census.bytes[kind, part]
        owners = census.owners(kind) if kind in ("user", "item", "segment") else 0
        share = sum(1 for parts in census.owner_parts[kind].values() if part in parts) / owners if owners else None
        encs = ", ".join(f"{e} {c:,}" for e, c in census.encodings[kind, part].most_common())
        per_owner = f"{b / owners:9.0f}" if owners else f"{'':>9}"
        shown = f"{share:6.0%}" if owners else f"{'':>6}"
        print(f"{kind:<8} {part:<16} {n:>9,} {b:>13,} {b / n:8.0f} {per_owner} {shown}  {encs}", file=out)
        figures["parts"][f"{kind}:{part}"] = {"keys": n, "bytes": b, "bytes_per_key": b / n,
                                             "bytes_per_owner": b / owners if owners else None,
                                             "share_of_owners": share, "encodings": dict(census.encodings[kind, part])}
    for kind in ("user", "item", "segment", "guard", "stream", "other"):
        figures["kinds"][kind] = census.total(kind)

    def held(part: str) -> float:  # mean bytes of the part among the users holding it (one key each)
        n = census.keys["user", part]
        return census.bytes["user", part] / n if n else 0.0

    serving_avg = sum(census.bytes["user", p] for p in SERVING_PARTS) / users if users else 0.0
    serving_full = sum(held(p) for p in SERVING_PARTS)
    figures.update(serving_bytes_per_user=serving_avg, serving_bytes_per_full_user=serving_full,
                   all_parts_bytes_per_full_user=serving_full + sum(held(p) for p in STREAMING_PARTS))
    print(file=out)
    print(f"users:    {users:,} active, {user_bytes:,} B of user keys → {per_user:,.0f} B per user", file=out)
    print(f"  serving features ({'+'.join(SERVING_PARTS)}): {serving_avg:,.0f} B per user on average; "
          f"a user holding every one: {serving_full:,.0f} B (aim {AIM_BYTES_PER_USER:,} B: "
          f"{serving_full / AIM_BYTES_PER_USER:.2f}×)", file=out)
    print(f"  + streaming-only parts ({'+'.join(STREAMING_PARTS)}): a user holding every part: "
          f"{figures['all_parts_bytes_per_full_user']:,.0f} B", file=out)
    missing = [p for p in SERVING_PARTS if not census.keys["user", p]]
    if missing:
        print(f"  absent: {', '.join(missing)} (bemb and seen come with a deployed model: --registry DIR or "
              f"--train)", file=out)
    print(f"items:    {items:,}, {item_bytes:,} B → {figures['bytes_per_item']:,.0f} B per item", file=out)
    print(f"segments: {census.owners('segment'):,}, {census.total('segment'):,} B", file=out)
    guard_keys = sum(n for (k, _), n in census.keys.items() if k == "guard")
    print(f"guards:   {guard_keys:,} keys, {figures['guard_bytes']:,} B "
          f"({census.bytes['guard', 'user'] / users if users else 0:,.0f} B per user on user keys; they expire "
          f"after the guard TTL, in wall time)", file=out)
    return figures


# -- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="movielens100k", help="movielens100k, synthetic, or a fetched directory")
    parser.add_argument("--scale", type=float, default=10.0, help="synthetic: size multiplier (default 10)")
    parser.add_argument("--registry", default=None, help="deploy this registry's version after the replay")
    parser.add_argument("--version", default=None, help="with --registry: the version (default: production)")
    parser.add_argument("--train", action="store_true", help="train a small model on the log (cached) and deploy it")
    parser.add_argument("--idle-days", type=float, default=None,
                        help="the idle TTL the prune passes use (default: stores.retention's)")
    parser.add_argument("--redis-config", default="",
                        help="server settings for the embedded redis-server, e.g. 'hash-max-ziplist-value=64,"
                             "zset-max-ziplist-entries=128' (Redis's own defaults: the figures before tuning)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.registry and args.train:
        parser.error("--registry and --train exclude each other")
    if args.idle_days is not None and not args.idle_days > 0:
        parser.error("--idle-days must be > 0")

    from pipelines import replay
    from pipelines.deploy import deploy
    from schemas.clock import AS_OF_ENV, Clock, format_instant
    from stores import retention
    from stores.redis_client import get_redis
    from stores.redis_server import EmbeddedRedis

    started = time.perf_counter()
    data = data_dir(args.data, args.scale)
    files = log_files(data)
    end = log_end(files)
    as_of = end + 1
    registry = Path(args.registry) if args.registry else trained_registry(data, files) if args.train else None
    idle_ms = retention.idle_ttl_ms(retention.DEFAULT_IDLE_DAYS if args.idle_days is None else args.idle_days)
    print(f"data: {data} ({', '.join(Path(f).name for f in files)}), clock pinned to {format_instant(as_of)}",
          flush=True)

    os.environ[AS_OF_ENV] = str(as_of)  # the process's readers and workers see the replay's clock
    extra = []
    for pair in filter(None, args.redis_config.split(",")):
        name, eq, value = pair.partition("=")
        if not eq:
            parser.error(f"--redis-config: expected name=value, got {pair!r}")
        extra += [f"--{name.strip()}", value.strip()]
    with tempfile.TemporaryDirectory(prefix="redis-memory-") as tmp, EmbeddedRedis(extra_args=extra) as server:
        client = get_redis(server.url)
        settings = {k: v for name in ("hash-max-ziplist-value", "hash-max-ziplist-entries", "zset-max-ziplist-entries",
                                      "zset-max-ziplist-value") for k, v in client.config_get(name).items()}
        print(f"redis-server {server.version}: {', '.join(f'{k} {v}' for k, v in settings.items())}", flush=True)
        before = used_memory(client)
        t = time.perf_counter()
        result = replay.run(["--input", ",".join(files), "--redis_url", server.url, "--as_of", str(as_of),
                             "--dead_letters", f"{tmp}/dl", "--vector_store", f"embedded://{tmp}/vectors"])
        print(f"replay: {result.summary()}", flush=True)
        replay_s = time.perf_counter() - t
        deploy_s = 0.0
        if registry is not None:
            t = time.perf_counter()
            with open(os.devnull, "w") as quiet:
                # idle_days=None: every user of the log gets every serving feature (the prune passes
                # below show what the idle TTL then keeps)
                rep = deploy(str(registry), args.version, files, server.url, f"embedded://{tmp}/vectors",
                             clock=Clock(as_of), out=quiet, idle_days=None)
            deploy_s = time.perf_counter() - t
            print(f"deploy: {rep.version}: {rep.items:,} items, {rep.users_embedded:,} user embeddings in "
                  f"{deploy_s:.0f} s", flush=True)
        after = used_memory(client)
        t = time.perf_counter()
        census = take_census(client)
        print(f"census of {sum(census.keys.values()):,} keys in {time.perf_counter() - t:.1f} s\n", flush=True)
        figures = report(census, before, after)
        figures.update(data=str(data), replay_s=replay_s, deploy_s=deploy_s, as_of=as_of, redis_config=settings)

        # Idle users: the prune pass as of the log's end keeps the users active within the TTL; as
        # of TTL + 1 day after the end every user is idle, and every user key goes.
        figures["prune"] = []
        for label, now in (("the log's end", as_of), (f"{idle_ms / 86_400_000:g} days + 1 after it",
                                                      as_of + idle_ms + 86_400_000)):
            t = time.perf_counter()
            pruned = retention.prune_idle_users(client, Clock(now), idle_ms)
            left = take_census(client)
            print(f"prune as of {label} (idle TTL {idle_ms / 86_400_000:g} days): {pruned.users_pruned:,} of "
                  f"{pruned.users_seen:,} users dropped ({pruned.keys_deleted:,} keys) in "
                  f"{time.perf_counter() - t:.1f} s; left {left.owners('user'):,} users, "
                  f"{left.total('user'):,} B of user keys; used_memory {used_memory(client):,} B", flush=True)
            figures["prune"].append({"as_of": now, "users_seen": pruned.users_seen,
                                     "users_pruned": pruned.users_pruned, "users_left": left.owners("user"),
                                     "user_bytes_left": left.total("user")})
        client.close()
    figures["seconds"] = time.perf_counter() - started
    print(f"\ndone in {figures['seconds']:.0f} s (replay {replay_s:.0f} s, deploy {deploy_s:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
