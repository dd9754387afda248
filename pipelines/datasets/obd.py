"""The Open Bandit Dataset sample as Pulserank event logs: impressions, clicks, items, priors.

Where the data comes from: the Open Bandit Dataset (Saito et al., "Open Bandit Dataset and
Pipeline", NeurIPS 2021 Datasets and Benchmarks), logged on ZOZOTOWN's fashion e-commerce
recommendation widget by two policies, uniform `random` and Bernoulli Thompson sampling `bts`,
in three campaigns (`all`, `men`, `women`). The 10,000-row sample of each (policy, campaign)
ships in the sdist `obp==0.5.7` (`obp/dataset/obd/{policy}/{campaign}/{campaign}.csv`, with
`item_context.csv`), together with the production BTS priors (`obp/policy/conf/prior_bts.yaml`).
The sdist is fetched with `pip download --no-deps --no-binary=:all: --ignore-requires-python`
and read as a tar archive (obp does not install on Python 3.11 and is never installed).
`--from PATH` takes that tarball or a directory holding an extracted `obd/` tree (the
`{policy}/{campaign}/` directories; `prior_bts.yaml` is used when found beside it, in it, or at
its sdist place, and skipped otherwise).

License: the OBD is released by ZOZO under CC BY 4.0 (obp itself is Apache-2.0). Fetch, do not
commit: the converted logs are derived data and cheap to rebuild.

What the conversion decides, and why:
- Users: OBD has no user ids. Each row carries four hashed user features; a user here is a
  distinct combination of them, `obd-u-{sha256(f0|f1|f2|f3)[:16]}` (the hashes are the same
  across policies and campaigns, so the same combination is the same user everywhere). These
  "users" are coarse cohorts (a few hundred per file), not people.
- Items: item ids restart at 0 in each campaign, so they are namespaced `obd-{campaign}-{id}`.
  One `item` event per (campaign, item): `categories` are `item_feature_{1,2,3}=<hash>`
  (category-like hashed labels) and `item_feature_0` (a numeric feature) is kept as an
  attribute, with `campaign`. The hashes are salted per policy file (the same category has a
  different hash under `random` and `bts`), so the `random` file's labels are used; the `bts`
  file must list the same items with the same `item_feature_0`.
- Every row → an `impression` (event id `obd-{policy}-{campaign}-{row}`, request id
  `obd-{policy}-{campaign}-{row}-req` since OBD does not group rows into requests, `variant` =
  the logging policy, `context.segment` = the campaign, `propensity` = the logging policy's
  probability of this item in this slot). OBD's slots 1..3 become `position` 0..2, the 0-based
  rank of the contract. Every clicked row also → a `click` 1 ms later (event id `...-click`,
  same user, item, request, position, variant and segment).
- The per-row user-item affinity columns are not carried (the contract's context holds at most
  32 scalar keys; they are recomputable from the logs).
- Timestamps keep millisecond precision (microseconds truncated); items are stamped 1 ms before
  the earliest logged instant so the catalog precedes every impression.

Output (`out/`): `impressions/{policy}_{campaign}.jsonl` and `clicks/{policy}_{campaign}.jsonl`
(separate files so a replay can glob either; each in the source's time order), `items.jsonl`,
and `bts_priors.json` = `{campaign: {item_id: {"alpha": a, "beta": b}}}` keyed by the namespaced
item id (the Beta prior the production BTS policy started from).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.datasets import FetchOptions
from pipelines.datasets._io import (
    DatasetFormatError,
    DatasetUnavailable,
    EventLogWriter,
    pip_download,
    sha256_file,
    write_manifest,
)
from schemas.clock import InstantError, parse_instant

NAME = "obd"
OBP_SPEC = "obp==0.5.7"
OBP_PIP_ARGS = ("--no-binary=:all:", "--ignore-requires-python")
POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
PRIORS_FILE = "bts_priors.json"
LICENSE = "Open Bandit Dataset: CC BY 4.0 (ZOZO, Inc.); fetch, do not commit"
_USER_FEATURES = tuple(f"user_feature_{i}" for i in range(4))
_LOG_COLUMNS = ("", "timestamp", "item_id", "position", "click", "propensity_score", *_USER_FEATURES)
_ITEM_COLUMNS = ("item_id", "item_feature_0", "item_feature_1", "item_feature_2", "item_feature_3")


@dataclass(frozen=True)
class Row:
    """One logged impression (the columns used; `line` for error messages)."""

    line: int
    row: int
    ts_ms: int
    item: int
    slot: int  # OBD's 1-based slot
    click: bool
    propensity: float
    user_id: str


@dataclass(frozen=True)
class Item:
    line: int
    item: int
    feature_0: float
    labels: tuple[str, str, str]


class _Source:
    """The files of one OBD copy, by path relative to the `obd/` directory."""

    description: str

    def read(self, rel: str) -> tuple[str, str]:
        """(text, display path) of `rel`, e.g. `random/all/all.csv`."""
        raise NotImplementedError

    def priors(self) -> tuple[str, str] | None:
        raise NotImplementedError


class _TarSource(_Source):
    """The sdist (or any tarball with an `obd/` tree), read into memory once (about 25 MB)."""

    def __init__(self, path: Path, description: str) -> None:
        self.path, self.description = path, description
        marker = "obd/random/all/all.csv"
        try:
            with tarfile.open(path) as tar:
                members = [m for m in tar.getmembers() if m.isfile()]
                roots = sorted(m.name[: -len(marker)] for m in members if m.name.endswith(marker))
                if not roots:
                    raise DatasetUnavailable(_unusable(path))
                self.root = roots[0] + "obd/"
                priors = sorted(m.name for m in members if m.name.endswith("policy/conf/prior_bts.yaml"))
                self.prior = priors[0] if priors else None
                self.blobs: dict[str, bytes] = {}
                for m in members:
                    if m.name.startswith(self.root) or m.name == self.prior:
                        fh = tar.extractfile(m)
                        if fh is not None:
                            self.blobs[m.name] = fh.read()
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise DatasetUnavailable(f"{_unusable(path)}; it is not a readable tar archive: {exc}") from None

    def read(self, rel: str) -> tuple[str, str]:
        name = self.root + rel
        if name not in self.blobs:
            raise DatasetUnavailable(f"{self.path} has no {name}")
        return _decode(self.blobs[name], f"{self.path}!{name}"), f"{self.path}!{name}"

    def priors(self) -> tuple[str, str] | None:
        if self.prior is None:
            return None
        name = f"{self.path}!{self.prior}"
        return _decode(self.blobs[self.prior], name), name


class _DirSource(_Source):
    def __init__(self, path: Path) -> None:
        self.description = str(path)
        candidates = [path, path / "obd", path / "obp" / "dataset" / "obd",
                      *sorted(path.glob("*/obp/dataset/obd"))]
        root = next((c for c in candidates if (c / "random" / "all" / "all.csv").is_file()), None)
        if root is None:
            raise DatasetUnavailable(_unusable(path))
        self.root = root
        places = [path / "prior_bts.yaml", root / "prior_bts.yaml",
                  root.parent.parent / "policy" / "conf" / "prior_bts.yaml"]
        self.prior = next((p for p in places if p.is_file()), None)

    def read(self, rel: str) -> tuple[str, str]:
        p = self.root / rel
        if not p.is_file():
            raise DatasetUnavailable(f"{self.description}: missing {p}")
        return _decode(p.read_bytes(), str(p)), str(p)

    def priors(self) -> tuple[str, str] | None:
        return None if self.prior is None else (_decode(self.prior.read_bytes(), str(self.prior)), str(self.prior))


def _decode(blob: bytes, name: str) -> str:
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(name, blob[: exc.start].count(b"\n") + 1, "not UTF-8 text") from None


def _unusable(src: Path) -> str:
    return (
        f"--from {src}: expected the {OBP_SPEC} sdist tarball or a directory holding an extracted "
        f"obd/ tree (random/all/all.csv, ...)" + ("" if src.exists() else " (no such file or directory)")
    )


def _open_source(options: FetchOptions) -> _Source:
    if options.source is None:
        sdist = pip_download(OBP_SPEC, options.cache_dir, *OBP_PIP_ARGS)
        return _TarSource(sdist, f"{OBP_SPEC} ({sdist.name})")
    src = Path(options.source)
    if src.is_dir():
        return _DirSource(src)
    if src.is_file():
        return _TarSource(src, str(src))
    raise DatasetUnavailable(_unusable(src))


# -- parsing ------------------------------------------------------------------------------------


def _records(text: str, name: str, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column: field}) per CSV record, checking the header and field counts."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DatasetFormatError(name, 1, "empty file") from None
    except csv.Error as exc:
        raise DatasetFormatError(name, reader.line_num, f"unreadable CSV: {exc}") from None
    missing = [c or "(index)" for c in required if c not in header]
    if missing:
        raise DatasetFormatError(name, 1, f"missing columns {missing}")
    index = {c: header.index(c) for c in required}
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DatasetFormatError(name, reader.line_num, f"unreadable CSV: {exc}") from None
        if not fields:
            continue
        if len(fields) != len(header):
            raise DatasetFormatError(name, reader.line_num, f"expected {len(header)} fields, got {len(fields)}")
        yield reader.line_num, {c: fields[i] for c, i in index.items()}


def _int(value: str, name: str, line: int, column: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetFormatError(name, line, f"{column or 'index'}: not a whole number: {value[:40]!r}") from None


def _float(value: str, name: str, line: int, column: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise DatasetFormatError(name, line, f"{column}: not a number: {value[:40]!r}") from None
    if f != f or f in (float("inf"), float("-inf")):
        raise DatasetFormatError(name, line, f"{column}: not a finite number: {value[:40]!r}")
    return f


def user_id(features: tuple[str, ...]) -> str:
    """The pseudo-user of a user-feature combination (OBD has no user ids)."""
    return "obd-u-" + hashlib.sha256("|".join(features).encode()).hexdigest()[:16]


def parse_log(text: str, name: str, n_items: int) -> list[Row]:
    rows: list[Row] = []
    seen: dict[int, int] = {}
    for line, rec in _records(text, name, _LOG_COLUMNS):
        row = _int(rec[""], name, line, "")
        if row < 0:
            raise DatasetFormatError(name, line, f"row index must be 0 or more, got {row}")
        if row in seen:
            raise DatasetFormatError(name, line, f"row index {row} repeats line {seen[row]}")
        seen[row] = line
        try:
            ts = parse_instant(rec["timestamp"].strip())
        except InstantError as exc:
            raise DatasetFormatError(name, line, f"timestamp: {exc}") from None
        item = _int(rec["item_id"], name, line, "item_id")
        if not 0 <= item < n_items:
            raise DatasetFormatError(name, line, f"item_id {item} is not in item_context.csv (0..{n_items - 1})")
        slot = _int(rec["position"], name, line, "position")
        if slot < 1:
            raise DatasetFormatError(name, line, f"position must be 1 or more, got {slot}")
        click = _int(rec["click"], name, line, "click")
        if click not in (0, 1):
            raise DatasetFormatError(name, line, f"click must be 0 or 1, got {click}")
        propensity = _float(rec["propensity_score"], name, line, "propensity_score")
        if not 0.0 < propensity <= 1.0:
            raise DatasetFormatError(name, line, f"propensity_score must be in (0, 1], got {propensity:g}")
        features = tuple(rec[c].strip() for c in _USER_FEATURES)
        if not all(features):
            raise DatasetFormatError(name, line, "empty user feature")
        rows.append(Row(line, row, ts, item, slot, bool(click), propensity, user_id(features)))
    if not rows:
        raise DatasetFormatError(name, 2, "no rows")
    return rows


def parse_items(text: str, name: str) -> list[Item]:
    items: list[Item] = []
    for line, rec in _records(text, name, _ITEM_COLUMNS):
        item = _int(rec["item_id"], name, line, "item_id")
        if item != len(items):
            raise DatasetFormatError(name, line, f"expected item_id {len(items)} (ids run 0..n-1), got {item}")
        labels = tuple(rec[f"item_feature_{i}"].strip() for i in (1, 2, 3))
        if not all(labels):
            raise DatasetFormatError(name, line, "empty item feature")
        f0 = _float(rec["item_feature_0"], name, line, "item_feature_0")
        items.append(Item(line, item, f0, (labels[0], labels[1], labels[2])))
    if not items:
        raise DatasetFormatError(name, 2, "no items")
    return items


def parse_priors(text: str, name: str, n_items: dict[str, int]) -> dict[str, dict[str, dict[str, float]]]:
    """prior_bts.yaml → {campaign: {namespaced item id: {alpha, beta}}}."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise DatasetFormatError(name, mark.line + 1 if mark else 1, f"not valid YAML: {exc}") from None
    out: dict[str, dict[str, dict[str, float]]] = {}
    for campaign in CAMPAIGNS:
        spec = doc.get(campaign) if isinstance(doc, dict) else None
        alpha = spec.get("alpha") if isinstance(spec, dict) else None
        beta = spec.get("beta") if isinstance(spec, dict) else None
        n = n_items[campaign]
        if not (isinstance(alpha, list) and isinstance(beta, list) and len(alpha) == len(beta) == n):
            raise DatasetFormatError(name, 1, f"{campaign}: expected alpha and beta lists of {n} numbers")
        try:
            pairs = [(float(a), float(b)) for a, b in zip(alpha, beta, strict=True)]
        except (TypeError, ValueError):
            raise DatasetFormatError(name, 1, f"{campaign}: alpha and beta must be numbers") from None
        if any(not (a > 0 and b > 0) for a, b in pairs):
            raise DatasetFormatError(name, 1, f"{campaign}: alpha and beta must be positive")
        out[campaign] = {f"obd-{campaign}-{i}": {"alpha": a, "beta": b} for i, (a, b) in enumerate(pairs)}
    return out


