"""`pulserank`: one command that dispatches to data sets, pipelines and (later) servers.

Kept thin: each subcommand parses its flags and calls one function elsewhere.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

from schemas.clock import AS_OF_ENV, InstantError, clock_from


def _data_fetch(args: argparse.Namespace) -> int:
    from pipelines.datasets import FetchOptions, fetch
    from pipelines.datasets._io import DatasetFormatError, DatasetUnavailable

    options = FetchOptions(
        source=Path(args.source) if args.source else None,
        cache_dir=Path(args.cache_dir),
        seed=args.seed,
        scale=args.scale,
    )
    started = time.perf_counter()
    try:
        manifest = fetch(args.name, Path(args.out), options)
    except (DatasetUnavailable, DatasetFormatError, FileNotFoundError) as exc:
        print(f"pulserank data fetch {args.name}: {exc}", file=sys.stderr)
        return 2
    for name, info in manifest["files"].items():
        print(f"  {Path(args.out) / name}: {info['events']:,} events")
    print(f"{args.name}: written to {args.out} in {time.perf_counter() - started:.1f}s")
    return 0


def _replay(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipelines.replay import run
    from pulserank.replay_report import format_report, run_with_progress
    from stores.redis_client import ClusterUnavailable, redis_url

    url = args.redis_url or redis_url()
    argv = ["--input", args.input, "--dead_letters", args.dead_letters, "--redis_url", url]
    as_of = args.replay_as_of or args.as_of
    passed = {"--from": args.from_ts, "--until": args.until_ts, "--as_of": as_of, "--vector_store": args.vector_store,
              "--bandit_half_life_hours": args.bandit_half_life_hours, "--scorer": args.scorer}
    for flag, value in passed.items():
        if value is not None:
            argv += [flag, str(value)]
    globs = [g for g in args.input.split(",") if g]
    try:
        result = run_with_progress(lambda: run([*argv, *beam_args]), globs, url)
    except ClusterUnavailable as exc:  # a master of a Redis Cluster is gone: name its slots, no traceback
        print(f"pulserank replay: {exc}", file=sys.stderr)
        return 3
    print(format_report(result, args.dead_letters))
    if not result.reconciles:
        print("pulserank replay: the counts do not reconcile (read ≠ written + dead letters + duplicates"
              " + out of range)", file=sys.stderr)
    return 0 if result.reconciles else 1


def _inspect(args: argparse.Namespace, beam_args: list[str]) -> int:
    import json

    from pipelines import inspect
    from stores.feature_store import FeatureStore
    from stores.redis_client import get_redis, redis_url

    if not (args.redis_url or os.environ.get("REDIS_URL")):
        print("pulserank inspect: no REDIS_URL or --redis-url; reading a fresh embedded Redis, which is empty",
              file=sys.stderr)
    client = get_redis(args.redis_url or redis_url())
    try:
        store = FeatureStore(client)  # its clock: --as-of (PULSERANK_AS_OF), else wall time
        try:
            if args.what == "user":
                report = inspect.user_report(store, args.user_id)
                text = inspect.format_user
            elif args.what == "bandit":
                prior = (args.prior_alpha, args.prior_beta)
                report = inspect.bandit_report(store, args.segment, args.item, prior, args.bandit_half_life_hours)
                text = inspect.format_bandit
            else:
                report = inspect.guards_report(store)
                text = inspect.format_guards
        except inspect.InspectError as exc:
            print(f"pulserank inspect {args.what}: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else text(report))
        return 0
    finally:
        client.close()


def _prune(args: argparse.Namespace, _: list[str]) -> int:
    from schemas.clock import default_clock
    from stores import retention
    from stores.redis_client import get_redis, redis_url

    days = retention.DEFAULT_IDLE_DAYS if args.idle_days is None else args.idle_days
    try:
        idle_ms = retention.idle_ttl_ms(days)
    except ValueError as exc:
        print(f"pulserank prune: --idle-days: {exc}", file=sys.stderr)
        return 2
    if not (args.redis_url or os.environ.get("REDIS_URL")):
        print("pulserank prune: no REDIS_URL or --redis-url; a fresh embedded Redis is empty", file=sys.stderr)
    clock = default_clock()  # --as-of (PULSERANK_AS_OF), else wall time
    client = get_redis(args.redis_url or redis_url())
    try:
        result = retention.prune_idle_users(client, clock, idle_ms)
    finally:
        client.close()
    print(f"prune as of {clock.describe()}, idle TTL {days:g} days: {result.summary()}")
    return 0


def _live(args: argparse.Namespace, pipeline_args: list[str]) -> int:
    from pipelines.live import run

    result = run(pipeline_args)
    print(result.summary())
    return 0 if result.reconciles else 1


def _stream(args: argparse.Namespace, pipeline_args: list[str]) -> int:
    from pipelines.stream import run

    print(f"submitted: {run(pipeline_args)}")
    return 0


def _own_parser(module: str):
    """A handler for a pipeline with its own argparse (`main(argv) -> int`), given the rest of argv."""

    def handler(args: argparse.Namespace, rest: list[str]) -> int:
        main = importlib.import_module(module).main
        try:
            return main(rest)
        except SystemExit as exc:  # its own argparse: --help (0) and usage errors (2)
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)

    return handler


def _demo(args: argparse.Namespace, train_args: list[str]) -> int:
    from pulserank.demo import DemoError, run_demo

    try:
        return run_demo(data=args.data, workdir=Path(args.workdir), cache_dir=Path(args.cache_dir),
                        registry=args.registry, user=args.user, intent=args.intent, train_args=train_args)
    except DemoError as exc:  # a bad --user, --intent or --registry, named
        print(f"pulserank demo: {exc}", file=sys.stderr)
        return 2


def _server_logging() -> None:
    """Servers log what an operator acts on (model swaps and refusals, sync subscribers, the edge's
    calibrated exploration) at INFO to stderr."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _serve(args: argparse.Namespace, _: list[str]) -> int:
    import asyncio

    _server_logging()

    from serving import config as serve_config
    from serving.server import serve_forever

    overrides = {"listen": args.listen, "registry": args.registry, "redis_url": args.redis_url,
                 "vector_store": args.vector_store, "metrics_port": args.metrics_port,
                 "as_of": os.environ.get(AS_OF_ENV)}
    try:
        config = serve_config.load(args.config, overrides)
        asyncio.run(serve_forever(config))
    except (serve_config.ConfigError, ValueError) as exc:
        print(f"pulserank serve: {exc}", file=sys.stderr)
        return 2
    return 0


