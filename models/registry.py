"""The model registry: immutable versions of model files plus metadata, and aliases such as `production`.

Layout under a root (a local directory or any filesystem Beam's `FileSystems` supports, e.g. `gs://`):

    <root>/versions/<version>/<name>                 the model files (e.g. content_tower.onnx)
    <root>/versions/<version>/metadata.json          {"version", "created_at", "files": {name: sha256},
                                                      "metrics", "data_fingerprint", "feature_spec", ...}
    <root>/aliases/<alias>/<seq:012d>-<id>.json      the alias log: one immutable record per promotion

A record is {"alias", "seq", "id", "version", "files": {name: sha256}, "metadata_sha256",
"promoted_at", "action": promote|rollback, "previous", "previous_record", "sha256_of_body"}, where
`sha256_of_body` is the sha256 of the record without that key, as JSON with sorted keys, separators
"," and ":", UTF-8. `previous`/`previous_record` name the state a rollback returns to, so rollbacks
pop promotions like a stack. The alias is the newest record (by name) that parses and seals.

Why readers never see a half-written version or alias, even where rename is copy-then-delete:
nothing a reader trusts is ever overwritten. Files go in first, `metadata.json` last (a version
without a parsable one is not published); a promotion verifies the version, then adds a record
under a new unique name; a rollback is another record. So no reader depends on an atomic overwrite
or rename. Each object is still written to a temporary name and renamed (atomic locally; on
GCS/S3 the copy makes the object appear whole), and a store that showed a partial object would be
caught anyway: a record that does not parse or whose `sha256_of_body` fails is skipped (the record
before it still rules, i.e. the alias is the old version; a read that fails raises instead, so a
flaky store never rolls readers back), a partial `metadata.json` does not parse, a partial model
file fails its sha256. On load the record's checksums must equal the
version's metadata (and the metadata's own sha256), and the files must hash to them, else
`IntegrityError`. A crash leaves only debris readers ignore (`*.tmp-*`, a version without
metadata); running the same publish or promote again completes it.

Concurrent promoters each add their own record; none is lost or overwritten. Two that race for
the same sequence number are ordered by record name, the same for every reader; the later writer
wins, unless it sees the race lost (its record sorts first), in which case it raises
`ConflictError`. Two publishers of one version name at once are not supported (the loser's files
fail verification at promote).
Imports no TensorFlow: pipelines and serving read the registry without the training stack.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas.clock import default_clock, format_instant

log = logging.getLogger(__name__)

PRODUCTION = "production"
METADATA = "metadata.json"
VERSIONS = "versions"
ALIASES = "aliases"
SEAL = "sha256_of_body"
ENV_CACHE = "PULSERANK_MODEL_CACHE"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RECORD = re.compile(r"^(\d{12})-([0-9a-f]{12})\.json$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
_RAW = CompressionTypes.UNCOMPRESSED  # never let a `.gz` suffix decompress a model

# Crash tests install a hook here; it is called after every step that changes what is stored.
_on_step: Callable[[str], None] | None = None
_skipped: set[str] = set()  # unsealed records already warned about (once each, not per refresh)


class RegistryError(Exception):
    """The registry holds no loadable version here: missing, incomplete, or not as asked."""


class IntegrityError(RegistryError):
    """Something stored fails its checksums: changed after publishing or promotion."""


class ConflictError(RegistryError):
    """A concurrent promotion of the same alias won the race."""


@dataclass(frozen=True)
class Alias:
    """One record of an alias's log (the newest sealed one is the alias)."""

    name: str
    version: str
    files: dict[str, str]  # name → sha256
    metadata_sha256: str | None = None
    promoted_at: str | None = None
    action: str = "promote"
    previous: str | None = None  # the version a rollback from here returns to
    previous_record: str | None = None
    record: str | None = None  # this record's file name
    seq: int = 0


@dataclass(frozen=True)
class Version:
    root: str
    version: str
    metadata: dict[str, Any] = field(compare=False)
    metadata_sha256: str | None = field(default=None, compare=False)

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


@dataclass(frozen=True)
class VersionInfo:
    """One row of a listing."""

    version: str
    created_at: str | None
    metrics: dict[str, Any]
    data_fingerprint: Any
    files: dict[str, str]
    production: bool

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "created_at": self.created_at, "production": self.production,
                "metrics": self.metrics, "data_fingerprint": self.data_fingerprint, "files": self.files}


def _step(label: str) -> None:
    if _on_step is not None:
        _on_step(label)


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name == METADATA:
        raise RegistryError(f"invalid {kind} name {name!r}: 1-128 of [A-Za-z0-9._-], not starting with . or -")
    return name


def _is_remote(path: str) -> bool:
    return FileSystems.get_scheme(path) not in (None, "file")


