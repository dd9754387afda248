"""`pulserank train` with `--input`, `--workdir` and `--registry` on a non-local filesystem, as on Dataflow.

No bucket here, so `ram://` (tests/ram_filesystem.py) stands in for `gs://`: a scheme Beam's
`FileSystems` and TensorFlow both know, object-store-like (no directories, objects appear whole,
rename = copy + delete). The launcher-side reads (globbing, events, `.gz`, the catalogue, the data
fingerprint, the deploy stage's log view) must give what the same files give on a local path;
the slow test runs the whole `pulserank train` with input and work dir on `ram://` and the
registry on `prtorn://` (tests/registry_fixtures.py), then checks what it published.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from models import registry
from models.interactions import InteractionsError, expand_globs, read_interactions
from models.splits import make_split
from pipelines import deploy, train
from pipelines.datasets import FetchOptions, fetch
from stores import files
from tests import registry_fixtures  # noqa: F401  (registers prtorn://, the registry root below)
from tests.conftest import TRAIN_ARGS
from tests.ram_filesystem import gfile
from tests.test_runner_graphs import LAUNCHES
from transforms.parse import ParseEvents, ReadEventLines
from transforms.training import CatalogRows

REPO = Path(__file__).resolve().parent.parent


def _mirror(local: Path, remote: str) -> None:
    """The local tree's files, byte for byte, under `remote`."""
    for src in sorted(p for p in local.rglob("*") if p.is_file()):
        target = f"{remote}/{src.relative_to(local).as_posix()}"
        gfile.makedirs(target.rsplit("/", 1)[0])
        gfile.copy(str(src), target)


@pytest.fixture()
def logs(tmp_path: Path) -> tuple[Path, str]:
    """Event logs on local disk and the same bytes on `ram://`: plain JSONL, a `.gz`, a nested folder
    and a file no glob matches."""
    fetch("synthetic", tmp_path / "raw", FetchOptions(seed=0, scale=0.05))
    local = tmp_path / "logs"
    (local / "nested").mkdir(parents=True)
    shutil.copy(tmp_path / "raw" / "events.jsonl", local / "events.jsonl")
    with open(tmp_path / "raw" / "items.jsonl", "rb") as f, gzip.open(local / "items.jsonl.gz", "wb") as g:
        g.write(f.read())
    shutil.copy(tmp_path / "raw" / "session_shifts.jsonl", local / "nested" / "session_shifts.jsonl")
    shutil.copy(tmp_path / "raw" / "manifest.json", local / "manifest.json")
    remote = f"ram://{uuid.uuid4().hex}/logs"
    _mirror(local, remote)
    return local, remote


def _globs(root: str) -> list[str]:
    return [f"{root}/*.jsonl", f"{root}/*.jsonl.gz", f"{root}/nested/*.jsonl"]


def test_event_logs_read_through_a_remote_scheme_as_from_local_disk(logs) -> None:
    local, remote = logs
    here, there = expand_globs(_globs(str(local))), expand_globs(_globs(remote))
    assert [p.replace(str(local), remote) for p in here] == there
    assert there == [f"{remote}/events.jsonl", f"{remote}/items.jsonl.gz", f"{remote}/nested/session_shifts.jsonl"]

    a, b = read_interactions(_globs(str(local))), read_interactions(_globs(remote))
    assert a.stats.positives > 1000 and a.stats.item_events > 0 and a.stats.bad_lines > 0  # .gz items decoded
    assert b.stats.files == tuple(there)
    assert b.stats.bad_examples == tuple(e.replace(str(local), remote) for e in a.stats.bad_examples)
    same = ("lines", "blank_lines", "bad_lines", "events", "duplicate_events", "positives", "item_events",
            "other_events")
    assert {k: getattr(b.stats, k) for k in same} == {k: getattr(a.stats, k) for k in same}
    assert (a.user_ids, a.item_ids, a.item_categories, a.catalog) == (b.user_ids, b.item_ids, b.item_categories,
                                                                      b.catalog)
    assert (a.users == b.users).all() and (a.items == b.items).all() and (a.ts == b.ts).all()

    split = make_split(a, "random", seed=0)
    assert make_split(b, "random", seed=0).fingerprint() == split.fingerprint()
    assert train.data_fingerprint(_globs(remote), split.fingerprint()) == \
        train.data_fingerprint(_globs(str(local)), split.fingerprint())
    assert train.data_fingerprint(_globs(remote), split.fingerprint()) != \
        train.data_fingerprint(_globs(remote)[:2], split.fingerprint())

    now = int(a.ts.max()) + 1
    assert deploy.read_log(_globs(remote), now) == deploy.read_log(_globs(str(local)), now)


def test_a_remote_glob_that_matches_nothing_is_named(logs) -> None:
    _, remote = logs
    with pytest.raises(InteractionsError, match="no file matches 'ram://.*/nothing-\\*.jsonl'"):
        expand_globs([f"{remote}/*.jsonl", f"{remote}/nothing-*.jsonl"])
    with pytest.raises(deploy.DeployError, match="no file matches"):
        deploy.expand_inputs([f"{remote}/nothing-*.jsonl"])


