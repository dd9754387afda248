"""Event parsing throughput: `parse_event` on real MovieLens lines beside `json.loads` (the floor).

    python -m benchmarks.parse_events [--data DIR]   # DIR from `pulserank data fetch movielens100k`
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from schemas.events import parse_event


def _rate(fn, lines: list[str], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for line in lines:
            fn(line)
        best = min(best, time.perf_counter() - t0)
    return len(lines) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="out/demo/data/movielens100k")
    args = parser.parse_args()
    files = sorted(Path(args.data).glob("*.jsonl"))
    if not files:
        raise SystemExit(f"no *.jsonl under {args.data}: run `pulserank data fetch movielens100k --out {args.data}`")
    lines = [ln for f in files for ln in f.read_text().splitlines()]
    floor = _rate(json.loads, lines)
    full = _rate(parse_event, lines)
    print(f"events: {len(lines):,} lines from {', '.join(f.name for f in files)}")
    print(f"json.loads (floor):  {floor:12,.0f} lines/s")
    print(f"parse_event:         {full:12,.0f} events/s  ({full / floor:.2f}x the floor)")


if __name__ == "__main__":
    main()