# -- events -------------------------------------------------------------------------------------


def impression_event(policy: str, campaign: str, r: Row) -> dict[str, Any]:
    eid = f"obd-{policy}-{campaign}-{r.row}"
    return {
        "event_id": eid,
        "ts": r.ts_ms,
        "user_id": r.user_id,
        "type": "impression",
        "item_id": f"obd-{campaign}-{r.item}",
        "context": {"segment": campaign},
        "request_id": f"{eid}-req",
        "position": r.slot - 1,
        "propensity": r.propensity,
        "variant": policy,
    }


def click_event(policy: str, campaign: str, r: Row) -> dict[str, Any]:
    """The click that followed an impression: same request, 1 ms later, no propensity."""
    ev = impression_event(policy, campaign, r)
    del ev["propensity"]
    return {**ev, "event_id": f"{ev['event_id']}-click", "ts": r.ts_ms + 1, "type": "click"}


def item_event(campaign: str, item: Item, ts_ms: int) -> dict[str, Any]:
    return {
        "event_id": f"obd-item-{campaign}-{item.item}",
        "ts": ts_ms,
        "type": "item",
        "item_id": f"obd-{campaign}-{item.item}",
        "attributes": {
            "categories": [f"item_feature_{i}={label}" for i, label in enumerate(item.labels, start=1)],
            "item_feature_0": item.feature_0,
            "campaign": campaign,
        },
    }