def _write_catalog(globs: list[str], path: str) -> None:
    """The catalogue branch of `train.build_preprocess`, on Beam's in-process runner."""
    with beam.Pipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
        (p | ReadEventLines(globs) | ParseEvents())["events"] \
            | CatalogRows() \
            | beam.Map(lambda kv: json.dumps(kv[1].to_dict(), sort_keys=True)) \
            | beam.io.WriteToText(path, shard_name_template="")


def test_the_catalog_written_by_beam_to_a_remote_work_dir_reads_back(logs, tmp_path: Path) -> None:
    local, remote = logs
    workdir = remote.rsplit("/", 1)[0] + "/work"
    files.makedirs(workdir)
    _write_catalog(_globs(remote), files.join(workdir, "catalog.jsonl"))
    _write_catalog(_globs(str(local)), str(tmp_path / "catalog.jsonl"))
    there = train.read_catalog(files.join(workdir, "catalog.jsonl"))
    assert there == train.read_catalog(str(tmp_path / "catalog.jsonl"))
    assert there == read_interactions(_globs(str(local))).catalog and len(there) > 10


def test_local_outputs_upload_under_a_remote_dir(tmp_path: Path) -> None:
    (tmp_path / "report" / "deep").mkdir(parents=True)
    (tmp_path / "report" / "report.md").write_text("# report\n")
    (tmp_path / "report" / "deep" / "plot.png").write_bytes(bytes(range(256)) * 5000)
    dest = f"ram://{uuid.uuid4().hex}/report"
    written = files.upload_dir(str(tmp_path / "report"), dest)
    assert written == [f"{dest}/report.md", f"{dest}/deep/plot.png"]
    with files.open_read(f"{dest}/deep/plot.png") as f:
        assert f.read() == bytes(range(256)) * 5000
    files.makedirs(dest)  # exists already: fine, as for a re-run into the same gs:// work dir
    assert not Path("ram:").exists()


def test_dataflow_refuses_paths_its_workers_cannot_read() -> None:
    def check(*argv: str) -> None:
        args, beam_args = train.build_parser().parse_known_args(["--registry", "/srv/registry", *argv])
        train.check_shared_paths(args, beam_args)

    with pytest.raises(SystemExit, match=r"--input /data/\*\.jsonl; --workdir \(default: a local temp dir\)"):
        check("--input", "/data/*.jsonl", "--runner=DataflowRunner")
    with pytest.raises(SystemExit, match=r"give gs:// paths for: --workdir /tmp/w$"):
        check("--input", "gs://b/events/*.jsonl", "--workdir", "/tmp/w", "--runner", "DataflowRunner")
    check("--input", "gs://b/events/*.jsonl", "--workdir", "gs://b/work", "--runner=DataflowRunner")
    documented = next(launch for launch in LAUNCHES if launch.id == "train-DataflowRunner")  # docs/runners.md
    args, beam_args = train.build_parser().parse_known_args(documented.argv)
    train.check_shared_paths(args, beam_args)
    check("--input", "/mnt/events/*.jsonl", "--workdir", "/mnt/work", "--runner=FlinkRunner")  # a shared volume
    check("--input", "/data/*.jsonl")  # local runner


@pytest.mark.slow
def test_train_runs_with_input_and_workdir_on_a_remote_scheme(tmp_path: Path) -> None:
    """The whole `pulserank train` (FnApiRunner) with `--input ram://…`, `--workdir ram://…` and
    `--registry prtorn://…`: Beam reads the logs and writes the examples and catalogue there, TFT
    its transform graph; the launcher reads them back, evaluates, publishes and promotes."""
    data = tmp_path / "data"
    fetch("synthetic", data, FetchOptions(seed=0, scale=0.3))
    root = f"prtorn://{tmp_path / 'registry'}"
    launch = tmp_path / "launch"
    launch.mkdir()
    out = tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "tests.ram_filesystem", str(data), root, str(out), *TRAIN_ARGS],
                          cwd=launch, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert json.loads(out.read_text())["exit"] == 0
    work = json.loads(out.read_text())["work"]
    assert list(launch.iterdir()) == []  # nothing landed on the launch machine's disk as "ram:/…"

    for name in ("catalog.jsonl", "transform/transform_fn/saved_model.pb",
                 "transform/transformed_metadata/schema.pbtxt", "report/report.md"):
        assert f"ram://work/{name}" in work, name
    assert any(p.startswith("ram://work/examples-") and p.endswith(".tfrecord") for p in work)
    assert "report copied to ram://work/report" in proc.stdout

    version = registry.resolve(root)  # promoted, every file verified against its sha256
    assert version is not None
    for name in version.files:
        assert work[f"ram://work/onnx/{name}"] == os.path.getsize(registry._fetch(version, name, str(tmp_path)))
    meta = version.metadata
    local = [str(data / "*.jsonl")]
    split = make_split(read_interactions(local), "random", seed=0)
    assert meta["inputs"] == ["ram://input/*.jsonl"]
    assert meta["split_fingerprint"] == split.fingerprint()
    assert meta["data_fingerprint"] == train.data_fingerprint(local, split.fingerprint())
    assert meta["metrics"]["model"]["ndcg@10"] > meta["metrics"]["MostPop"]["ndcg@10"]
