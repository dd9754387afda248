"""The model registry: immutable versions of ONNX files plus metadata, and a `production` alias.

Layout under a root (a local directory or any filesystem Beam's `FileSystems` supports, e.g. `gs://`):

    <root>/versions/<version>/<name>          the model files (e.g. content_tower.onnx)
    <root>/versions/<version>/metadata.json   {"version", "created_at", "files": {name: sha256}, ...}
    <root>/production.json                    {"version", "files": {name: sha256}, "promoted_at"}

Publishing writes every file, then `metadata.json` (a version without it does not exist); promoting
writes the alias last. Each write goes to a temporary name first and is renamed into place, so a
reader sees an old file or a complete new one. Readers trust nothing: the alias's checksums must
equal the version's, and every file must hash to them (`verify`), or `RegistryError`.
Imports no TensorFlow: pipelines and serving read the registry without the training stack.
Issue 4 hardens the writer (crash tests, rollback, object stores whose rename is copy + delete).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas.clock import default_clock, format_instant

PRODUCTION = "production"
METADATA = "metadata.json"
VERSIONS = "versions"
ENV_CACHE = "PULSERANK_MODEL_CACHE"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CHUNK = 1 << 20
_RAW = CompressionTypes.UNCOMPRESSED  # never let a `.gz` suffix decompress a model


class RegistryError(Exception):
    """The registry holds no loadable version here: missing, incomplete, or failing its checksums."""


@dataclass(frozen=True)
class Alias:
    name: str
    version: str
    files: dict[str, str]  # name → sha256


@dataclass(frozen=True)
class Version:
    root: str
    version: str
    metadata: dict[str, Any] = field(compare=False)

    @property
    def path(self) -> str:
        return FileSystems.join(self.root, VERSIONS, self.version)

    @property
    def files(self) -> dict[str, str]:
        return dict(self.metadata.get("files", {}))

    def file_path(self, name: str) -> str:
        if name not in self.files:
            raise RegistryError(f"version {self.version} has no file {name!r} (has {sorted(self.files)})")
        return FileSystems.join(self.path, name)


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name == METADATA:
        raise RegistryError(f"invalid {kind} name {name!r}: 1-128 of [A-Za-z0-9._-], not starting with . or -")
    return name


def _is_remote(path: str) -> bool:
    return FileSystems.get_scheme(path) not in (None, "file")


def _read_json(path: str) -> Any:
    with FileSystems.open(path, compression_type=_RAW) as f:
        raw = f.read()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise RegistryError(f"{path}: not valid JSON ({exc})") from None


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with FileSystems.open(path, compression_type=_RAW) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _sync(f) -> None:
    """fsync a local file before its rename (best effort: remote channels have no fileno)."""
    try:
        f.flush()
        os.fsync(f.fileno())
    except (AttributeError, OSError, ValueError):
        pass


def _write_atomic(path: str, chunks) -> str:
    """Writes `chunks` to a temporary sibling, then renames it to `path`; returns the sha256."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    h = hashlib.sha256()
    try:
        with FileSystems.create(tmp, compression_type=_RAW) as f:
            for chunk in chunks:
                h.update(chunk)
                f.write(chunk)
            _sync(f)
        FileSystems.rename([tmp], [path])  # replaces `path`: os.rename locally, copy + delete on object stores
    except BaseException:
        if FileSystems.exists(tmp):
            FileSystems.delete([tmp])
        raise
    return h.hexdigest()