def _basename(path: str) -> str:
    return path.replace(os.sep, "/").rstrip("/").rsplit("/", 1)[-1]


def _read_bytes(path: str) -> bytes:
    try:
        with FileSystems.open(path, compression_type=_RAW) as f:
            return f.read()
    except OSError as exc:  # Beam's BeamIOError is one; a transient failure must not look like a torn object
        raise RegistryError(f"cannot read {path}: {exc}") from None


def _is_sha(value: Any) -> bool:
    return isinstance(value, str) and _SHA256.match(value) is not None


def _is_sums(files: Any) -> bool:
    return isinstance(files, dict) and bool(files) and all(_is_sha(v) for v in files.values())


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


def _sync_dir(path: str) -> None:
    """fsync a local directory so a rename in it survives power loss (remote: nothing to do)."""
    if _is_remote(path):
        return
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_once(path: str, chunks: Iterable[bytes], label: str) -> str:
    """Writes `chunks` to a temporary sibling, then renames it to `path`; returns the sha256.

    Callers only ever write names no reader trusts yet, so the rename needs no atomic overwrite.
    """
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    h = hashlib.sha256()
    try:
        with FileSystems.create(tmp, compression_type=_RAW) as f:
            for i, chunk in enumerate(chunks):
                h.update(chunk)
                f.write(chunk)
                f.flush()
                _step(f"{label}: chunk {i} in the temporary")
            _sync(f)
        _step(f"{label}: temporary complete")
        FileSystems.rename([tmp], [path])  # os.rename locally, copy + delete on object stores
        _sync_dir(path)
        _step(f"{label}: in place")
    except BaseException:
        with contextlib.suppress(Exception):
            if FileSystems.exists(tmp):
                FileSystems.delete([tmp])
        raise
    return h.hexdigest()


def _pieces(data: bytes) -> Iterator[bytes]:
    for lo in range(0, len(data), _CHUNK):
        yield data[lo:lo + _CHUNK]


