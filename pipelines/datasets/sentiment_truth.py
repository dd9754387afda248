"""Human-scored sentiment ground truth, to measure the sentiment scorers against people.

Where it comes from: the data of Hutto & Gilbert, "VADER: A Parsimonious Rule-based Model for
Sentiment Analysis of Social Media Text" (ICWSM 2014), shipped in the sdist
`vaderSentiment==3.3.2` as `additional_resources/hutto_ICWSM_2014.tar.gz`. The sdist is fetched
with `pip download --no-deps --no-binary=:all:` into the cache and read as an archive; nothing
is installed or extracted to disk.

Each `*_GroundTruth.txt` line is `id<TAB>mean human score<TAB>text`; the mean is over about
20 raters on a -4 (extremely negative) to +4 (extremely positive) scale. Scores are returned as
given: correlations do not care about the scale.
"""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path

from pipelines.datasets._io import DatasetFormatError, DatasetUnavailable, pip_download

VADER_SPEC = "vaderSentiment==3.3.2"
VADER_PIP_ARGS = ("--no-binary=:all:",)
INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
GROUND_TRUTH = {
    "amazon": "amazonReviewSnippets_GroundTruth.txt",  # 3,708 product review sentences
    "movies": "movieReviewSnippets_GroundTruth.txt",  # 10,605 movie review sentences
    "nyt": "nytEditorialSnippets_GroundTruth.txt",  # 5,190 opinion-article sentences
    "tweets": "tweets_GroundTruth.txt",  # 4,200 tweets
}


def load_amazon_snippets(cache_dir: Path) -> list[tuple[float, str]]:
    """(mean human score, text) for the Amazon review snippets."""
    return load_ground_truth(cache_dir)["amazon"]


def load_ground_truth(cache_dir: Path) -> dict[str, list[tuple[float, str]]]:
    """Every ground-truth file of the archive, by short name (amazon, movies, nyt, tweets)."""
    sdist = pip_download(VADER_SPEC, cache_dir, *VADER_PIP_ARGS)
    inner = _inner_archive(sdist)
    out: dict[str, list[tuple[float, str]]] = {}
    with tarfile.open(fileobj=io.BytesIO(inner), mode="r:gz") as tar:
        members = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
        for short, filename in GROUND_TRUTH.items():
            if filename not in members:
                raise DatasetFormatError(f"{sdist}!{INNER_ARCHIVE}", 0, f"has no {filename}")
            fh = tar.extractfile(members[filename])
            assert fh is not None  # a regular file
            out[short] = parse_ground_truth(fh.read(), f"{sdist.name}!{filename}")
    return out


def _inner_archive(sdist: Path) -> bytes:
    try:
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.endswith("/" + INNER_ARCHIVE):
                    fh = tar.extractfile(member)
                    assert fh is not None
                    return fh.read()
    except (OSError, tarfile.TarError) as exc:
        raise DatasetUnavailable(f"{sdist}: not a readable sdist of {VADER_SPEC}: {exc}") from None
    raise DatasetUnavailable(f"{sdist}: no {INNER_ARCHIVE} inside; expected the sdist of {VADER_SPEC}")


def parse_ground_truth(blob: bytes, name: str) -> list[tuple[float, str]]:
    """`id<TAB>score<TAB>text` lines (CRLF, UTF-8) → (score, text); a malformed line raises."""
    rows: list[tuple[float, str]] = []
    for i, line in enumerate(blob.decode("utf-8").split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3 or not parts[2].strip():
            raise DatasetFormatError(name, i, "expected id<TAB>score<TAB>text")
        try:
            score = float(parts[1])
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise DatasetFormatError(name, i, f"score {parts[1]!r} is not a finite number")
        rows.append((score, parts[2]))
    return rows