def _file_chunks(local_path: str):
    with open(local_path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _json_bytes(obj: Any) -> list[bytes]:
    return [json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"]


# -- reading ----------------------------------------------------------------------------------


def alias_path(root: str, alias: str = PRODUCTION) -> str:
    return FileSystems.join(root, f"{_check_name('alias', alias)}.json")


def read_alias(root: str, alias: str = PRODUCTION) -> Alias | None:
    """The alias, or None when it was never written (no model promoted yet)."""
    path = alias_path(root, alias)
    if not FileSystems.exists(path):
        return None
    obj = _read_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("version"), str) or not isinstance(obj.get("files"), dict):
        raise RegistryError(f"{path}: expected {{'version': str, 'files': {{name: sha256}}}}")
    return Alias(alias, obj["version"], {str(k): str(v) for k, v in obj["files"].items()})


def load_version(root: str, version: str) -> Version:
    """A published version's metadata (RegistryError if it was never completely published)."""
    path = FileSystems.join(root, VERSIONS, _check_name("version", version), METADATA)
    if not FileSystems.exists(path):
        raise RegistryError(f"version {version} is not published in {root} (no {METADATA})")
    meta = _read_json(path)
    if not isinstance(meta, dict) or meta.get("version") != version or not isinstance(meta.get("files"), dict):
        raise RegistryError(f"{path}: malformed metadata (version or files)")
    return Version(root, version, meta)


def list_versions(root: str) -> list[str]:
    """Published versions (those with a metadata.json), sorted by name."""
    pattern = FileSystems.join(root, VERSIONS, "*", METADATA)
    found = FileSystems.match([pattern])[0].metadata_list
    return sorted(m.path.replace(os.sep, "/").rsplit("/", 2)[-2] for m in found)


def _check_alias(version: Version, alias: Alias | None) -> None:
    if alias is not None and alias.files != version.files:
        raise RegistryError(f"alias {alias.name!r} names checksums that differ from version {version.version}'s "
                            f"metadata: refusing a version that changed after promotion")


def _check_file(version: Version, name: str, path: str) -> None:
    if not FileSystems.exists(path):
        raise RegistryError(f"version {version.version}: file {name} is missing ({path})")
    got = _sha256(path)
    if got != version.files[name]:
        raise RegistryError(f"version {version.version}: checksum mismatch for {name} "
                            f"(expected sha256 {version.files[name][:12]}…, got {got[:12]}…)")


def verify(version: Version, alias: Alias | None = None) -> None:
    """Every file present with its recorded sha256 (and, given the alias, the alias agrees)."""
    _check_alias(version, alias)
    for name in version.files:
        _check_file(version, name, version.file_path(name))


def cache_dir() -> str:
    return os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "pulserank", "models")


def _fetch(version: Version, name: str, cache: str | None) -> str:
    """A verified local path of one file: in place when the root is local, else a cached download
    named by its checksum (so versions share identical files and a cached copy is reused)."""
    src = version.file_path(name)
    if not _is_remote(src):
        _check_file(version, name, src)
        return src
    digest = version.files[name]
    local = os.path.join(cache or cache_dir(), f"{digest}-{name}")
    if not (os.path.exists(local) and _sha256(local) == digest):
        if not FileSystems.exists(src):
            raise RegistryError(f"version {version.version}: file {name} is missing ({src})")
        os.makedirs(os.path.dirname(local), exist_ok=True)
        tmp = f"{local}.tmp-{uuid.uuid4().hex}"
        try:
            with FileSystems.open(src, compression_type=_RAW) as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, _CHUNK)
            if (got := _sha256(tmp)) != digest:
                raise RegistryError(f"version {version.version}: checksum mismatch for {name} "
                                    f"(expected sha256 {digest[:12]}…, got {got[:12]}…)")
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return local


def production_model_path(root: str, name: str, alias: str = PRODUCTION,
                          cache: str | None = None) -> tuple[Version, str] | None:
    """(version, verified local path) of file `name` of the aliased version, or None when no
    version is aliased. Raises RegistryError when the aliased version cannot be trusted."""
    found = read_alias(root, alias)
    if found is None:
        return None
    version = load_version(root, found.version)
    _check_alias(version, found)
    for other in version.files:  # the whole version must be there, not only the file asked for
        if other != name and not FileSystems.exists(version.file_path(other)):
            raise RegistryError(f"version {version.version}: file {other} is missing")
    return version, _fetch(version, name, cache)


# -- writing (minimal; issue 4 hardens it) -----------------------------------------------------


def publish(root: str, version: str, files: Mapping[str, str], metadata: Mapping[str, Any] | None = None) -> Version:
    """Copies local `files` ({name: path}) into a new version, then writes its metadata.json.

    Versions are immutable: publishing a version that exists raises RegistryError.
    """
    _check_name("version", version)
    if not files:
        raise RegistryError("a version needs at least one file")
    if FileSystems.exists(FileSystems.join(root, VERSIONS, version, METADATA)):
        raise RegistryError(f"version {version} already exists in {root}: versions are immutable")
    base = FileSystems.join(root, VERSIONS, version)
    sums = {}
    for name, local in sorted(files.items()):
        sums[_check_name("file", name)] = _write_atomic(FileSystems.join(base, name), _file_chunks(local))
    meta = dict(metadata or {})
    meta.update(version=version, files=sums)
    meta.setdefault("created_at", format_instant(default_clock().now_ms()))
    _write_atomic(FileSystems.join(base, METADATA), _json_bytes(meta))
    return Version(root, version, meta)


def promote(root: str, version: str, alias: str = PRODUCTION) -> Alias:
    """Points `alias` at a verified published version (the alias file is written last)."""
    v = load_version(root, version)
    verify(v)
    body = {"version": version, "files": v.files, "promoted_at": format_instant(default_clock().now_ms())}
    _write_atomic(alias_path(root, alias), _json_bytes(body))
    return Alias(alias, version, v.files)
