"""`ram://` for Beam: TensorFlow's in-memory filesystem behind Beam's `FileSystems`, so one non-local
scheme is known to both Beam and TensorFlow, as `gs://` is on Dataflow, without a bucket.

`RamFileSystem` behaves like an object store (Beam's GCS filesystem is the model): no directories
(`has_dirs` False, a glob lists every object under its prefix), an object appears whole when its
writer closes, rename is copy then delete. The store lives in this process only (TensorFlow's
`RamFileSystem`), shared by Beam's in-process runner and by `tf.io.gfile`. `install()` makes
TensorFlow's directory renames on `ram://` move every object, as its GCS filesystem does.

`python -m tests.ram_filesystem <data dir> <registry> <out.json> [train flags]` is a launcher for
`pipelines.train` in a fresh process (TFT cannot be torn down cleanly, FIELD-NOTES): it copies the
data dir's `*.jsonl` into `ram://input/`, trains with `--input` and `--workdir` on `ram://`, and
writes what ended up under `ram://work` to `out.json`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys

import tensorflow as tf
from apache_beam.io.filesystem import BeamIOError, CompressedFile, CompressionTypes, FileMetadata, FileSystem

gfile = tf.io.gfile
PREFIX = "ram://"


class _Download(io.BytesIO):
    mode = "rb"  # Beam's CompressedFile asks


class _Upload(io.BytesIO):
    """Buffers a write; the object appears at `path` whole, on close (as on GCS)."""

    mode = "wb"

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def close(self) -> None:
        if not self.closed:
            parent = self.path.rsplit("/", 1)[0]
            if parent != PREFIX.rstrip("/"):
                gfile.makedirs(parent)
            with gfile.GFile(self.path, "wb") as f:
                f.write(self.getvalue())
        super().close()


class RamFileSystem(FileSystem):
    @classmethod
    def scheme(cls) -> str:
        return "ram"

    def join(self, basepath: str, *paths: str) -> str:
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path: str) -> None:
        gfile.makedirs(path)  # no error when it exists: object stores have no directories to clash

    def has_dirs(self) -> bool:
        return False

    def _files(self):
        for folder, _, names in gfile.walk(PREFIX):
            for name in names:
                yield f"{folder.rstrip('/')}/{name}"

    def _list(self, dir_or_prefix: str):
        for path in self._files():
            if path.startswith(dir_or_prefix):
                yield self.metadata(path)

    def _open(self, raw, compression_type):
        return raw if compression_type == CompressionTypes.UNCOMPRESSED else CompressedFile(raw, compression_type)

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        return self._open(_Upload(path), FileSystem._get_compression_type(path, compression_type))

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        if not gfile.exists(path) or gfile.isdir(path):
            raise BeamIOError("open", {path: FileNotFoundError(path)})
        with gfile.GFile(path, "rb") as f:
            data = f.read()
        return self._open(_Download(data), FileSystem._get_compression_type(path, compression_type))

    def copy(self, source_file_names, destination_file_names):
        for src, dst in zip(source_file_names, destination_file_names, strict=True):
            with self.open(src, compression_type=CompressionTypes.UNCOMPRESSED) as fin, \
                    self.create(dst, compression_type=CompressionTypes.UNCOMPRESSED) as fout:
                fout.write(fin.read())

    def rename(self, source_file_names, destination_file_names):
        self.copy(source_file_names, destination_file_names)
        self.delete(source_file_names)

    def exists(self, path: str) -> bool:
        return gfile.exists(path)

    def size(self, path: str) -> int:
        return gfile.stat(path).length

    def last_updated(self, path: str) -> float:
        return gfile.stat(path).mtime_nsec / 1e9

    def checksum(self, path: str) -> str:
        with gfile.GFile(path, "rb") as f:
            return hashlib.md5(f.read()).hexdigest()

    def metadata(self, path: str) -> FileMetadata:
        if not gfile.exists(path):
            raise BeamIOError("metadata", {path: FileNotFoundError(path)})
        stat = gfile.stat(path)
        return FileMetadata(path, stat.length, stat.mtime_nsec / 1e9)

    def delete(self, paths) -> None:
        missing = {}
        for path in paths:
            if gfile.isdir(path):
                gfile.rmtree(path)
            elif gfile.exists(path):
                gfile.remove(path)
            else:
                missing[path] = FileNotFoundError(path)
        if missing:
            raise BeamIOError("delete", missing)


_tf_rename = gfile.rename


def _rename_like_gcs(src: str, dst: str, overwrite: bool = False) -> None:
    """TensorFlow's `ram://` renames a directory's entry and drops its children; its GCS filesystem
    renames every object under the directory (`GcsFileSystem::RenameFile`), and TFT's
    `WriteTransformFn` relies on that. This gives `ram://` the GCS behaviour."""
    if not (src.startswith(PREFIX) and gfile.isdir(src)):
        _tf_rename(src, dst, overwrite=overwrite)
        return
    for folder, _, names in gfile.walk(src):
        rel = folder[len(src):].strip("/")
        gfile.makedirs(f"{dst}/{rel}".rstrip("/"))
        for name in names:
            target = "/".join(p for p in (dst, rel, name) if p)
            gfile.copy(f"{folder.rstrip('/')}/{name}", target, overwrite=overwrite)
    gfile.rmtree(src)


def install() -> None:
    """Directory renames on `ram://` as on `gs://` (see `_rename_like_gcs`); the filesystem itself is
    registered with Beam by importing this module."""
    gfile.rename = _rename_like_gcs


def upload(local_dir: str, dest: str, pattern: str = "*.jsonl") -> list[str]:
    """Copies `local_dir/pattern` into `dest` (a `ram://` prefix); returns the new paths."""
    out = []
    for src in sorted(gfile.glob(os.path.join(local_dir, pattern))):
        target = f"{dest.rstrip('/')}/{os.path.basename(src)}"
        gfile.makedirs(dest)
        gfile.copy(src, target, overwrite=True)
        out.append(target)
    return out


def _train_child(data_dir: str, registry_root: str, out: str, flags: list[str]) -> int:
    import tests.registry_fixtures  # noqa: F401  (registers prtorn://, a registry root on local disk)
    from pipelines import train

    install()
    upload(data_dir, "ram://input")
    code = train.main(["--input", "ram://input/*.jsonl", "--workdir", "ram://work", "--registry", registry_root,
                       *flags])
    listing = {path: gfile.stat(path).length for path in RamFileSystem(None)._files() if path.startswith("ram://work/")}
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"exit": code, "work": listing}, f)
    return code


if __name__ == "__main__":
    code = _train_child(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # TFT segfaults at interpreter teardown (FIELD-NOTES)