def _file_chunks(local_path: str) -> Iterator[bytes]:
    with open(local_path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _now() -> str:
    return format_instant(default_clock().now_ms())


# -- versions ---------------------------------------------------------------------------------


def version_dir(root: str, version: str) -> str:
    return FileSystems.join(root, VERSIONS, _check_name("version", version))


def load_version(root: str, version: str) -> Version:
    """A published version's metadata (RegistryError if it was never completely published)."""
    path = FileSystems.join(version_dir(root, version), METADATA)
    if not FileSystems.exists(path):
        raise RegistryError(f"version {version} is not published in {root} (no {METADATA})")
    raw = _read_bytes(path)
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise RegistryError(f"version {version} is not published in {root}: {METADATA} is not valid JSON "
                            f"(a publish still running or interrupted? {exc})") from None
    if not isinstance(meta, dict) or meta.get("version") != version or not _is_sums(meta.get("files")):
        raise RegistryError(f"{path}: malformed metadata (version, or files as {{name: sha256}})")
    return Version(root, version, meta, _sha256_bytes(raw))


def _version_names(root: str) -> list[str]:
    pattern = FileSystems.join(root, VERSIONS, "*", METADATA)
    found = FileSystems.match([pattern])[0].metadata_list
    return sorted({m.path.replace(os.sep, "/").rsplit("/", 2)[-2] for m in found})


def list_versions(root: str) -> list[str]:
    """Published versions (a metadata.json that loads), sorted by name."""
    names = []
    for name in _version_names(root):
        with contextlib.suppress(RegistryError):
            names.append(load_version(root, name).version)
    return names


def listing(root: str, alias: str = PRODUCTION) -> list[VersionInfo]:
    """Published versions, oldest first, with what a listing shows and which one `alias` names."""
    current = read_alias(root, alias)
    rows = []
    for name in _version_names(root):
        try:
            v = load_version(root, name)
        except RegistryError:
            continue  # not (yet) published: a publish running or interrupted
        metrics = v.metadata.get("metrics")
        rows.append(VersionInfo(name, v.metadata.get("created_at"), metrics if isinstance(metrics, dict) else {},
                                v.metadata.get("data_fingerprint"), v.files,
                                current is not None and current.version == name))
    return sorted(rows, key=lambda r: (str(r.created_at or ""), r.version))


def _check_alias(version: Version, alias: Alias | None) -> None:
    if alias is None:
        return
    if alias.version != version.version or alias.files != version.files:
        raise IntegrityError(f"alias {alias.name!r} names checksums that differ from version {version.version}'s "
                             f"metadata: refusing a version that changed after promotion")
    if alias.metadata_sha256 is not None and alias.metadata_sha256 != version.metadata_sha256:
        raise IntegrityError(f"version {version.version}: {METADATA} changed after promotion to {alias.name!r} "
                             f"(sha256 {str(version.metadata_sha256)[:12]}…, alias says {alias.metadata_sha256[:12]}…)")


def _check_file(version: Version, name: str, path: str) -> None:
    if not FileSystems.exists(path):
        raise IntegrityError(f"version {version.version}: file {name} is missing ({path})")
    got = _sha256(path)
    if got != version.files[name]:
        raise IntegrityError(f"version {version.version}: checksum mismatch for {name} "
                             f"(expected sha256 {version.files[name][:12]}…, got {got[:12]}…)")


def verify(version: Version, alias: Alias | None = None) -> None:
    """Every file present with its recorded sha256 (and, given the alias, the alias agrees)."""
    _check_alias(version, alias)
    for name in version.files:
        _check_file(version, name, version.file_path(name))


def new_version_name(files: Mapping[str, str | os.PathLike] | None = None, now_ms: int | None = None) -> str:
    """`20250101T120000Z-1a2b3c4d`: UTC time of the clock (names sort as made) and 8 hex of the
    files' checksums (the same model gets the same suffix), random without files."""
    ms = default_clock().now_ms() if now_ms is None else now_ms
    stamp = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y%m%dT%H%M%SZ")
    if files:
        sums = "\n".join(f"{name}={_sha256(os.fspath(path))}" for name, path in sorted(files.items()))
        digest = _sha256_bytes(sums.encode())
    else:
        digest = uuid.uuid4().hex
    return f"{stamp}-{digest[:8]}"


def publish(root: str, version: str | None, files: Mapping[str, str | os.PathLike],
            metadata: Mapping[str, Any] | None = None) -> Version:
    """Copies local `files` ({name: path}) into a new version, then writes its metadata.json.

    `metadata` is the caller's (metrics, data_fingerprint, feature_spec, ...); the registry sets
    `version` and `files` (name → sha256) and `created_at` unless given. `version` None → a fresh
    name (`new_version_name`). Versions are immutable: publishing a published one raises; an
    interrupted publish of the same name is simply written again.
    """
    if not files:
        raise RegistryError("a version needs at least one file")
    local = {_check_name("file", name): os.fspath(path) for name, path in files.items()}
    for name, path in local.items():
        if not os.path.isfile(path):
            raise RegistryError(f"file {name!r}: {path} is not a local file")
    version = _check_name("version", new_version_name(local) if version is None else version)
    meta = dict(metadata or {})
    meta.setdefault("created_at", _now())
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"metadata for version {version} is not JSON: {exc}") from None
    try:
        load_version(root, version)
    except RegistryError:
        pass  # absent, or an interrupted publish: (re)write it
    else:
        raise RegistryError(f"version {version} already exists in {root}: versions are immutable")
    base = version_dir(root, version)
    sums = {name: _write_once(FileSystems.join(base, name), _file_chunks(path), f"publish {version}/{name}")
            for name, path in sorted(local.items())}
    meta.update(version=version, files=sums)
    raw = _json_bytes(meta)
    _write_once(FileSystems.join(base, METADATA), _pieces(raw), f"publish {version}/{METADATA}")
    return Version(root, version, meta, _sha256_bytes(raw))


# -- aliases ----------------------------------------------------------------------------------


def alias_dir(root: str, alias: str = PRODUCTION) -> str:
    return FileSystems.join(root, ALIASES, _check_name("alias", alias))


def _record_names(root: str, alias: str) -> list[tuple[str, str]]:
    """(name, path) of every record-shaped object of the alias, oldest first (temporaries excluded)."""
    found = FileSystems.match([FileSystems.join(alias_dir(root, alias), "*")])[0].metadata_list
    named = ((_basename(m.path), m.path) for m in found)
    return sorted((name, path) for name, path in named if _RECORD.match(name))


def _unseal(alias: str, name: str, raw: bytes) -> Alias:
    """The record, or ValueError naming why it cannot be trusted."""
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"not valid JSON, torn or partial ({exc})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(SEAL), str):
        raise ValueError(f"no {SEAL}")
    claimed = obj.pop(SEAL)
    if _sha256_bytes(_canonical(obj)) != claimed:
        raise ValueError(f"{SEAL} does not match the body")
    seq, rid = _RECORD.match(name).groups()
    prev, prev_rec = obj.get("previous"), obj.get("previous_record")
    if not (obj.get("alias") == alias and obj.get("seq") == int(seq) and obj.get("id") == rid
            and isinstance(obj.get("version"), str) and _NAME.match(obj["version"])
            and _is_sums(obj.get("files")) and _is_sha(obj.get("metadata_sha256"))
            and obj.get("action") in ("promote", "rollback") and isinstance(obj.get("promoted_at"), str)
            and (prev is None or (isinstance(prev, str) and _NAME.match(prev)))
            and (prev_rec is None or (isinstance(prev_rec, str) and _RECORD.match(prev_rec)))):
        raise ValueError("sealed, but not a record of this alias at this name")
    return Alias(alias, obj["version"], dict(obj["files"]), obj["metadata_sha256"], obj["promoted_at"], obj["action"],
                 prev, prev_rec, name, int(seq))


