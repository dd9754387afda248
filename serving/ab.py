"""A/B allocation: a stable hash of (experiment, user) picks each user's variant.

The bucket is `sha256("<experiment>:<user_id>")`'s first 8 bytes as a big-endian integer / 2**64,
uniform in [0, 1): the same on every server, process and language (never Python's `hash()`,
which is salted per process), so edges and SDKs can reproduce it. The experiment name is part of
the hash, so different experiments split users independently. Variants own consecutive slices
of [0, 1) in config order; changing weights moves only the users in the slices that change.
Each variant names the model version it serves and its exploration settings (n0, ε).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_EXPERIMENT = "default"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_VARIANT_FIELDS = ("name", "weight", "model", "n0", "epsilon")
_WEIGHT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Variant:
    name: str
    weight: float
    model: str = "production"  # registry alias or version this variant serves
    # Thompson prior strength on the ranker's probability (serving/exploration.py); None: calibrated
    # by the server to its configured exploration share (`exploration_share`)
    n0: float | None = None
    epsilon: float = 0.0  # share of slots given to tail items


@dataclass(frozen=True)
class Experiment:
    name: str
    variants: tuple[Variant, ...]


def default_experiment() -> Experiment:
    return Experiment(DEFAULT_EXPERIMENT, (Variant(DEFAULT_EXPERIMENT, 1.0),))


def load_experiment(section: Mapping[str, Any] | None) -> Experiment:
    """The `experiment` config section → Experiment; absent or empty → one variant "default".

    Raises ValueError naming the field (`experiment.variants[1].weight: …`).
    """
    if section is None or (isinstance(section, Mapping) and not section):
        return default_experiment()
    if not isinstance(section, Mapping):
        raise ValueError(f"experiment: expected a mapping, got {type(section).__name__}")
    unknown = sorted(str(k) for k in section if k not in ("name", "variants"))
    if unknown:
        raise ValueError(f"experiment.{unknown[0]}: unknown field (known: name, variants)")
    name = _name(section.get("name"), "experiment.name")
    raw = section.get("variants")
    if not isinstance(raw, list) or not raw:
        raise ValueError("experiment.variants: expected a non-empty list of variants")
    variants = tuple(_variant(v, f"experiment.variants[{i}]") for i, v in enumerate(raw))
    seen: dict[str, int] = {}
    for i, v in enumerate(variants):
        if v.name in seen:
            raise ValueError(f"experiment.variants[{i}].name: {v.name!r} repeats variants[{seen[v.name]}]")
        seen[v.name] = i
    total = math.fsum(v.weight for v in variants)
    if abs(total - 1.0) > _WEIGHT_TOLERANCE:
        raise ValueError(f"experiment.variants: weights must sum to 1, they sum to {total:g}")
    return Experiment(name, variants)


def bucket(user_id: str, experiment: str) -> float:
    """The user's stable position in [0, 1) for `experiment` (see the module docstring)."""
    digest = hashlib.sha256(f"{experiment}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def allocate(user_id: str, experiment: Experiment) -> Variant:
    """The variant whose slice of [0, 1) holds the user's bucket."""
    b = bucket(user_id, experiment.name)
    upper = 0.0
    for variant in experiment.variants:
        upper += variant.weight
        if b < upper:
            return variant
    # Weights sum to 1 within a rounding error: the last variant with weight takes the rest.
    return next(v for v in reversed(experiment.variants) if v.weight > 0)


# -- validation -----------------------------------------------------------------------------------


def _name(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a string, got {type(value).__name__}")
    if not _NAME.fullmatch(value):
        raise ValueError(f"{field}: {value[:80]!r} must be 1–64 of A–Z a–z 0–9 . _ - (starting alphanumeric)")
    return value


def _number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{field}: expected a finite number, got {value!r}")
    return float(value)


def _variant(raw: object, path: str) -> Variant:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a mapping with name and weight, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in _VARIANT_FIELDS)
    if unknown:
        raise ValueError(f"{path}.{unknown[0]}: unknown field (known: {', '.join(_VARIANT_FIELDS)})")
    name = _name(raw.get("name"), f"{path}.name")
    if "weight" not in raw:
        raise ValueError(f"{path}.weight: required")
    weight = _number(raw["weight"], f"{path}.weight")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"{path}.weight: must be within 0–1, got {weight:g}")
    model = raw.get("model", "production")
    if not isinstance(model, str) or not model.strip() or not model.isprintable():
        raise ValueError(f"{path}.model: expected a registry alias or version, got {model!r}")
    n0 = None if raw.get("n0") is None else _number(raw["n0"], f"{path}.n0")
    if n0 is not None and n0 < 0:
        raise ValueError(f"{path}.n0: must be ≥ 0, got {n0:g}")
    epsilon = _number(raw.get("epsilon", 0.0), f"{path}.epsilon")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"{path}.epsilon: must be within [0, 1), got {epsilon:g}")
    return Variant(name, weight, model, n0, epsilon)
