"""`pulserank evaluate`: offline ranking evaluation against baselines, and off-policy evaluation.

    python -m pipelines.evaluate offline --input 'logs/*.jsonl' [--split random|temporal] [--seed 0] [--k 10]
                                         [--registry DIR [--version V]] [--report DIR] [--promote-if-better]
    python -m pipelines.evaluate ope --logs GLOB --policy ...       (options: pipelines.ope)
    python -m pipelines.evaluate ab --logs GLOB [--experiment NAME]  (options: pipelines.ab)

`offline` reads the positive interactions, splits them, fits MostPop and ItemKNN (and, with
`--registry`, loads a registered model through `models.onnx_recommender.load`), ranks the full
catalogue minus each user's training items, prints the metrics and the leakage canary, and writes a
report folder. `--promote-if-better` promotes the evaluated version only when its NDCG@10 is at least
the best baseline's and the production version's recorded one (`metadata.metrics.model["ndcg@10"]`),
its canary stays at or below MostPop's real NDCG, and it was trained with this very holdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from models.baselines import ItemKNN, MostPop
from models.evaluation import EvaluationResult, Recommender, evaluate
from models.interactions import Interactions, InteractionsError, read_interactions
from models.metrics import metric_names
from models.splits import TEMPORAL_MODES, Split, make_split

MODEL = "model"
GATE_K = 10
PROG = "pulserank evaluate"


def baselines() -> dict[str, Recommender]:
    return {"MostPop": MostPop(), "ItemKNN": ItemKNN()}


def metrics_dict(result: EvaluationResult) -> dict[str, dict[str, Any]]:
    """{recommender: {"ndcg@10": …, …, "canary": {"ndcg@10": …, …}}}: what registry metadata records."""
    return {name: {**r.metrics, "canary": dict(r.canary)} for name, r in result.results.items()}


def format_results(result: EvaluationResult) -> str:
    names = metric_names(result.k)
    width = max(len(n) for n in result.results) + 2
    head = f"{'':<{width}}" + "".join(f"{m:>13}" for m in names) + f"{'canary ndcg':>13}{'fit s':>8}{'rank s':>8}"
    lines = [f"{result.split.name}: {len(result.users):,} users evaluated, k = {result.k}", head]
    for r in result.results.values():
        canary = r.canary[f"ndcg@{result.k}"]
        lines.append(f"{r.name:<{width}}" + "".join(f"{r.metrics[m]:>13.4f}" for m in names)
                     + f"{canary:>13.4f}{r.fit_seconds:>8.2f}{r.score_seconds:>8.2f}")
    return "\n".join(lines)


def evaluate_and_report(split: Split, recommenders: Mapping[str, Recommender], report_dir: str | None = None,
                        training_curves: Mapping[str, object] | None = None,
                        timings: Mapping[str, float] | None = None, k: int = GATE_K,
                        interactions: Interactions | None = None, notes: Sequence[str] = (),
                        out=sys.stdout) -> dict[str, dict[str, Any]]:
    """Evaluate the baselines and `recommenders` on `split`, print the table, write the report when
    `report_dir` is given; returns `metrics_dict` of the run."""
    result = evaluate({**baselines(), **recommenders}, split, k=k)
    print(format_results(result), file=out, flush=True)
    if report_dir:
        from models.report import write_report

        path = write_report(report_dir, [result], interactions.stats if interactions is not None else None,
                            training_curves=training_curves, notes=notes, timings=timings)
        print(f"report: {path}", file=out, flush=True)
    return metrics_dict(result)


# -- promotion ------------------------------------------------------------------------------------


def recorded_ndcg(metadata: Mapping[str, Any], key: str = f"ndcg@{GATE_K}") -> float | None:
    """A version's recorded NDCG: `metrics.model[key]` (as `pulserank train` writes it) or `metrics[key]`."""
    metrics = metadata.get("metrics")
    if not isinstance(metrics, Mapping):
        return None
    for source in (metrics.get(MODEL), metrics):
        if isinstance(source, Mapping) and isinstance(source.get(key), int | float):
            return float(source[key])
    return None