def _load_record(alias: str, name: str, path: str) -> Alias | None:
    """The record at `path`, or None (warned once) when it does not parse or seal: a torn write."""
    try:
        return _unseal(alias, name, _read_bytes(path))
    except ValueError as exc:
        if (why := f"{path}: {exc}") not in _skipped:
            _skipped.add(why)
            log.warning("registry: skipping alias record %s", why)
        return None


def read_alias(root: str, alias: str = PRODUCTION) -> Alias | None:
    """The alias (its newest sealed record), or None when it was never promoted."""
    for name, path in reversed(_record_names(root, alias)):
        if (found := _load_record(alias, name, path)) is not None:
            return found
    return None


def history(root: str, alias: str = PRODUCTION) -> list[Alias]:
    """Every sealed record of the alias, oldest first (the last is the alias)."""
    return [r for name, path in _record_names(root, alias) if (r := _load_record(alias, name, path)) is not None]


def _new_record_id() -> str:
    return uuid.uuid4().hex[:12]


def _append(root: str, alias: str, version: Version, action: str, previous: str | None,
            previous_record: str | None) -> Alias:
    seq = max((int(name[:12]) for name, _ in _record_names(root, alias)), default=0) + 1
    rid = _new_record_id()
    name = f"{seq:012d}-{rid}.json"
    body = {"alias": alias, "seq": seq, "id": rid, "version": version.version, "files": version.files,
            "metadata_sha256": version.metadata_sha256, "promoted_at": _now(), "action": action,
            "previous": previous, "previous_record": previous_record}
    sealed = _json_bytes({**body, SEAL: _sha256_bytes(_canonical(body))})
    path = FileSystems.join(alias_dir(root, alias), name)
    _write_once(path, _pieces(sealed), f"{action} {alias} → {version.version}")
    now = read_alias(root, alias)
    if now is not None and now.seq == seq and now.record != name:
        raise ConflictError(f"a concurrent promotion of {alias!r} won: it names {now.version}, not {version.version}")
    return Alias(alias, version.version, version.files, version.metadata_sha256, body["promoted_at"], action,
                 previous, previous_record, name, seq)


def promote(root: str, version: str, alias: str = PRODUCTION) -> Alias:
    """Points `alias` at a verified published version by adding a record (a no-op if it already does)."""
    v = load_version(root, version)
    verify(v)
    current = read_alias(root, alias)
    if current is not None and current.version == version:
        _check_alias(v, current)
        return current
    return _append(root, alias, v, "promote", current.version if current else None,
                   current.record if current else None)


def rollback(root: str, alias: str = PRODUCTION) -> Alias:
    """Points `alias` back at the version promoted before the current one (verified again)."""
    current = read_alias(root, alias)
    if current is None:
        raise RegistryError(f"nothing to roll back: {alias!r} was never promoted in {root}")
    if current.previous_record is None:
        raise RegistryError(f"nothing to roll back to: {current.version} is the first version {alias!r} named")
    path = FileSystems.join(alias_dir(root, alias), current.previous_record)
    target = _load_record(alias, current.previous_record, path) if FileSystems.exists(path) else None
    if target is None:
        raise IntegrityError(f"cannot roll back {alias!r}: its previous record {current.previous_record} is missing "
                             f"or fails its checksum")
    v = load_version(root, target.version)
    verify(v, target)
    return _append(root, alias, v, "rollback", target.previous, target.previous_record)


# -- loading ----------------------------------------------------------------------------------


def resolve(root: str, alias: str = PRODUCTION) -> Version | None:
    """The aliased version with every file verified against the alias, or None if never promoted."""
    found = read_alias(root, alias)
    if found is None:
        return None
    version = load_version(root, found.version)
    verify(version, found)
    return version


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
            raise IntegrityError(f"version {version.version}: file {name} is missing ({src})")
        os.makedirs(os.path.dirname(local), exist_ok=True)
        tmp = f"{local}.tmp-{uuid.uuid4().hex}"
        try:
            with FileSystems.open(src, compression_type=_RAW) as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, _CHUNK)
            if (got := _sha256(tmp)) != digest:
                raise IntegrityError(f"version {version.version}: checksum mismatch for {name} "
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
            raise IntegrityError(f"version {version.version}: file {other} is missing")
    return version, _fetch(version, name, cache)
