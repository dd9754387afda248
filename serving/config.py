"""`pulserank serve` settings: a YAML file, overridden by command-line flags.

Sections (all optional): `listen`, `registry`, `redis_url`, `vector_store`, `metrics_port`,
`tls` {cert, key}, `retrieval` {collaborative, content, trending, candidates, rank_top, sources},
`api_keys` (serving/gateway.py), `experiment` (serving/ab.py), `llm` (serving/llm.py),
`events` (stores/publishers.py). Unknown top-level keys are refused by name, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from serving.personalize import SOURCES, ServingSizes

_TOP = {"listen", "registry", "redis_url", "vector_store", "metrics_port", "tls", "retrieval", "api_keys",
        "experiment", "llm", "events", "as_of", "n_sim", "exploration_share"}


class ConfigError(ValueError):
    """A bad setting, named by its path (e.g. `retrieval.content`)."""


@dataclass
class ServeConfig:
    listen: str = "127.0.0.1:50051"
    registry: str | None = None
    redis_url: str | None = None
    vector_store: str | None = None
    metrics_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    sizes: ServingSizes = field(default_factory=ServingSizes)
    sources: tuple[str, ...] = SOURCES
    api_keys: list[dict] | None = None
    experiment: dict | None = None
    llm: dict | None = None
    events: dict | None = None
    as_of: str | None = None
    n_sim: int = 250  # Monte-Carlo draws per propensity: error ≤ 0.03; 20 of 100 in 0.3–2 ms (tight–loose posteriors)
    sync_full_every_s: float = 30.0  # full snapshots on the edges' push channel
    exploration_share: float = 0.12  # what variants without an n0 of their own are calibrated to

    @property
    def loopback(self) -> bool:
        host = self.listen.rsplit(":", 1)[0].strip("[]")
        return host in ("127.0.0.1", "localhost", "::1")


def _int(section: dict, name: str, default: int, path: str) -> int:
    value = section.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{path}.{name}: expected a whole number ≥ 1, got {value!r}")
    return value


def load(path: str | None, overrides: dict[str, Any] | None = None) -> ServeConfig:
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"--config {path}: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"--config {path}: expected a mapping at the top level")
    unknown = sorted(set(raw) - _TOP)
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r} (known: {', '.join(sorted(_TOP))})")
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    retrieval = raw.get("retrieval") or {}
    if not isinstance(retrieval, dict):
        raise ConfigError("retrieval: expected a mapping")
    d = ServingSizes()
    sizes = ServingSizes(*(_int(retrieval, f, getattr(d, f), "retrieval") for f in
                           ("collaborative", "content", "trending", "candidates", "rank_top")))
    sources = tuple(retrieval.get("sources", SOURCES))
    bad = [s for s in sources if s not in SOURCES]
    if bad:
        raise ConfigError(f"retrieval.sources: unknown source {bad[0]!r} (known: {', '.join(SOURCES)})")
    tls = raw.get("tls") or {}
    if tls and not (tls.get("cert") and tls.get("key")):
        raise ConfigError("tls: needs both cert and key (PEM file paths)")
    metrics_port = raw.get("metrics_port")
    if metrics_port is not None and (isinstance(metrics_port, bool) or not isinstance(metrics_port, int)):
        raise ConfigError(f"metrics_port: expected a port number, got {metrics_port!r}")
    return ServeConfig(
        listen=str(raw.get("listen", ServeConfig.listen)), registry=raw.get("registry"),
        redis_url=raw.get("redis_url"), vector_store=raw.get("vector_store"), metrics_port=metrics_port,
        tls_cert=tls.get("cert"), tls_key=tls.get("key"), sizes=sizes, sources=sources,
        api_keys=raw.get("api_keys"), experiment=raw.get("experiment"), llm=raw.get("llm"), events=raw.get("events"),
        as_of=None if raw.get("as_of") is None else str(raw["as_of"]),
        n_sim=_int(raw, "n_sim", 250, "serve"),
        exploration_share=_share(raw.get("exploration_share", ServeConfig.exploration_share)),
    )


def _share(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise ConfigError(f"exploration_share: expected a share of shown items in (0, 1), got {value!r}")
    return float(value)