def _edge(args: argparse.Namespace, _: list[str]) -> int:
    import asyncio

    _server_logging()

    from serving.edge_server import serve_edge_forever

    try:
        asyncio.run(serve_edge_forever(args.origin, args.registry, args.listen, args.edge_id, args.cache_mib,
                                       os.environ.get(AS_OF_ENV), args.exploration_share))
    except ValueError as exc:
        print(f"pulserank edge: {exc}", file=sys.stderr)
        return 2
    return 0


def _models(args: argparse.Namespace, _: list[str]) -> int:
    from pipelines.models_cmd import run

    return run(args.action, args.registry, args.alias, getattr(args, "version", None), getattr(args, "json", False))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pulserank", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--as-of",
        default=None,
        help="pin the clock to this instant (RFC 3339 or epoch ms), e.g. to serve a 1998 log as of its end",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="offline data sets as event logs").add_subparsers(dest="action", required=True)
    fetch = data.add_parser("fetch", help="fetch a data set and write it as event logs")
    fetch.add_argument("name", choices=["movielens100k", "obd", "reviews", "synthetic"])
    fetch.add_argument("--out", required=True, help="directory to write the event logs into")
    fetch.add_argument("--from", dest="source", default=None, help="a local copy of the original files")
    fetch.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "pulserank"))
    fetch.add_argument("--seed", type=int, default=0, help="synthetic: the seed")
    fetch.add_argument("--scale", type=float, default=1.0, help="synthetic: size multiplier")
    fetch.set_defaults(handler=lambda a, _: _data_fetch(a))

    replay = sub.add_parser("replay", help="batch replay of event logs into the stores (Beam options pass through)",
                            epilog="Other flags go to Beam as pipeline options, e.g. --runner=FnApiRunner"
                                   " --direct_running_mode=multi_processing --direct_num_workers=2.")
    replay.add_argument("--input", required=True, help="JSONL or Parquet glob(s), comma-separated")
    replay.add_argument("--dead-letters", default="dead-letters/replay", help="dead-letter path prefix (+ .jsonl)")
    replay.add_argument("--from", dest="from_ts", default=None, help="first event time to include (RFC 3339 or ms)")
    replay.add_argument("--until", dest="until_ts", default=None, help="event time to stop before")
    replay.add_argument("--as-of", dest="replay_as_of", default=None,
                        help="pin the clock (window pruning, sessions) to this instant; default: the global --as-of")
    replay.add_argument("--vector-store", default=None, help="embedded:///dir (default: embedded) or http://weaviate:8080")
    replay.add_argument("--bandit-half-life-hours", type=float, default=None,
                        help="forward-decay the bandit counts (default: exact counts)")
    replay.add_argument("--scorer", default=None, help="sentiment scorer for reviews (default: vader)")
    replay.add_argument("--redis-url", default=None, help="default: REDIS_URL, else an embedded server")
    replay.set_defaults(handler=_replay)

    inspect = sub.add_parser("inspect", help="read back what a replay or live mode stored (as of --as-of)")
    what = inspect.add_subparsers(dest="what", required=True)
    user = what.add_parser("user", help="a user's windows, session, recent interactions, emotion, embedding norms")
    user.add_argument("user_id")
    bandit = what.add_parser(
        "bandit", help="Beta(α, β) per item: α = prior α + clicks, β = prior β + impressions − clicks",
        description="Bandit posteriors per (segment, item). α = prior α + clicks and β = prior β + impressions"
                    " (and skips) − clicks; the default prior is Beta(1, 1). Segment '*' is every segment together.")
    bandit.add_argument("--segment", default=None, help="one segment (default: every stored segment)")
    bandit.add_argument("--item", action="append", default=None, help="only this item (repeatable)")
    bandit.add_argument("--prior-alpha", type=float, default=1.0, help="prior α added to the clicks (default: 1)")
    bandit.add_argument("--prior-beta", type=float, default=1.0, help="prior β added to the non-clicks (default: 1)")
    bandit.add_argument("--bandit-half-life-hours", type=float, default=None,
                        help="the half-life the replay decayed with (required to read decayed counts)")
    guards = what.add_parser("guards", help="idempotency guards: count, bytes, TTL (the TTL bounds their memory)")
    for p in (user, bandit, guards):
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--redis-url", default=None, help="default: REDIS_URL")
    inspect.set_defaults(handler=_inspect)

    prune = sub.add_parser("prune", help="drop every feature key of users idle longer than --idle-days "
                                         "(by the clock: --as-of, else wall time)")
    prune.add_argument("--idle-days", type=float, default=None, help="the idle TTL in days (default 90)")
    prune.add_argument("--redis-url", default=None, help="default: REDIS_URL")
    prune.set_defaults(handler=_prune)

    passthrough = "options are the pipeline's own (python -m pipelines.{0} --help), passed through"
    live = sub.add_parser("live", help="local live mode: Redis Stream micro-batches → features",
                          description=passthrough.format("live"))
    live.set_defaults(handler=_live)
    stream = sub.add_parser("stream", help="submit the streaming pipeline (Kafka/Pub/Sub) to Flink or Dataflow",
                            description=passthrough.format("stream"))
    stream.set_defaults(handler=_stream)
    train = sub.add_parser("train", add_help=False, help="retrain the models from event logs into a registry; "
                           "see pulserank train --help")
    train.set_defaults(handler=_own_parser("pipelines.train"))
    deploy = sub.add_parser("deploy", add_help=False, help="after training: a version's embeddings and features into "
                            "the vector store and Redis, bandit posteriors re-derived; see pulserank deploy --help")
    deploy.set_defaults(handler=_own_parser("pipelines.deploy"))
    evaluate = sub.add_parser("evaluate", add_help=False, help="offline evaluation against baselines (offline), "
                              "off-policy evaluation (ope), A/B click rates (ab); see pulserank evaluate --help")
    evaluate.set_defaults(handler=_own_parser("pipelines.evaluate"))

    demo = sub.add_parser("demo", help="the whole loop on embedded defaults: data, replay, train, deploy, origin + "
                                       "edge + live mode, a user's session shift",
                          epilog="Other flags go to pulserank train, e.g. --tower-epochs 10.")
    demo.add_argument("--data", default="movielens100k", choices=["movielens100k", "synthetic"])
    demo.add_argument("--workdir", default="out/demo", help="where data and outputs go")
    demo.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "pulserank"))
    demo.add_argument("--registry", default=None,
                      help="serve this registry's production version instead of training one (e.g. out/demo/registry "
                           "from an earlier run, trained on the same data)")
    demo.add_argument("--user", default=None, help="the user to follow (default: a clear taste, a short history)")
    demo.add_argument("--intent", default=None, help="the category the session shifts to (default: one the user was "
                                                     "not shown)")
    demo.set_defaults(handler=_demo)

    serve = sub.add_parser("serve", help="the origin gRPC server (Personalize, RecordEvents, Explain; health, "
                                         "reflection, metrics)")
    serve.add_argument("--config", default=None, help="YAML settings (serving/config.py); flags override it")
    serve.add_argument("--registry", default=None, help="model registry root (follows its production alias)")
    serve.add_argument("--listen", default=None, help="address:port (default 127.0.0.1:50051)")
    serve.add_argument("--redis-url", default=None, help="default: $REDIS_URL, else the embedded server")
    serve.add_argument("--vector-store", default=None, help="embedded://DIR (default) or a Weaviate URL")
    serve.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics on this port")
    serve.set_defaults(handler=_serve)
    edge = sub.add_parser("edge", help="an edge server: the same API, answered from a personalized cache, the edge "
                                       "scorer and bandit; origins behind it")
    edge.add_argument("--origin", action="append", required=True, help="an origin address (repeatable)")
    edge.add_argument("--registry", required=True, help="model registry root (the edge ranker follows its alias)")
    edge.add_argument("--listen", default="127.0.0.1:50061", help="address:port (default 127.0.0.1:50061)")
    edge.add_argument("--edge-id", default="edge-1", help="this edge's name in the origins' sync logs")
    edge.add_argument("--cache-mib", type=int, default=256, help="personalized cache budget (MiB)")
    edge.add_argument("--exploration-share", type=float, default=0.12,
                      help="share of shown items the edge bandit explores; n0 is calibrated to it on the pools the "
                           "edge serves (default 0.12)")
    edge.set_defaults(handler=_edge)
    models = sub.add_parser("models", help="the model registry: list versions, promote, roll back")
    model_action = models.add_subparsers(dest="action", required=True)
    listed = model_action.add_parser("list", help="published versions, oldest first; * marks the alias")
    promote = model_action.add_parser("promote", help="point the alias at a published version (verified first)")
    promote.add_argument("version")
    rollback = model_action.add_parser("rollback", help="point the alias back at the version promoted before")
    history = model_action.add_parser("history", help="every promotion and rollback of the alias, oldest first")
    for p in (listed, promote, rollback, history):
        p.add_argument("--registry", required=True, help="registry root: a directory or e.g. gs://bucket/models")
        p.add_argument("--alias", default="production", help="the alias (default: production)")
    for p in (listed, history):
        p.add_argument("--json", action="store_true", help="machine-readable output")
    models.set_defaults(handler=_models)
    return parser


def main(argv: list[str] | None = None) -> None:
    # google-cloud libraries warn about grpcio's PQC support on import; it is pinned for Beam.
    warnings.filterwarnings("ignore", message=".*Post-Quantum.*", category=FutureWarning)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("replay", "demo", "live", "stream", "evaluate", "train", "deploy"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        clock = clock_from(args.as_of)
    except InstantError as exc:
        parser.error(f"--as-of: {exc}")
    if clock.is_pinned:
        os.environ[AS_OF_ENV] = str(clock.pinned_ms)  # workers and child processes see it too
    code = 1
    try:
        code = args.handler(args, rest)
    except KeyboardInterrupt:
        code = 130
    except Exception:
        traceback.print_exc()
        code = 1
    finally:
        _exit(code)


def _exit(code: int) -> None:
    """Stop what this process started, then exit; after TFT, without interpreter teardown."""
    from stores.redis_client import shutdown_embedded

    shutdown_embedded()
    sys.stdout.flush()
    sys.stderr.flush()
    if "tensorflow_transform" in sys.modules:
        os._exit(code)  # TFT segfaults in protobuf's C extension at teardown (FIELD-NOTES)
    sys.exit(code)


if __name__ == "__main__":
    main()
