"""`pulserank models list | promote VERSION | rollback | history`: the model registry from a shell.

Registry errors are one line on stderr, never a traceback: exit 2 for a request that cannot be
done (unknown version, nothing to roll back, a bad name or path), 1 when the registry itself
fails (checksums, a lost concurrent promotion, storage errors).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any, TextIO

from models import registry
from models.registry import Alias, ConflictError, IntegrityError, RegistryError, VersionInfo


def metrics_summary(metrics: dict[str, Any], limit: int = 4) -> str:
    """The first `limit` numeric metrics as `name=value`, top-level ones first (nested ones dotted)."""
    flat: list[tuple[str, float]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int | float):
            flat.append((prefix, value))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)

    walk("", {k: v for k, v in metrics.items() if not isinstance(v, dict)})  # top-level numbers first
    walk("", {k: v for k, v in metrics.items() if isinstance(v, dict)})
    cells = [f"{k}={v:.4g}" for k, v in flat[:limit]]
    return " ".join(cells) + (" …" if len(flat) > limit else "")


def format_listing(rows: list[VersionInfo], alias: str) -> str:
    if not rows:
        return "no published versions"
    width = max(len(r.version) for r in rows)
    lines = [f"  {'version':<{width}}  {'created_at':<24}  metrics   (* = {alias})"]
    for r in rows:
        mark = "*" if r.production else " "
        lines.append(f"{mark} {r.version:<{width}}  {r.created_at or '-':<24}  {metrics_summary(r.metrics) or '-'}")
    return "\n".join(lines)


def format_history(records: list[Alias]) -> str:
    if not records:
        return "never promoted"
    return "\n".join(f"{r.seq:>4}  {r.promoted_at}  {r.action:<8}  {r.version}" for r in records)


def _moved(before: Alias | None, after: Alias) -> str:
    if before is not None and before.record == after.record:
        return f"{after.name} already is {after.version}"
    was = f" (was {before.version})" if before is not None else ""
    return f"{after.name} → {after.version}{was}"


def run(action: str, root: str, alias: str = registry.PRODUCTION, version: str | None = None,
        as_json: bool = False, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """One registry command; prints its result and returns the exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        if action == "list":
            rows = registry.listing(root, alias)
            if as_json:
                current = next((r.version for r in rows if r.production), None)
                doc = {"registry": root, "alias": alias, alias: current, "versions": [r.to_json() for r in rows]}
                print(json.dumps(doc, indent=2, ensure_ascii=False), file=out)
            else:
                print(format_listing(rows, alias), file=out)
        elif action == "history":
            records = registry.history(root, alias)
            if as_json:
                print(json.dumps([asdict(r) for r in records], indent=2, ensure_ascii=False), file=out)
            else:
                print(format_history(records), file=out)
        elif action in ("promote", "rollback"):
            before = registry.read_alias(root, alias)
            after = registry.promote(root, version, alias) if action == "promote" else registry.rollback(root, alias)
            print(_moved(before, after), file=out)
        else:
            raise ValueError(f"unknown action {action!r}")
    except (IntegrityError, ConflictError) as exc:
        print(f"pulserank models {action}: {exc}", file=err)
        return 1
    except RegistryError as exc:
        print(f"pulserank models {action}: {exc}", file=err)
        return 2
    except ValueError as exc:  # e.g. Beam: no filesystem for the root's scheme
        print(f"pulserank models {action}: {exc}", file=err)
        return 2
    except OSError as exc:  # storage unreachable, permissions
        print(f"pulserank models {action}: {root}: {exc}", file=err)
        return 1
    return 0
