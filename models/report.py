"""The offline evaluation report: a folder with `report.md` and PNG plots.

Plots are drawn on matplotlib's Agg canvas directly (`Figure` + `FigureCanvasAgg`), never through
pyplot, so writing a report touches no global backend state and needs no display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from models.evaluation import EvaluationResult
from models.interactions import ReadStats
from models.metrics import metric_names

METRICS_PNG = "metrics.png"
CURVES_PNG = "training_curves.png"
POPULARITY_PNG = "popularity_bias.png"
DECILES = 10
TEST_SET = "test set"


@dataclass(frozen=True)
class PopularityBias:
    """How popular the recommended items are, by training popularity (decile 1 = most popular tenth
    of the catalogue)."""

    decile_share: dict[str, np.ndarray]  # recommender (and the test set) → share per decile
    mean_popularity: dict[str, float]  # mean number of training users of a recommended (test) item
    coverage: dict[str, float]  # distinct recommended items / catalogue size


def popularity_bias(evaluation: EvaluationResult) -> PopularityBias:
    split = evaluation.split
    popularity = np.asarray(split.train.sum(axis=0)).ravel()
    n_items = len(popularity)
    rank = np.empty(n_items, dtype=np.int64)
    rank[np.lexsort((np.arange(n_items), -popularity))] = np.arange(n_items)
    decile = rank * DECILES // max(n_items, 1)
    test_items = split.test.tocsr()[evaluation.users].indices
    lists = {name: r.top_items.ravel() for name, r in evaluation.results.items()}
    lists[TEST_SET] = test_items

    def share(items: np.ndarray) -> np.ndarray:
        counts = np.bincount(decile[items], minlength=DECILES).astype(np.float64)
        return counts / max(counts.sum(), 1.0)

    return PopularityBias(
        decile_share={name: share(items) for name, items in lists.items()},
        mean_popularity={name: float(popularity[items].mean()) if len(items) else 0.0 for name, items in lists.items()},
        coverage={name: len(np.unique(items)) / max(n_items, 1) for name, items in lists.items()},
    )


# -- plots -----------------------------------------------------------------------------------


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100)


def plot_metrics(evaluations: Sequence[EvaluationResult], path: Path) -> None:
    """Grouped bars: one panel per split, one group per metric, one bar per recommender."""
    fig = Figure(figsize=(6.5 * len(evaluations), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(evaluations), squeeze=False)[0])
    for ax, ev in zip(axes, evaluations, strict=True):
        names = metric_names(ev.k)
        x = np.arange(len(names))
        width = 0.8 / max(len(ev.results), 1)
        for i, r in enumerate(ev.results.values()):
            vals = [r.metrics[m] for m in names]
            bars = ax.bar(x + (i - (len(ev.results) - 1) / 2) * width, vals, width, label=r.name)
            ax.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90, padding=2)
        ax.set_xticks(x, names)
        ax.set_ylim(0, 1.05)
        ax.set_title(ev.split.name)
        ax.legend(fontsize=8, loc="upper left")
    _save(fig, path)


def plot_training_curves(curves: Mapping[str, Sequence[float]], path: Path) -> None:
    """One panel per curve (loss, a validation metric, …) against the epoch."""
    names = [n for n, v in curves.items() if len(v)]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        values = np.asarray(curves[name], dtype=np.float64)
        ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    _save(fig, path)


def plot_popularity(evaluations: Sequence[EvaluationResult], biases: Sequence[PopularityBias], path: Path) -> None:
    """Share of recommended items per popularity decile, per recommender, beside the test set's."""
    fig = Figure(figsize=(6.5 * len(evaluations), 4.2), layout="constrained")
    axes = fig.subplots(1, len(evaluations), squeeze=False)[0]
    x = np.arange(1, DECILES + 1)
    for ax, ev, bias in zip(axes, evaluations, biases, strict=True):
        for name, share in bias.decile_share.items():
            style = {"color": "black", "linestyle": "--"} if name == TEST_SET else {}
            ax.plot(x, share, marker="o", label=name, **style)
        ax.set_xticks(x)
        ax.set_xlabel("item popularity decile in train (1 = most popular)")
        ax.set_ylabel(f"share of top-{ev.k} items")
        ax.set_title(ev.split.name)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    _save(fig, path)


def _curves(given: Mapping[str, object] | None, prefix: str = "") -> dict[str, np.ndarray]:
    """The plottable curves: non-empty 1-D numeric sequences, nested mappings named `outer/inner`
    (anything else is skipped)."""
    out: dict[str, np.ndarray] = {}
    for name, values in (given or {}).items():
        if isinstance(values, Mapping):
            out.update(_curves(values, f"{prefix}{name}/"))
            continue
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if arr.ndim == 1 and arr.size:
            out[f"{prefix}{name}"] = arr
    return out


# -- markdown --------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return "–" if math.isnan(v) else f"{v:.4f}"
        return str(v)

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out


