"""`pulserank evaluate ab`: click rate per A/B variant from logged impressions and clicks.

    pulserank evaluate ab --logs 'logs/*.jsonl' [--experiment NAME] [--baseline VARIANT]
                          [--window-minutes 30] [--level 0.95] [--json]

Impressions are `impression` events with a `variant` (serving logs them with the request id,
item, position and propensity); their experiment is `context.experiment` when logged, and
`--experiment` keeps only that one. Each `click` is attributed to the latest impression of the
same (user, item) at most `--window-minutes` before it; an impression counts as clicked once,
however often it is clicked. Per variant: users, impressions, clicked impressions, the click rate
with a Wilson interval, and the difference to the baseline variant (`--baseline`, else the first
by name) with Newcombe's interval and a two-proportion z-test (`models.ab_stats`).

Lines that fail the event contract are counted and reported, never fatal; events repeated across
files (same `event_id`) count once.
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.ab_stats import RateComparison, compare
from pipelines import ope
from schemas.events import Event, EventError, EventType, parse_event

PROG = "pulserank evaluate ab"
EXPERIMENT_KEY = "experiment"  # context key serving logs the experiment under
MAX_BAD_EXAMPLES = 5


class AbInputError(ValueError):
    """Logs or options that cannot be evaluated as given (the message names what to fix)."""


@dataclass
class Logs:
    """Impressions and clicks read from event logs, with what was skipped and why."""

    files: list[str]
    impressions: list[Event] = field(default_factory=list)
    clicks: list[Event] = field(default_factory=list)
    lines: int = 0
    bad_lines: int = 0
    bad_examples: list[str] = field(default_factory=list)
    duplicates: int = 0


@dataclass(frozen=True)
class VariantResult:
    variant: str
    users: int
    impressions: int
    clicks: int
    stats: RateComparison


@dataclass
class AbReport:
    experiment: str | None
    baseline: str
    window_minutes: float
    level: float
    files: int
    lines: int
    bad_lines: int
    bad_examples: list[str]
    duplicates: int
    impressions: int  # evaluated: of the experiment, with a variant
    impressions_without_variant: int
    impressions_other_experiments: int
    click_events: int
    clicks_attributed: int  # first click of an impression (clicked impressions, any experiment)
    clicks_repeat: int  # a further click on an already clicked impression
    clicks_unattributed: int  # no impression of (user, item) within the window before it
    users_in_several_variants: int
    variants: list[VariantResult]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["variants"] = [{"variant": v.variant, "users": v.users, "impressions": v.impressions,
                            "clicks": v.clicks, **{k: val for k, val in asdict(v.stats).items()
                                                   if k not in ("clicks", "impressions")}}
                           for v in self.variants]
        return out


# -- reading --------------------------------------------------------------------------------------


def read_logs(paths: Sequence[Path]) -> Logs:
    """Impressions and clicks of the JSONL files; bad lines are counted (with a few examples)."""
    logs = Logs(files=[str(p) for p in paths])
    seen: set[str] = set()
    for path in paths:
        try:
            with path.open("rb") as fh:
                for line_no, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    logs.lines += 1
                    try:
                        event = parse_event(line)
                    except EventError as exc:
                        logs.bad_lines += 1
                        if len(logs.bad_examples) < MAX_BAD_EXAMPLES:
                            logs.bad_examples.append(f"{path}:{line_no}: {exc.field}: {exc.reason}")
                        continue
                    if event.event_id in seen:
                        logs.duplicates += 1
                        continue
                    seen.add(event.event_id)
                    if event.type is EventType.IMPRESSION:
                        logs.impressions.append(event)
                    elif event.type is EventType.CLICK:
                        logs.clicks.append(event)
        except OSError as exc:
            raise AbInputError(f"{path}: unreadable: {exc}") from None
    return logs


def experiment_of(event: Event) -> str | None:
    value = event.context.extra.get(EXPERIMENT_KEY)
    return str(value) if value is not None else None


# -- attribution ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attribution:
    clicked: list[bool]  # per impression (input order)
    attributed: int
    repeat: int
    unattributed: int


def attribute_clicks(impressions: Sequence[Event], clicks: Sequence[Event], window_ms: int) -> Attribution:
    """Each click goes to the latest impression of its (user, item) within `window_ms` before it
    (same instant included; ties go to the impression logged last)."""
    by_pair: dict[tuple[str | None, str], list[tuple[int, int]]] = defaultdict(list)
    for i, imp in enumerate(impressions):
        by_pair[(imp.user_id, imp.item_id)].append((imp.ts, i))
    for entries in by_pair.values():
        entries.sort()
    clicked = [False] * len(impressions)
    attributed = repeat = unattributed = 0
    for click in clicks:
        entries = by_pair.get((click.user_id, click.item_id))
        j = bisect.bisect_right(entries, (click.ts, len(impressions))) - 1 if entries else -1
        if j < 0 or click.ts - entries[j][0] > window_ms:
            unattributed += 1
            continue
        i = entries[j][1]
        if clicked[i]:
            repeat += 1
        else:
            clicked[i] = True
            attributed += 1
    return Attribution(clicked, attributed, repeat, unattributed)


# -- the report -----------------------------------------------------------------------------------


def evaluate_logs(globs: str, experiment: str | None = None, baseline: str | None = None,
                  window_minutes: float = 30.0, level: float = 0.95) -> AbReport:
    """Read, attribute and compare; raises AbInputError (a ValueError) on unusable input."""
    if not window_minutes > 0:
        raise AbInputError(f"--window-minutes: must be > 0, got {window_minutes:g}")
    if not 0 < level < 1:
        raise AbInputError(f"--level: must be within (0, 1), got {level:g}")
    try:
        files = ope.expand(globs)
    except ope.OpeInputError as exc:
        raise AbInputError(str(exc)) from None
    logs = read_logs(files)
    tagged = sorted({e for e in map(experiment_of, logs.impressions) if e is not None})
    if experiment is None and len(tagged) > 1:
        raise AbInputError(f"the logs hold impressions of several experiments ({', '.join(tagged)}): "
                           f"pick one with --experiment")
    if experiment is not None and experiment not in tagged:
        known = ", ".join(tagged) or "none (impressions carry no context.experiment)"
        raise AbInputError(f"--experiment: no impression of experiment {experiment!r}; logged: {known}")

    attribution = attribute_clicks(logs.impressions, logs.clicks, int(round(window_minutes * 60_000)))
    impressions: dict[str, int] = defaultdict(int)
    clicks: dict[str, int] = defaultdict(int)
    users: dict[str, set[str | None]] = defaultdict(set)
    no_variant = other = 0
    for imp, was_clicked in zip(logs.impressions, attribution.clicked, strict=True):
        if experiment is not None and experiment_of(imp) != experiment:
            other += 1
            continue
        if imp.variant is None:
            no_variant += 1
            continue
        impressions[imp.variant] += 1
        clicks[imp.variant] += was_clicked
        users[imp.variant].add(imp.user_id)
    if not impressions:
        raise AbInputError("no impression with a variant to evaluate" +
                           (f" (experiment {experiment!r})" if experiment else ""))
    names = sorted(impressions)
    if baseline is None:
        baseline = names[0]
    elif baseline not in impressions:
        raise AbInputError(f"--baseline: no impressions of variant {baseline!r}; logged: {', '.join(names)}")
    order = [baseline, *(n for n in names if n != baseline)]
    results = [VariantResult(n, len(users[n]), impressions[n], clicks[n],
                             compare(clicks[n], impressions[n], clicks[baseline], impressions[baseline], level))
               for n in order]
    membership: dict[str | None, int] = defaultdict(int)
    for members in users.values():
        for u in members:
            membership[u] += 1
    return AbReport(
        experiment=experiment if experiment is not None else (tagged[0] if tagged else None),
        baseline=baseline, window_minutes=window_minutes, level=level, files=len(logs.files), lines=logs.lines,
        bad_lines=logs.bad_lines, bad_examples=logs.bad_examples, duplicates=logs.duplicates,
        impressions=sum(impressions.values()), impressions_without_variant=no_variant,
        impressions_other_experiments=other, click_events=len(logs.clicks),
        clicks_attributed=attribution.attributed, clicks_repeat=attribution.repeat,
        clicks_unattributed=attribution.unattributed,
        users_in_several_variants=sum(1 for n in membership.values() if n > 1), variants=results,
    )


def format_report(r: AbReport) -> str:
    pct = f"{r.level:.0%}"
    lines = [f"experiment {r.experiment or '(untagged)'}: {r.files} files, {r.lines:,} events, "
             f"{r.impressions:,} impressions evaluated, click window {r.window_minutes:g} min"]
    if r.bad_lines:
        lines.append(f"skipped {r.bad_lines:,} bad lines, e.g. " + "; ".join(r.bad_examples[:3]))
    skipped = [f"{n:,} {what}" for n, what in ((r.duplicates, "duplicate events"),
                                               (r.impressions_without_variant, "impressions without a variant"),
                                               (r.impressions_other_experiments, "impressions of other experiments"))
               if n]
    if skipped:
        lines.append("skipped " + ", ".join(skipped))
    lines.append(f"clicks: {r.click_events:,} events, {r.clicks_attributed:,} attributed, {r.clicks_repeat:,} "
                 f"repeat, {r.clicks_unattributed:,} without an impression in the window")
    if r.users_in_several_variants:
        lines.append(f"WARNING: {r.users_in_several_variants:,} users saw several variants (allocation changed?)")
    width = max(8, *(len(v.variant) for v in r.variants)) + 2
    lines.append(f"{'variant':<{width}}{'users':>9}{'impr.':>10}{'clicks':>8}{'rate':>9}{pct + ' CI':>19}"
                 f"{'diff':>10}{pct + ' CI':>21}{'p':>9}")
    for v in r.variants:
        s = v.stats
        row = (f"{v.variant:<{width}}{v.users:>9,}{v.impressions:>10,}{v.clicks:>8,}{s.rate:>9.4f}"
               f"{f'[{s.low:.4f}, {s.high:.4f}]':>19}")
        if v.variant == r.baseline:
            row += f"{'baseline':>10}"
        else:
            row += f"{s.diff:>+10.4f}{f'[{s.diff_low:+.4f}, {s.diff_high:+.4f}]':>21}{s.p_value:>9.2g}"
        lines.append(row)
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--logs", required=True, help="event-log JSONL glob(s), comma-separated: impressions "
                        "(with variant) and clicks")
    parser.add_argument("--experiment", default=None,
                        help="only impressions logged with this context.experiment (required when several)")
    parser.add_argument("--baseline", default=None, help="the variant others are compared to (default: first by "
                        "name)")
    parser.add_argument("--window-minutes", type=float, default=30.0,
                        help="a click counts for an impression of the same (user, item) at most this long before it")
    parser.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        report = evaluate_logs(args.logs, args.experiment, args.baseline, args.window_minutes, args.level)
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=1) if args.json else format_report(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").split("\n", 1)[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