def promotion_decision(root: str, version: str, metrics: Mapping[str, Mapping[str, Any]],
                       holdout_matches: bool = True) -> tuple[bool, str]:
    """(promote?, why) for the evaluated `version` whose results are `metrics[MODEL]`."""
    from models import registry

    key = f"ndcg@{GATE_K}"
    mine = float(metrics[MODEL][key])
    if not holdout_matches:
        return False, ("not promoted: the version was not trained with this split's holdout, so its test pairs may "
                       "have been training pairs (see the warning above)")
    others = {n: float(m[key]) for n, m in metrics.items() if n != MODEL}
    best = max(others, key=others.__getitem__)
    if mine < others[best]:
        return False, f"not promoted: NDCG@10 {mine:.4f} < best baseline {best} {others[best]:.4f}"
    canary = float(metrics[MODEL]["canary"][key])
    if "MostPop" in others and canary > others["MostPop"]:
        return False, (f"not promoted: leakage canary NDCG@10 {canary:.4f} > MostPop's real {others['MostPop']:.4f} "
                       f"(the model scores shuffled test sets too well: it saw test pairs)")
    current = registry.read_alias(root)
    if current is None:
        return True, f"promoted: NDCG@10 {mine:.4f} ≥ best baseline {best} {others[best]:.4f}; no production version"
    if current.version == version:
        return False, f"not promoted: {version} is already production"
    theirs = recorded_ndcg(registry.load_version(root, current.version).metadata, key)
    if theirs is None:
        return True, (f"promoted: NDCG@10 {mine:.4f} ≥ best baseline {best} {others[best]:.4f}; production "
                      f"{current.version} records no NDCG@10 in its metadata metrics")
    if mine < theirs:
        return False, f"not promoted: NDCG@10 {mine:.4f} < production {current.version}'s recorded {theirs:.4f}"
    return True, (f"promoted: NDCG@10 {mine:.4f} ≥ best baseline {best} {others[best]:.4f} and ≥ production "
                  f"{current.version}'s recorded {theirs:.4f}")


def _holdout_matches(metadata: Mapping[str, Any], split: Split) -> tuple[bool, str]:
    """Was the version trained with this split's holdout? Otherwise its test pairs may have trained it,
    which the canary cannot see. Exact when the metadata records `split_fingerprint`
    (`Split.fingerprint()`), else by the recorded `holdout` {kind, seed, mode}."""
    recorded = metadata.get("split_fingerprint")
    if isinstance(recorded, str):
        ok = recorded == split.fingerprint()
        return ok, "" if ok else "its split_fingerprint differs from this split's (other data, split or seed)"
    holdout = metadata.get("holdout")
    if not isinstance(holdout, Mapping):
        return False, "its metadata records no holdout (trained on every interaction?)"
    kind, seed = holdout.get("kind"), holdout.get("seed")
    if kind != split.params.get("kind"):
        return False, f"it held out a {kind!r} split, this evaluation a {split.params.get('kind')!r} one"
    if kind == "random" and seed != split.params.get("seed"):
        return False, f"it held out seed {seed}, this evaluation seed {split.params.get('seed')}"
    if kind == "temporal" and holdout.get("mode", "per_user") != split.params.get("mode"):
        return False, f"it held out temporal mode {holdout.get('mode', 'per_user')!r}, this evaluation " \
                      f"{split.params.get('mode')!r}"
    return True, ""


# -- command line ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Offline ranking evaluation against baselines "
                                     "(offline) and off-policy evaluation from logged propensities (ope).")
    sub = parser.add_subparsers(dest="command", required=True)
    off = sub.add_parser("offline", help="ranking metrics of baselines (and a registered model) on a split",
                         description="Ranking over the full catalogue minus each user's training items; relevant = "
                                     "every held-out item of the user.")
    off.add_argument("--input", required=True, help="event-log JSONL glob(s), comma-separated")
    off.add_argument("--split", choices=["random", "temporal"], default="random",
                     help="random: per user, a seeded 25%% held out; temporal: the latest 25%% (see --temporal-mode)")
    off.add_argument("--temporal-mode", choices=TEMPORAL_MODES, default="per_user",
                     help="per_user: each user's last 25%% by time; global: everything after the 75%% time quantile")
    off.add_argument("--seed", type=int, default=0, help="seed of the random split (default: 0)")
    off.add_argument("--k", type=int, default=GATE_K, help="cut-off of the metrics (default: 10)")
    off.add_argument("--registry", default=None, help="model registry root, to evaluate a registered model")
    off.add_argument("--version", default=None, help="the version to evaluate (default: the production one)")
    off.add_argument("--report", default=None, help="write report.md and PNG plots into this folder")
    off.add_argument("--promote-if-better", action="store_true",
                     help="promote --version if its NDCG@10 ≥ the best baseline's and production's recorded one")
    # `ope`'s options belong to pipelines.ope, which parses what follows `ope` (imported only when used)
    sub.add_parser("ope", add_help=False, help="off-policy evaluation of a policy from logged propensities "
                                               "(options: ope --help)")
    sub.add_parser("ab", add_help=False, help="click rate per A/B variant from logged impressions and clicks "
                                              "(options: ab --help)")
    return parser


