"""`serving.gc_pacing`: survivors are frozen out of the collector's scans, and cyclic garbage frozen
meanwhile is still collected by the periodic full collection."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref

import pytest

from serving.gc_pacing import pace_gc


class _Node:
    pass


def test_survivors_are_frozen_and_frozen_cycles_are_collected_by_the_full_collection() -> None:
    async def run() -> None:
        pacing = asyncio.create_task(pace_gc(freeze_every_s=0.05, full_every_s=2.0))
        node = _Node()
        node.me = node  # a cycle: only the collector can free it
        ref = weakref.ref(node)
        await asyncio.sleep(0.2)  # frozen with everything alive at a tick
        assert gc.get_freeze_count() > 0
        del node
        await asyncio.sleep(0.2)  # young collections do not look at frozen objects
        assert ref() is not None
        for _ in range(60):  # the full collection, 2 s after the start, unfreezes and finds it
            if ref() is None:
                break
            await asyncio.sleep(0.1)
        assert ref() is None
        pacing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pacing
        assert gc.get_freeze_count() == 0  # cancelled: nothing stays frozen

    asyncio.run(run())


def test_periods_are_checked() -> None:
    with pytest.raises(ValueError, match="freeze_every_s"):
        asyncio.run(pace_gc(freeze_every_s=5.0, full_every_s=1.0))
