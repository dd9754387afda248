"""Keeps the cyclic garbage collector's pauses off a long-running server's request path.

A server holds ~10⁵ long-lived container objects (an edge's cached lists, view and memo; an
origin's caches), and each full collection of CPython's collector scans all of them: an edge's
took 19–125 ms as its heap grew to ~2·10⁵ objects (measured while it started), against a 5 ms
hit budget, and found almost nothing (what a request drops, reference counting frees at once).
They recur whenever the long-lived objects grow by a quarter, as caches do. So `pace_gc` freezes the
survivors every `freeze_every_s` (`gc.freeze`: they leave the collector's generations, and
reference counting still frees them), so a collection scans only what is new; every
`full_every_s` it unfreezes and runs one full collection, logged with its pause, so cyclic
garbage frozen meanwhile cannot pile up.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)


async def pace_gc(freeze_every_s: float = 5.0, full_every_s: float = 600.0) -> None:
    """Runs in the server's event loop until cancelled; unfreezes on the way out."""
    if not 0 < freeze_every_s <= full_every_s:
        raise ValueError(f"expected 0 < freeze_every_s ≤ full_every_s, got {freeze_every_s:g} and {full_every_s:g}")
    next_full = time.monotonic() + full_every_s
    try:
        gc.collect()
        gc.freeze()
        while True:
            await asyncio.sleep(freeze_every_s)
            if time.monotonic() < next_full:
                gc.collect(1)  # young cyclic garbage goes before the survivors are frozen
            else:
                gc.unfreeze()
                started = time.perf_counter()
                found = gc.collect()
                log.info("gc: full collection in %.0f ms, %d unreachable objects",
                         (time.perf_counter() - started) * 1000, found)
                next_full = time.monotonic() + full_every_s
            gc.freeze()
    finally:
        gc.unfreeze()