def write(out: Path, options: FetchOptions) -> dict[str, Any]:
    """Convert the OBD sample into impression, click and item logs plus the BTS priors."""
    source = _open_source(options)
    catalog: dict[str, list[Item]] = {}
    for campaign in CAMPAIGNS:
        canonical = parse_items(*source.read(f"{POLICIES[0]}/{campaign}/item_context.csv"))
        for policy in POLICIES[1:]:
            text, name = source.read(f"{policy}/{campaign}/item_context.csv")
            _check_same_items(canonical, parse_items(text, name), name)
        catalog[campaign] = canonical
    logs: dict[tuple[str, str], list[Row]] = {}
    for policy in POLICIES:
        for campaign in CAMPAIGNS:
            text, name = source.read(f"{policy}/{campaign}/{campaign}.csv")
            logs[policy, campaign] = parse_log(text, name, len(catalog[campaign]))
    catalog_ms = min(r.ts_ms for rows in logs.values() for r in rows) - 1

    files: dict[str, int] = {}
    types: Counter[str] = Counter()
    with EventLogWriter(out / "items.jsonl") as w:
        for campaign in CAMPAIGNS:
            for item in catalog[campaign]:
                w.write(item_event(campaign, item, catalog_ms))
        files["items.jsonl"], types = w.count, types + w.types
    for (policy, campaign), rows in logs.items():
        stem = f"{policy}_{campaign}.jsonl"
        with EventLogWriter(out / "impressions" / stem) as w:
            for r in rows:
                w.write(impression_event(policy, campaign, r))
            files[f"impressions/{stem}"], types = w.count, types + w.types
        with EventLogWriter(out / "clicks" / stem) as w:
            for r in rows:
                if r.click:
                    w.write(click_event(policy, campaign, r))
            files[f"clicks/{stem}"], types = w.count, types + w.types

    extra: dict[str, Any] = {"source": source.description, "license": LICENSE, "counts": dict(sorted(types.items()))}
    prior_text = source.priors()
    if prior_text is None:
        (out / PRIORS_FILE).unlink(missing_ok=True)
        extra["priors"] = None
    else:
        priors = parse_priors(*prior_text, {c: len(items) for c, items in catalog.items()})
        (out / PRIORS_FILE).write_text(json.dumps(priors, indent=1) + "\n", encoding="utf-8")
        extra["priors"] = {"file": PRIORS_FILE, "sha256": sha256_file(out / PRIORS_FILE)}
    return write_manifest(out, NAME, files, **extra)


def _check_same_items(canonical: list[Item], other: list[Item], name: str) -> None:
    """The policies' item contexts must describe the same items (their hashes differ by salt)."""
    if len(other) != len(canonical):
        raise DatasetFormatError(name, 1, f"{len(other)} items, but the {POLICIES[0]} policy has {len(canonical)}")
    for a, b in zip(canonical, other, strict=True):
        if a.feature_0 != b.feature_0:
            reason = f"item {b.item}: item_feature_0 {b.feature_0!r} differs from {POLICIES[0]}'s {a.feature_0!r}"
            raise DatasetFormatError(name, b.line, reason)
