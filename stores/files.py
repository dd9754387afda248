"""Files the launch machine reads and writes, on local disk or any filesystem Beam's `FileSystems` knows.

`pipelines.train` (and its deploy stage) read event logs and the preprocessing's outputs on the
launch machine; on Dataflow those live in `gs://`, where the workers write them. A path with a
scheme (`gs://`, `s3://`, …) goes through `FileSystems`; a plain local path keeps the exact
behaviour of `glob` and `open` it always had (`~` expanded, `*` skipping hidden files,
directories left out), so local runs do not change.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import os
import re
import shutil
from collections.abc import Iterator
from typing import BinaryIO

_SCHEME = re.compile(r"[a-zA-Z][-a-zA-Z0-9+.]*://")  # Beam's `FileSystems.URI_SCHEMA_PATTERN`
_CHUNK = 1 << 20


def _beam():
    """Beam's `FileSystems` and the no-decompression flag, imported only for remote paths (~2 s)."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems, CompressionTypes.UNCOMPRESSED  # decompression is the caller's choice, not the suffix's


def is_local(path: str) -> bool:
    """True for a plain path on this machine (no `scheme://`), as Beam's `FileSystems.get_scheme` sees it."""
    return _SCHEME.match(path.strip()) is None


def join(base: str, *parts: str) -> str:
    """`os.path.join` locally, the filesystem's own join for `gs://…` and the like."""
    return os.path.join(base, *parts) if is_local(base) else _beam()[0].join(base, *parts)


def match_files(pattern: str) -> list[str]:
    """The files one glob matches, sorted ([] when none). Remote globs use Beam's syntax (`*` stays
    within a path segment, `**` crosses them), as the Beam read of the same `--input` does."""
    if is_local(pattern):
        return sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    found = _beam()[0].match([pattern])[0].metadata_list  # a failed listing raises BeamIOError (an OSError)
    return sorted(m.path for m in found if not m.path.endswith("/"))  # "folder" placeholder objects


def _open_raw(path: str) -> BinaryIO:
    if is_local(path):
        return open(path, "rb")
    filesystems, raw = _beam()
    return filesystems.open(path, compression_type=raw)


@contextlib.contextmanager
def open_read(path: str, decompress: bool = False) -> Iterator[BinaryIO]:
    """A binary reader of `path`; with `decompress`, a `.gz` file is read decompressed."""
    with _open_raw(path) as raw:
        if decompress and path.endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                yield f
        else:
            yield raw


def makedirs(path: str) -> None:
    """Creates a work directory; on object stores (no directories) there is nothing to create."""
    if is_local(path):
        os.makedirs(path, exist_ok=True)
        return
    with contextlib.suppress(OSError):  # Beam raises when it exists; GCS has no directories to make
        _beam()[0].mkdirs(path)


def upload_dir(local_dir: str, dest: str) -> list[str]:
    """Copies every file under `local_dir` to the same relative path under `dest`; returns the
    destination paths. For outputs made by libraries that write only to local disk (ONNX, plots)."""
    written = []
    for folder, _, names in os.walk(local_dir):
        for name in sorted(names):
            src = os.path.join(folder, name)
            rel = os.path.relpath(src, local_dir).split(os.sep)
            target = join(dest, *rel)
            if is_local(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(src, target)
            else:
                filesystems, raw = _beam()
                with open(src, "rb") as fin, filesystems.create(target, compression_type=raw) as fout:
                    while chunk := fin.read(_CHUNK):
                        fout.write(chunk)
            written.append(target)
    return written
