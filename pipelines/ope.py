"""`pulserank evaluate ope`: estimate a slate policy's click rate from logged impressions and clicks.

    pulserank evaluate ope --logs 'obd/*/random_all.jsonl' --policy bts --priors obd/bts_priors.json
    python -m pipelines.ope --logs GLOB --policy bts|uniform|pulserank [--priors FILE] [--segment S]
        [--variant V] [--train-logs GLOB | --train-fraction F] [--bootstrap N] [--seed S] [--json]

Rounds are the logged impressions that carry a position and a propensity (what serving logs and
`pulserank data fetch obd` writes); a round's reward is 1 when a click with the same request,
item and position follows. Policies, each a Thompson-sampling slate (`serving.exploration`) or
the uniform one, given as P(item at position) over the catalogue:

- `uniform`: every item equally likely at every position;
- `bts`: Thompson sampling over the Beta priors of `--priors` (`{segment: {item: {alpha, beta}}}`
  as `pipelines.datasets.obd` writes them: the production Bernoulli-TS priors of the OBD), by
  Monte-Carlo as obp's `BernoulliTS(is_zozotown_prior=True).compute_batch_action_dist`;
- `pulserank`: the project's own bandit: Beta posteriors counted from training logs by the
  streaming path's transform (`transforms.observe.bandit_observations`, exact counts) and read
  with its borrowing from the global row (`transforms.summaries.bandit.borrowed_posterior`).
  Training logs are `--train-logs`, else the earliest `--train-fraction` of the requests in
  `--logs`, and then only the remaining requests are evaluated.

The catalogue is every item logged in the segment (evaluation and training logs) plus the items
of the priors. Values are estimated by `models.ope` (IPS, SNIPS, DR with a cross-fitted
per-(item, position) reward model) with percentile-bootstrap intervals.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models import ope
from schemas import keys
from schemas.events import Event, EventError, EventType, parse_event
from schemas.features import FeatureConfig
from serving.exploration import action_distribution
from transforms.observe import bandit_observations
from transforms.summaries.bandit import DEFAULT_STRENGTH, borrowed_posterior

POLICIES = ("bts", "uniform", "pulserank")
DEFAULT_N_SIM = 100_000


class OpeInputError(ValueError):
    """Logs or options that cannot be evaluated as given (the message names what to fix)."""


@dataclass
class Rounds:
    """Logged impressions as arrays over one catalogue (item index → `items[i]`)."""

    items: list[str]
    action: np.ndarray
    position: np.ndarray
    pscore: np.ndarray
    reward: np.ndarray
    variant: np.ndarray  # the logging variant of each round ("-" when not logged)
    segment: str
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.action.shape[0])

    @property
    def variants(self) -> dict[str, int]:
        return dict(Counter(self.variant.tolist()))


# -- reading logs -------------------------------------------------------------------------------


def expand(globs: str, option: str = "--logs") -> list[Path]:
    """Comma-separated globs → files (sorted, deduplicated); each glob must match something."""
    patterns = [g.strip() for g in globs.split(",") if g.strip()]
    if not patterns:
        raise OpeInputError(f"{option}: no glob given")
    files: dict[str, None] = {}
    for pattern in patterns:
        matched = sorted(p for p in glob.glob(pattern) if Path(p).is_file())
        if not matched:
            raise OpeInputError(f"{option}: {pattern!r} matches no file")
        files.update(dict.fromkeys(matched))
    return [Path(p) for p in files]


def read_events(paths: Iterable[Path]) -> list[Event]:
    """Every event of the JSONL files, validated by the contract, deduplicated by event id."""
    seen: set[str] = set()
    out: list[Event] = []
    for path in paths:
        try:
            with path.open(encoding="utf-8") as fh:
                for line_no, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        event = parse_event(line)
                    except EventError as exc:
                        raise OpeInputError(f"{path}:{line_no}: {exc.field}: {exc.reason}") from None
                    if event.event_id not in seen:
                        seen.add(event.event_id)
                        out.append(event)
        except (OSError, UnicodeDecodeError) as exc:
            raise OpeInputError(f"{path}: unreadable: {exc}") from None
    return out


def _request_key(e: Event) -> tuple[str | None, str, int | None]:
    return e.request_id, e.item_id, e.position


def rounds_from_events(
    events: Sequence[Event],
    segment: str | None = None,
    variant: str | None = None,
    extra_items: Iterable[str] = (),
) -> tuple[Rounds, list[Event]]:
    """The impressions with a propensity (in `segment`, by `variant`) as rounds, in time order.

    Also returns those impressions' events (for splitting). Clicked = a click with the same
    request id, item and position exists. Impressions without position, propensity or request id
    are counted in `skipped`, never silently dropped.
    """
    impressions = [e for e in events if e.type is EventType.IMPRESSION]
    if not impressions:
        raise OpeInputError("--logs: no impression events in the logs")
    skipped: Counter[str] = Counter()
    if variant is not None:
        kept = [e for e in impressions if e.variant == variant]
        skipped["other variant"] = len(impressions) - len(kept)
        impressions = kept
    segments = Counter(e.segment for e in impressions)
    if segment is None:
        if len(segments) > 1:
            raise OpeInputError(f"--segment: the logs hold several segments ({', '.join(sorted(segments))}); "
                                "pick one (a policy's catalogue and priors are per segment)")
        segment = next(iter(segments), keys.GLOBAL_SEGMENT)
    else:
        skipped["other segment"] = sum(c for s, c in segments.items() if s != segment)
    usable = []
    for e in impressions:
        if e.segment != segment:
            continue
        if e.position is None or e.propensity is None or e.request_id is None:
            skipped["no position, propensity or request id"] += 1
            continue
        usable.append(e)
    if not usable:
        where = f" in segment {segment!r}" + (f" with variant {variant!r}" if variant else "")
        raise OpeInputError(f"--logs: no impression{where} carries a request id, position and propensity")
    usable.sort(key=lambda e: (e.ts, e.event_id))
    clicked = {_request_key(e) for e in events if e.type is EventType.CLICK and e.request_id is not None}
    items = sorted({e.item_id for e in usable} | set(extra_items))
    index = {item: i for i, item in enumerate(items)}
    rounds = Rounds(
        items=items,
        action=np.array([index[e.item_id] for e in usable], dtype=np.int64),
        position=np.array([e.position for e in usable], dtype=np.int64),
        pscore=np.array([e.propensity for e in usable], dtype=np.float64),
        reward=np.array([_request_key(e) in clicked for e in usable], dtype=np.float64),
        variant=np.array([e.variant or "-" for e in usable]),
        segment=segment,
        skipped={k: v for k, v in skipped.items() if v},
    )
    return rounds, usable


def subset(rounds: Rounds, mask: np.ndarray) -> Rounds:
    return Rounds(rounds.items, rounds.action[mask], rounds.position[mask], rounds.pscore[mask],
                  rounds.reward[mask], rounds.variant[mask], rounds.segment, rounds.skipped)


# -- policies -----------------------------------------------------------------------------------


def load_priors(path: Path, segment: str) -> dict[str, tuple[float, float]]:
    """{item: (alpha, beta)} of one segment from `{segment: {item: {alpha, beta}}}` JSON."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise OpeInputError(f"--priors: cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise OpeInputError(f"--priors: {path} is not JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(doc, dict) or segment not in doc:
        have = ", ".join(sorted(doc)) if isinstance(doc, dict) else "none"
        raise OpeInputError(f"--priors: {path} has no segment {segment!r} (segments: {have})")
    out: dict[str, tuple[float, float]] = {}
    rows = doc[segment]
    if not isinstance(rows, dict) or not rows:
        raise OpeInputError(f"--priors: {path}: segment {segment!r} must map item ids to {{alpha, beta}}")
    for item, ab in rows.items():
        a = ab.get("alpha") if isinstance(ab, dict) else None
        b = ab.get("beta") if isinstance(ab, dict) else None
        if not (isinstance(a, int | float) and isinstance(b, int | float) and a > 0 and b > 0):
            raise OpeInputError(f"--priors: {path}: {segment}.{item}: alpha and beta must be positive numbers")
        out[str(item)] = (float(a), float(b))
    return out


def bandit_counts(events: Iterable[Event]) -> dict[str, dict[str, tuple[float, float]]]:
    """{segment: {item: (clicks, non-clicks)}} by the streaming path's transform, decay off."""
    config = FeatureConfig()
    sums: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for event in events:
        for key, part in bandit_observations(event, config):
            row = sums[key]
            for item, decayed in part.payload.items():
                row[item] = row[item] + decayed.sums if item in row else decayed.sums.copy()
    segment_of = {keys.bandit(s): s for s in {e.segment for e in events} | {keys.GLOBAL_SEGMENT}}
    return {segment_of[k]: {i: (float(v[0]), float(v[1])) for i, v in row.items()} for k, row in sums.items()}


def pulserank_posteriors(counts: dict[str, dict[str, tuple[float, float]]], segment: str,
                         items: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Beta(α, β) per item as serving reads it: the segment's counts borrowing from the global row."""
    seg = counts.get(segment, {})
    glob_row = counts.get(keys.GLOBAL_SEGMENT, {})
    ab = np.array([borrowed_posterior(seg.get(i, (0.0, 0.0)), glob_row.get(i, (0.0, 0.0)), DEFAULT_STRENGTH)
                   for i in items])
    return ab[:, 0], ab[:, 1]


# -- the evaluation -----------------------------------------------------------------------------


def evaluate_logs(
    logs: str,
    policy: str,
    *,
    priors: Path | None = None,
    segment: str | None = None,
    variant: str | None = None,
    train_logs: str | None = None,
    train_fraction: float = 0.5,
    n_sim: int = DEFAULT_N_SIM,
    n_bootstrap: int = 1_000,
    level: float = 0.95,
    seed: int = 0,
    folds: int = 2,
    smoothing: float = ope.DEFAULT_SMOOTHING,
) -> dict[str, Any]:
    """The JSON-ready report: the rounds, the logged click rate, each estimator's value and interval."""
    if policy not in POLICIES:
        raise OpeInputError(f"--policy: unknown {policy!r}; choose one of {', '.join(POLICIES)}")
    if not 0.0 < train_fraction < 1.0:
        raise OpeInputError(f"--train-fraction: expected a fraction in (0, 1), got {train_fraction:g}")
    if policy == "bts" and priors is None:
        raise OpeInputError("--priors: the bts policy needs its Beta priors (bts_priors.json of `data fetch obd`)")
    events = read_events(expand(logs))
    train_events: list[Event] | None = read_events(expand(train_logs, "--train-logs")) if train_logs else None

    segment = segment if segment is not None else _single_segment(events, variant)
    prior_ab = load_priors(priors, segment) if policy == "bts" and priors is not None else {}
    extra = list(prior_ab)
    if train_events is not None:
        extra += [e.item_id for e in train_events if e.type is EventType.IMPRESSION and e.segment == segment]
    rounds, impressions = rounds_from_events(events, segment, variant, extra)
    if prior_ab and (missing := sorted(set(rounds.items) - set(prior_ab))):
        raise OpeInputError(f"--priors: no prior for logged item {missing[0]!r} in segment {rounds.segment!r}"
                            f" ({len(missing)} items missing)")

    k = int(rounds.position.max()) + 1
    if len(rounds.items) < k:
        raise OpeInputError(f"--logs: {k} positions logged but only {len(rounds.items)} items in the catalogue")
    train: dict[str, Any] | None = None
    if policy == "uniform":
        dist = ope.uniform_action_dist(len(rounds.items), k)
    elif policy == "bts":
        a = np.array([prior_ab[i][0] for i in rounds.items])
        b = np.array([prior_ab[i][1] for i in rounds.items])
        dist = action_distribution(a, b, k, n_sim=n_sim, seed=seed)
    else:
        if train_events is None:
            cut = int(round(train_fraction * rounds.n))
            if not 0 < cut < rounds.n:
                raise OpeInputError(f"--train-fraction: {train_fraction:g} of {rounds.n} rounds leaves a side empty")
            train_requests = {e.request_id for e in impressions[:cut]}  # a request is never split
            train_events = [e for e in events if e.request_id in train_requests]
            held_out = np.array([e.request_id not in train_requests for e in impressions])
            if not held_out.any():
                raise OpeInputError(f"--train-fraction: {train_fraction:g} of the requests leaves none to evaluate")
            train = {"source": f"earliest {train_fraction:.0%} of --logs", "rounds": int((~held_out).sum())}
            rounds = subset(rounds, held_out)
        else:
            train = {"source": train_logs, "rounds": sum(e.type is EventType.IMPRESSION for e in train_events)}
        counts = bandit_counts(train_events)
        a, b = pulserank_posteriors(counts, rounds.segment, rounds.items)
        train["clicks"] = float(sum(c for c, _ in counts.get(rounds.segment, {}).values()))
        dist = action_distribution(a, b, k, n_sim=n_sim, seed=seed)

    q_hat = ope.cross_fit_reward_model(rounds.action, rounds.position, rounds.reward, len(rounds.items), k,
                                       folds=folds, smoothing=smoothing, seed=seed)
    estimates = ope.evaluate(rounds.reward, rounds.action, rounds.position, rounds.pscore, dist, q_hat,
                             n_bootstrap=n_bootstrap, level=level, seed=seed)
    weights = ope.importance_weights(rounds.action, rounds.position, rounds.pscore, dist)
    logged = ope.bootstrap_mean(rounds.reward, n_bootstrap, level, seed)
    return {
        "policy": policy,
        "segment": rounds.segment,
        "variants": rounds.variants,
        "rounds": rounds.n,
        "clicks": int(rounds.reward.sum()),
        "items": len(rounds.items),
        "positions": k,
        "skipped": rounds.skipped,
        "train": train,
        "logged_click_rate": logged.to_dict(),
        "effective_sample_size": ope.effective_sample_size(weights),
        "max_weight": float(weights.max()),
        "bootstrap": {"resamples": n_bootstrap, "level": level, "seed": seed},
        "monte_carlo_draws": None if policy == "uniform" else n_sim,
        "estimates": {name: e.to_dict() for name, e in estimates.items()},
    }


def _single_segment(events: Sequence[Event], variant: str | None) -> str:
    segs = {e.segment for e in events if e.type is EventType.IMPRESSION and (variant is None or e.variant == variant)}
    if not segs:
        raise OpeInputError("--logs: no impression events" + (f" with variant {variant!r}" if variant else ""))
    if len(segs) != 1:
        found = ", ".join(sorted(segs)) or "none"
        raise OpeInputError(f"--segment: the logs hold impressions of {len(segs)} segments ({found}); pick one")
    return next(iter(segs))


def format_report(r: dict[str, Any]) -> str:
    pct = f"{r['bootstrap']['level']:.0%}"
    variants = ", ".join(f"{v} {n:,}" for v, n in sorted(r["variants"].items()))
    lines = [f"policy {r['policy']} on {r['rounds']:,} logged impressions of segment {r['segment']!r}"
             f" (logged by {variants}; {r['clicks']:,} clicks), {r['items']} items × {r['positions']} positions"]
    if r["train"]:
        t = r["train"]
        lines.append(f"  trained on {t['rounds']:,} impressions ({t['source']}; {t['clicks']:,.0f} clicks)")
    for reason, n in r["skipped"].items():
        lines.append(f"  skipped {n:,} impressions: {reason}")
    lg = r["logged_click_rate"]
    lines.append(f"  logged click rate (the logging policy's own value): {lg['value']:.5f}"
                 f"  {pct} CI [{lg['lower']:.5f}, {lg['upper']:.5f}]")
    lines.append(f"  effective sample size {r['effective_sample_size']:,.0f} of {r['rounds']:,};"
                 f" largest importance weight {r['max_weight']:.2f}")
    b = r["bootstrap"]
    lines.append(f"  estimator  value     {pct} CI ({b['resamples']:,} bootstrap resamples, seed {b['seed']})")
    for name, e in r["estimates"].items():
        lines.append(f"  {name:<9}  {e['value']:.5f}   [{e['lower']:.5f}, {e['upper']:.5f}]")
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------------------


def _json_safe(x: Any) -> Any:
    """NaN/inf (e.g. SNIPS when π_e never meets the logs) → null, so the output stays valid JSON."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--logs", required=True, help="event-log JSONL glob(s), comma-separated: impressions "
                        "(with request_id, position, propensity) and their clicks")
    parser.add_argument("--policy", required=True, choices=POLICIES, help="the policy to evaluate")
    parser.add_argument("--priors", type=Path, default=None,
                        help="bts: Beta priors {segment: {item: {alpha, beta}}} (bts_priors.json of data fetch obd)")
    parser.add_argument("--segment", default=None, help="evaluate this segment (default: the logs' only one)")
    parser.add_argument("--variant", default=None, help="only impressions logged under this variant")
    parser.add_argument("--train-logs", default=None,
                        help="pulserank: learn the bandit counts from these logs instead of splitting --logs")
    parser.add_argument("--train-fraction", type=float, default=0.5,
                        help="pulserank without --train-logs: the earliest fraction of requests to learn from")
    parser.add_argument("--n-sim", type=int, default=DEFAULT_N_SIM,
                        help="Monte-Carlo draws for the Thompson slate's action distribution")
    parser.add_argument("--bootstrap", type=int, default=1_000, help="bootstrap resamples")
    parser.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    parser.add_argument("--seed", type=int, default=0, help="seeds the Monte-Carlo, bootstrap and DR folds")
    parser.add_argument("--folds", type=int, default=2, help="cross-fitting folds of DR's reward model")
    parser.add_argument("--smoothing", type=float, default=ope.DEFAULT_SMOOTHING,
                        help="pseudo-impressions shrinking DR's per-(item, position) click rate to its position's")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        report = evaluate_logs(
            args.logs, args.policy, priors=args.priors, segment=args.segment, variant=args.variant,
            train_logs=args.train_logs, train_fraction=args.train_fraction, n_sim=args.n_sim,
            n_bootstrap=args.bootstrap, level=args.level, seed=args.seed, folds=args.folds,
            smoothing=args.smoothing,
        )
    except ValueError as exc:  # OpeInputError, and models.ope's checks of --bootstrap, --level, --folds, ...
        print(f"pulserank evaluate ope: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(_json_safe(report), indent=1) if args.json else format_report(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.ope", description=__doc__.split("\n", 1)[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
