"""`pulserank replay`'s display: a spinner while Beam runs, then the run's Beam metrics.

Beam's in-process runner (FnApiRunner) reports metrics only when the pipeline has finished, so
the spinner shows what can be known meanwhile: the input's size, the elapsed time and how many
keys Redis holds (polled by a side thread; it grows as the sink merges batches).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from apache_beam.io.filesystems import FileSystems
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from pipelines.replay import ReplayResult
from stores.redis_client import get_redis
from transforms.parse import TYPE_PREFIX


def input_size(globs: list[str]) -> tuple[int, int]:
    """(files, bytes) the globs match now."""
    files = size = 0
    for result in FileSystems.match(globs):
        for meta in result.metadata_list:
            files += 1
            size += meta.size_in_bytes
    return files, size


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GB"


def run_with_progress(run: Callable[[], ReplayResult], globs: list[str], redis_url: str) -> ReplayResult:
    """Runs `run()` under a spinner (elapsed time, input size, keys in Redis so far)."""
    files, size = input_size(globs)
    what = f"replaying {files:,} file{'s' if files != 1 else ''} ({_human(size)})"
    console = Console(stderr=True)
    if not console.is_terminal:
        print(f"{what} …", file=sys.stderr, flush=True)
        return run()
    stop = threading.Event()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task(what, total=None)

        def watch() -> None:
            client = get_redis(redis_url, socket_timeout=2.0)
            try:
                while not stop.wait(1.0):
                    progress.update(task, description=f"{what}: {client.dbsize():,} keys in Redis")
            except Exception:  # the display must never break the run
                pass
            finally:
                client.close()

        watcher = threading.Thread(target=watch, name="replay-progress", daemon=True)
        watcher.start()
        try:
            return run()
        finally:
            stop.set()
            watcher.join(timeout=3.0)


def format_report(result: ReplayResult, dead_letters: str) -> str:
    """The run's Beam metrics (namespace `pulserank`) and the reconciliation line."""
    c = result
    by_type = {name[len(TYPE_PREFIX):]: n for name, n in c.counters.items() if name.startswith(TYPE_PREFIX) and n}
    rate = c["events_read"] / c.seconds if c.seconds else 0.0
    types = " · ".join(f"{t} {n:,}" for t, n in sorted(by_type.items())) or "—"
    lines = [
        f"replay finished in {c.seconds:.1f}s ({rate:,.0f} events/s); Beam metrics:",
        f"  events read      {c['events_read']:>12,}",
        f"  written          {c['events_written']:>12,}   by type: {types}",
        f"  dead letters     {c['dead_letters']:>12,}" + (f"   → {dead_letters}.jsonl" if c["dead_letters"] else ""),
        f"  duplicates       {c['duplicates']:>12,}",
        f"  out of range     {c['out_of_range']:>12,}",
        f"  keys written     {c['keys_merged']:>12,}   (merges skipped by guard: {c['merges_skipped_by_guard']:,})",
        f"  vectors synced   {c.vectors_synced:>12,}",
        f"read {c['events_read']:,} = written {c['events_written']:,} + dead letters {c['dead_letters']:,}"
        f" + duplicates {c['duplicates']:,} + out of range {c['out_of_range']:,}: "
        + ("reconciles" if c.reconciles else "DOES NOT RECONCILE"),
    ]
    return "\n".join(lines)