def write_report(out_dir: str | Path, evaluations: Sequence[EvaluationResult], read_stats: ReadStats | None = None,
                 training_curves: Mapping[str, object] | None = None,
                 notes: Sequence[str] = (), timings: Mapping[str, float] | None = None,
                 title: str = "Offline evaluation") -> Path:
    """Write `report.md` and its PNGs into `out_dir` (created); returns the markdown's path.

    `evaluations` are one or more splits evaluated with the same recommenders; `training_curves`
    (per-epoch lists, e.g. {"loss": [...], "val_ndcg@10": [...]}) is plotted when given and non-empty;
    `timings` (stage → seconds, e.g. a training run's stages) are listed beside the evaluation's own.
    """
    if not evaluations:
        raise ValueError("write_report needs at least one evaluation")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    biases = [popularity_bias(ev) for ev in evaluations]
    plot_metrics(evaluations, out / METRICS_PNG)
    plot_popularity(evaluations, biases, out / POPULARITY_PNG)
    curves = _curves(training_curves)
    if curves:
        plot_training_curves(curves, out / CURVES_PNG)
    elif (out / CURVES_PNG).exists():
        (out / CURVES_PNG).unlink()  # a stale plot from an earlier run would mislead

    lines = [f"# {title}", ""]
    lines += [f"- {n}" for n in notes]
    lines += [
        "", "Protocol: each evaluated user ranks the full catalogue minus their training items; relevant = "
        "every held-out item; Recall@k divides by |relevant|, NDCG's ideal DCG and MAP@k's denominator use "
        "min(|relevant|, k); means over users with at least one held-out item.", "",
        "## Data", "",
    ]
    first = evaluations[0].split
    data_rows: list[list[object]] = [["users", first.stats.users], ["items (catalogue)", first.stats.items]]
    if read_stats is not None:
        data_rows += [["files", len(read_stats.files)], ["lines", f"{read_stats.lines:,}"],
                      ["positive interactions", f"{read_stats.positives:,}"],
                      ["item events", f"{read_stats.item_events:,}"], ["other events", f"{read_stats.other_events:,}"],
                      ["duplicate event ids", read_stats.duplicate_events], ["bad lines", read_stats.bad_lines]]
    pairs = first.stats.train_pairs + first.stats.test_pairs
    data_rows.append(["density (unique pairs / users × items)",
                      f"{pairs / max(first.stats.users * first.stats.items, 1):.4%}"])
    lines += _table(["", "value"], data_rows)
    lines += ["", "Splits:", ""]
    lines += _table(["split", "train pairs", "test pairs", "evaluated users", "cold users dropped", "fingerprint"],
                    [[ev.split.name, f"{ev.split.stats.train_pairs:,}", f"{ev.split.stats.test_pairs:,}",
                      ev.split.stats.test_users, ev.split.stats.cold_users, ev.split.fingerprint()[:12]]
                     for ev in evaluations])

    for ev in evaluations:
        names = metric_names(ev.k)
        lines += ["", f"## Metrics — {ev.split.name}, k = {ev.k}", ""]
        lines += _table(["recommender", *names], [[r.name, *(r.metrics[m] for m in names)]
                                                  for r in ev.results.values()])
    lines += ["", f"![metrics vs baselines]({METRICS_PNG})", ""]

    lines += ["## Leakage canary", "",
              "The same rankings judged against test sets shuffled across users (a derangement, minus the "
              "receiver's training items). A recommender that learnt nothing about the test pairs falls to "
              "MostPop's level or below; one that stays above MostPop's real score saw the answers.", ""]
    rows = []
    for ev in evaluations:
        ndcg = f"ndcg@{ev.k}"
        pop = ev.results.get("MostPop")
        ref = pop.metrics[ndcg] if pop is not None else float("nan")
        for r in ev.results.values():
            verdict = "–" if math.isnan(ref) else ("ok" if r.canary[ndcg] <= ref else "LEAK?")
            rows.append([ev.split.name, r.name, r.metrics[ndcg], r.canary[ndcg], ref, verdict])
    lines += _table(["split", "recommender", "NDCG real", "NDCG canary", "MostPop NDCG real", "canary ≤ MostPop"],
                    rows)

    lines += ["", "## Popularity bias", "",
              "Mean training popularity (users) of the recommended items beside the held-out items', the share "
              "of recommendations from the most popular tenth of the catalogue, and catalogue coverage.", ""]
    rows = []
    for ev, bias in zip(evaluations, biases, strict=True):
        for name in bias.decile_share:
            rows.append([ev.split.name, name, f"{bias.mean_popularity[name]:.1f}",
                         f"{bias.decile_share[name][0]:.1%}", f"{bias.coverage[name]:.1%}"])
    lines += _table(["split", "list", "mean popularity", "top-decile share", "coverage"], rows)
    lines += ["", f"![popularity bias]({POPULARITY_PNG})", ""]

    lines += ["## Timings", ""]
    lines += _table(["split", "recommender", "fit (s)", "score + rank (s)"],
                    [[ev.split.name, r.name, f"{r.fit_seconds:.3f}", f"{r.score_seconds:.3f}"]
                     for ev in evaluations for r in ev.results.values()])
    if timings:
        lines += ["", "Stages:", ""]
        lines += _table(["stage", "seconds"], [[name, f"{sec:.1f}"] for name, sec in timings.items()])
    lines += ["", "## Training curves", ""]
    lines += [f"![training curves]({CURVES_PNG})"] if curves else ["No training curves were given."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
