"""`pulserank`: one command that dispatches to data sets, pipelines and (later) servers.

Kept thin: each subcommand parses its flags and calls one function elsewhere.
"""

from __future__ import annotations

import argparse
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

    argv = ["--input", args.input, "--dead_letters", args.dead_letters, *beam_args]
    result = run(argv)
    _print_replay(result)
    return 0 if result.reconciles else 1


def _print_replay(result) -> None:
    print(result.summary())


def _demo(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pulserank.demo import run_demo

    return run_demo(data=args.data, workdir=Path(args.workdir), cache_dir=Path(args.cache_dir))


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

    replay = sub.add_parser("replay", help="batch replay of event logs into the stores (Beam options pass through)")
    replay.add_argument("--input", required=True, help="JSONL glob(s), comma-separated")
    replay.add_argument("--dead-letters", default="dead-letters/replay", help="dead-letter path prefix")
    replay.set_defaults(handler=_replay)

    demo = sub.add_parser("demo", help="the main job on embedded defaults")
    demo.add_argument("--data", default="movielens100k", choices=["movielens100k", "synthetic"])
    demo.add_argument("--workdir", default="out/demo", help="where data and outputs go")
    demo.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "pulserank"))
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    # google-cloud libraries warn about grpcio's PQC support on import; it is pinned for Beam.
    warnings.filterwarnings("ignore", message=".*Post-Quantum.*", category=FutureWarning)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("replay", "demo"):
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