def _error(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def _load_model(root: str, version: str | None) -> tuple[str, Recommender, dict[str, Any]]:
    """(version, its recommender, its metadata); `version` None → the production one. Raises
    UsageError with the reason when it cannot be loaded."""
    from models import registry

    try:
        from models.onnx_recommender import load
    except ImportError as exc:
        raise UsageError(f"--registry needs models.onnx_recommender.load(root, version), which is not available "
                         f"here: {exc}") from None
    try:
        if version is None:
            alias = registry.read_alias(root)
            if alias is None:
                raise UsageError(f"--registry {root}: no production version; pass --version")
            version = alias.version
        meta = registry.load_version(root, version).metadata
        return version, load(root, version), meta
    except registry.RegistryError as exc:
        raise UsageError(f"--registry {root}: {exc}") from None


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 2."""


def offline(args: argparse.Namespace) -> int:
    try:
        return _offline(args)
    except UsageError as exc:
        return _error(str(exc))


def _offline(args: argparse.Namespace) -> int:
    if args.promote_if_better and not (args.registry and args.version):
        raise UsageError("--promote-if-better needs --registry and --version (the version to promote)")
    if args.promote_if_better and args.k != GATE_K:
        raise UsageError(f"--promote-if-better compares NDCG@{GATE_K}: use --k {GATE_K}")
    if args.k < 1:
        raise UsageError(f"--k must be at least 1, got {args.k}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    recommenders: dict[str, Recommender] = {}
    version, meta = args.version, {}
    if args.registry:  # loaded first: a wrong registry or version fails before any reading
        version, recommenders[MODEL], meta = _load_model(args.registry, args.version)

    started = time.perf_counter()
    try:
        data = read_interactions(args.input)
    except InteractionsError as exc:
        raise UsageError(str(exc)) from None
    print(data.stats.summary())
    print(f"{data.n_users:,} users × {data.n_items:,} items, read in {time.perf_counter() - started:.1f}s")
    if args.k > data.n_items:
        raise UsageError(f"--k {args.k} exceeds the catalogue ({data.n_items} items)")
    split = make_split(data, args.split, seed=args.seed, temporal_mode=args.temporal_mode)
    print(f"split {split.name}: {split.stats.train_pairs:,} train / {split.stats.test_pairs:,} test pairs, "
          f"{split.stats.test_users:,} users evaluated" + (f", {split.stats.cold_users:,} cold users dropped"
                                                           if split.stats.cold_users else ""))
    if split.stats.test_users == 0:
        raise UsageError(f"split {split.name} holds out nothing (too few interactions per user?)")

    notes = [f"input: {args.input}", f"split: {split.name}, fingerprint {split.fingerprint()[:16]}"]
    holdout_ok, curves = True, None
    if args.registry:
        holdout_ok, why = _holdout_matches(meta, split)
        if not holdout_ok:
            print(f"WARNING: version {version} may have trained on this split's test pairs: {why}", file=sys.stderr)
        training = meta.get("training")
        curves = training.get("losses") if isinstance(training, Mapping) else None
        notes.append(f"model: {args.registry} version {version}")
    try:
        metrics = evaluate_and_report(split, recommenders, args.report, training_curves=curves, k=args.k,
                                      interactions=data, notes=notes)
    except ValueError as exc:  # e.g. a model scoring the wrong shape or NaN
        raise UsageError(str(exc)) from None
    key = f"ndcg@{args.k}"
    if MODEL in metrics:
        pop, canary = metrics["MostPop"][key], metrics[MODEL]["canary"][key]
        verdict = "ok" if canary <= pop else "ABOVE MostPop: leakage?"
        print(f"leakage canary: model NDCG@{args.k} {canary:.4f} vs MostPop's real {pop:.4f}: {verdict}")
    if args.promote_if_better:
        from models import registry

        promote, why = promotion_decision(args.registry, version, metrics, holdout_ok)
        if promote:
            registry.promote(args.registry, version)
        print(why)
    return 0


def _ope(rest: Sequence[str]) -> int:
    try:
        from pipelines import ope
    except ImportError as exc:
        return _error(f"ope: pipelines.ope is not available here: {exc}")
    parser = argparse.ArgumentParser(prog=f"{PROG} ope", description=(ope.__doc__ or "").split("\n", 1)[0])
    ope.add_arguments(parser)
    return ope.run(parser.parse_args(list(rest)))


def _ab(rest: Sequence[str]) -> int:
    from pipelines import ab

    parser = argparse.ArgumentParser(prog=f"{PROG} ab", description=(ab.__doc__ or "").split("\n", 1)[0])
    ab.add_arguments(parser)
    return ab.run(parser.parse_args(list(rest)))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ope"]:
        return _ope(argv[1:])
    if argv[:1] == ["ab"]:
        return _ab(argv[1:])
    return offline(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
