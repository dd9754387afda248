"""The data lake: live events archived to date-partitioned JSONL files, so retraining and replay see them.

Layout: `<root>/dt=YYYY-MM-DD/events-<first stream id>-<last stream id>.jsonl`, partitioned by
the event's date in UTC, one canonical JSON line per event (the event format `pipelines.replay`
reads: `--input '<root>/dt=*/*.jsonl'`). A batch's files are named by its stream ids, so a
redelivered batch rewrites the same files instead of adding lines; each file is written to a
temporary name and renamed, so a crash never leaves half a file under a name the glob matches.
All I/O goes through Beam's `FileSystems`: `gs://` and other Beam filesystems work as roots.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from apache_beam.io.filesystems import FileSystems

from schemas.events import Event, to_json_line

TMP_SUFFIX = ".tmp"


def partition(ts_ms: int) -> str:
    """The partition directory name of an event time: `dt=YYYY-MM-DD` (UTC)."""
    return "dt=" + datetime.fromtimestamp(ts_ms // 1000, tz=UTC).strftime("%Y-%m-%d")


def batch_path(root: str, part: str, first_id: str, last_id: str) -> str:
    return FileSystems.join(root, part, f"events-{first_id}-{last_id}.jsonl")


def lake_glob(root: str) -> str:
    """The glob that reads the whole lake (for `pipelines.replay --input`)."""
    return FileSystems.join(root, "dt=*", "*.jsonl")


def archive(root: str, first_id: str, last_id: str, events: Iterable[Event]) -> list[str]:
    """Writes one batch's events (stream order kept) to its partition files; returns their paths.

    Idempotent: the same batch (same ids, same events) rewrites the same files byte for byte.
    """
    by_part: dict[str, list[str]] = {}
    for e in events:
        by_part.setdefault(partition(e.ts), []).append(to_json_line(e))
    paths = []
    for part, lines in sorted(by_part.items()):
        final = batch_path(root, part, first_id, last_id)
        _write_atomically(final, ("\n".join(lines) + "\n").encode("utf-8"))
        paths.append(final)
    return paths


def _write_atomically(path: str, data: bytes) -> None:
    tmp = f"{path}.{uuid.uuid4().hex}{TMP_SUFFIX}"
    fh = FileSystems.create(tmp)
    try:
        fh.write(data)
        fh.flush()
        fileno = getattr(fh, "fileno", None)
        if fileno is not None:  # local files: durable before the rename makes them visible
            os.fsync(fileno())
    finally:
        fh.close()
    FileSystems.rename([tmp], [path])  # replaces an existing file (os.rename; a copy on object stores)


def files(root: str) -> list[str]:
    """Every archived file under `root`, sorted."""
    matched = FileSystems.match([lake_glob(root)])[0].metadata_list
    return sorted(m.path for m in matched)


def read_lines(root: str) -> Iterator[str]:
    """Every archived line (for tests and analysts); files in name order."""
    for path in files(root):
        with FileSystems.open(path) as fh:
            for raw in fh.read().decode("utf-8").splitlines():
                if raw:
                    yield raw
