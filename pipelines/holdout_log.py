"""The training part of an event log as a log of its own, and the held-out items per user.

Serving checks need a store that never saw the held-out pairs: replay and deploy this file, then
ask the server for the held-out users and compare with the offline evaluation of the same split.
"""

from __future__ import annotations

import glob as globlib
from pathlib import Path

from models.interactions import read_interactions
from models.splits import make_split
from schemas.events import EventError, EventType, parse_event


def write_training_log(globs: list[str], out: Path, kind: str = "random", seed: int = 0
                       ) -> tuple[int, dict[str, set[str]]]:
    """Writes every event except the held-out (user, item) interactions to `out`; returns the
    log's last event time and user → held-out items."""
    split = make_split(read_interactions(globs), kind, seed=seed)
    test = split.test.tocoo()
    ids_u, ids_i = split.train_data.user_ids, split.train_data.item_ids
    held: dict[str, set[str]] = {}
    for u, i in zip(test.row, test.col, strict=True):
        held.setdefault(ids_u[u], set()).add(ids_i[i])
    end = 0
    with open(out, "w", encoding="utf-8") as f:
        for path in sorted({p for g in globs for p in globlib.glob(g)}):
            for line in Path(path).read_text(encoding="utf-8").splitlines():
                try:
                    e = parse_event(line)
                except (EventError, ValueError):
                    continue
                end = max(end, e.ts)
                if e.type is not EventType.ITEM and e.item_id in held.get(e.user_id, ()):
                    continue
                f.write(line + "\n")
    return end, held
