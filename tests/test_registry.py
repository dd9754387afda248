"""The model registry: publish, promote, rollback and list; tampering; SIGKILL at every step; the CLI.

Roots are local directories and `prtorn://` (tests/registry_fixtures.py): a scheme the registry
treats as remote whose rename is copy-then-delete, copying in place piece by piece, so a crash
leaves partial objects visible at their final names (worse than GCS or S3, where they never are).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import registry
from models.registry import ConflictError, IntegrityError, RegistryError
from tests.registry_fixtures import CopyDeleteFS, seal

REPO = Path(__file__).resolve().parents[1]
NAMES = ("ranker.onnx", "user_tower.onnx")
CHUNK = 96  # small chunks, so a crash can land inside every write


def model_files(where: Path, tag: str) -> dict[str, str]:
    """Two distinct files per version, a few chunks each."""
    where.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in NAMES:
        path = where / f"{tag}-{name}"
        path.write_bytes(hashlib.sha256(f"{tag}/{name}".encode()).digest() * 7)
        files[name] = str(path)
    return files


def contents(files: dict[str, str]) -> dict[str, bytes]:
    return {name: Path(path).read_bytes() for name, path in files.items()}


def meta(tag: str) -> dict:
    return {"metrics": {"ndcg@10": 0.4, "recall@10": 0.2, "baselines": {"itemknn": {"ndcg@10": 0.39}}},
            "data_fingerprint": f"sha256:{tag}", "feature_spec": {"history_len": 20, "context": ["hour", "device"]}}


def records_on_disk(directory: Path) -> list[Path]:
    return sorted((directory / "aliases" / "production").glob("*.json"))


def sha256_file(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- round trips --------------------------------------------------------------------------------


def test_publish_promote_rollback_and_list(tmp_path: Path) -> None:
    root = str(tmp_path / "reg")
    f1, f2 = model_files(tmp_path / "src", "v1"), model_files(tmp_path / "src", "v2")
    assert registry.read_alias(root) is None and registry.production_model_path(root, NAMES[0]) is None
    assert registry.list_versions(root) == [] and registry.listing(root) == [] and registry.history(root) == []
    assert registry.resolve(root) is None

    v1 = registry.publish(root, "v1", f1, meta("v1"))
    assert v1.files == {name: sha256_file(path) for name, path in f1.items()}
    stored = json.loads((tmp_path / "reg" / "versions" / "v1" / "metadata.json").read_text())
    assert stored["created_at"].endswith("Z") and stored["files"] == v1.files and stored["version"] == "v1"
    assert {k: stored[k] for k in ("metrics", "data_fingerprint", "feature_spec")} == meta("v1")
    assert registry.read_alias(root) is None  # published, not promoted
    a1 = registry.promote(root, "v1")
    assert (a1.version, a1.action, a1.previous, a1.seq) == ("v1", "promote", None, 1)
    assert registry.promote(root, "v1") == a1 and len(registry.history(root)) == 1  # already production: no-op

    registry.publish(root, "v2", f2, meta("v2"))
    rows = registry.listing(root)
    assert [(r.version, r.production) for r in rows] == [("v1", True), ("v2", False)]
    assert rows[1].metrics == meta("v2")["metrics"] and rows[1].data_fingerprint == "sha256:v2"
    a2 = registry.promote(root, "v2")
    assert (a2.version, a2.previous, a2.previous_record) == ("v2", "v1", a1.record)
    version, path = registry.production_model_path(root, NAMES[1])
    assert version.version == "v2" and Path(path).read_bytes() == contents(f2)[NAMES[1]]
    assert path == version.file_path(NAMES[1])  # a local root is read in place
    assert registry.resolve(root).version == "v2"
    assert [r.production for r in registry.listing(root)] == [False, True]

    back = registry.rollback(root)
    assert (back.version, back.action, back.previous) == ("v1", "rollback", None)
    assert registry.read_alias(root) == back and registry.resolve(root).version == "v1"
    with pytest.raises(RegistryError, match="nothing to roll back to: v1 is the first"):
        registry.rollback(root)
    assert [(r.seq, r.action, r.version) for r in registry.history(root)] == [
        (1, "promote", "v1"), (2, "promote", "v2"), (3, "rollback", "v1")]
    assert not list((tmp_path / "reg").rglob("*.tmp-*"))

    with pytest.raises(RegistryError, match="immutable"):
        registry.publish(root, "v1", f2, {})
    with pytest.raises(RegistryError, match="v9 is not published"):
        registry.promote(root, "v9")
    with pytest.raises(RegistryError, match="invalid version"):
        registry.load_version(root, "../v1")
    with pytest.raises(RegistryError, match="invalid alias"):
        registry.read_alias(root, "a/b")
    with pytest.raises(RegistryError, match="not a local file"):
        registry.publish(root, "v3", {"x.onnx": str(tmp_path / "missing")})
    with pytest.raises(RegistryError, match="not JSON"):
        registry.publish(root, "v3", f1, {"metrics": {1, 2}})
    with pytest.raises(RegistryError, match="nothing to roll back: 'staging' was never promoted"):
        registry.rollback(root, alias="staging")


def test_fresh_version_names_sort_by_time_and_name_the_files(tmp_path: Path) -> None:
    f1, f2 = model_files(tmp_path, "a"), model_files(tmp_path, "b")
    t = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    name = registry.new_version_name(f1, now_ms=t)
    assert name.startswith("20260101T000000Z-") and len(name) == 25
    assert registry.new_version_name(f1, now_ms=t) == name != registry.new_version_name(f2, now_ms=t)
    assert registry.new_version_name(f1, now_ms=t + 1000) > name
    assert registry.new_version_name(now_ms=t) != registry.new_version_name(now_ms=t)  # no files: random
    published = registry.publish(str(tmp_path / "reg"), None, f1)
    assert registry.list_versions(str(tmp_path / "reg")) == [published.version]
    assert published.version.endswith(name[-9:])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(["va", "vb", "vc"]), st.just("rollback")), max_size=12))
def test_promotions_and_rollbacks_behave_like_a_stack(ops: list[str]) -> None:
    """The alias after any sequence = the top of a stack that promote pushes and rollback pops."""
    with tempfile.TemporaryDirectory() as tmp:
        root = str(Path(tmp) / "reg")
        for tag in ("va", "vb", "vc"):
            registry.publish(root, tag, model_files(Path(tmp) / "src", tag))
        stack: list[str] = []
        for op in ops:
            if op == "rollback":
                if len(stack) < 2:
                    with pytest.raises(RegistryError, match="nothing to roll back"):
                        registry.rollback(root)
                    continue
                stack.pop()
                assert registry.rollback(root).version == stack[-1]
            elif not stack or stack[-1] != op:
                stack.append(op)
                assert registry.promote(root, op).version == op
        current = registry.read_alias(root)
        assert (current.version if current else None) == (stack[-1] if stack else None)
        assert [r.seq for r in registry.history(root)] == list(range(1, len(registry.history(root)) + 1))


# -- tampering ----------------------------------------------------------------------------------


@pytest.fixture
def promoted(tmp_path: Path) -> tuple[str, dict[str, str], dict[str, str]]:
    """v1 then v2 promoted (v2 is production)."""
    root = str(tmp_path / "reg")
    f1, f2 = model_files(tmp_path / "src", "v1"), model_files(tmp_path / "src", "v2")
    registry.publish(root, "v1", f1, meta("v1"))
    registry.publish(root, "v2", f2, meta("v2"))
    registry.promote(root, "v1")
    registry.promote(root, "v2")
    return root, f1, f2


def test_a_file_changed_after_publish_is_refused(tmp_path: Path, promoted) -> None:
    root, _, _ = promoted
    registry.publish(root, "v3", model_files(tmp_path / "src", "v3"))
    model = Path(registry.load_version(root, "v3").file_path(NAMES[0]))
    model.write_bytes(model.read_bytes()[:-1] + b"!")
    with pytest.raises(IntegrityError, match="v3: checksum mismatch for ranker.onnx"):
        registry.promote(root, "v3")
    assert registry.read_alias(root).version == "v2"  # refused before any record was written

    model = Path(registry.load_version(root, "v2").file_path(NAMES[0]))
    good = model.read_bytes()
    model.write_bytes(good + b"\0")
    for load in (lambda: registry.verify(registry.load_version(root, "v2")), lambda: registry.resolve(root),
                 lambda: registry.production_model_path(root, NAMES[0])):
        with pytest.raises(IntegrityError, match="checksum mismatch"):
            load()
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        registry.promote(root, "v2")  # re-promoting verifies too
    model.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        registry.production_model_path(root, NAMES[1])  # another file of the version: still refused
    model.write_bytes(good)
    assert registry.resolve(root).version == "v2"


def test_metadata_changed_after_promotion_is_refused(promoted) -> None:
    root, _, _ = promoted
    path = Path(registry.version_dir(root, "v2")) / "metadata.json"
    doc = json.loads(path.read_text())
    doc["feature_spec"]["history_len"] = 50  # same files, other features: must not serve
    path.write_text(json.dumps(doc, indent=2))
    with pytest.raises(IntegrityError, match="metadata.json changed after promotion"):
        registry.resolve(root)
    doc["files"][NAMES[0]] = "0" * 64
    path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="differ"):
        registry.production_model_path(root, NAMES[0])


def test_unsealed_records_are_skipped_and_forged_ones_refused(tmp_path: Path, promoted, caplog) -> None:
    root, _, _ = promoted
    first, newest = records_on_disk(tmp_path / "reg")
    good = newest.read_bytes()
    body = json.loads(good)

    with caplog.at_level(logging.WARNING, logger="models.registry"):
        newest.write_text(json.dumps({**body, "version": "v1"}))  # edited, not resealed
        assert registry.read_alias(root).version == "v1"  # skipped: the record before it rules
        newest.write_bytes(good[: len(good) // 2])  # truncated (a torn write)
        assert registry.read_alias(root).record == first.name
        assert registry.resolve(root).version == "v1"
    assert f"skipping alias record {newest}" in caplog.text and "does not match the body" in caplog.text
    assert "not valid JSON, torn or partial" in caplog.text

    newest.write_bytes(good)
    replayed = newest.with_name(f"{3:012d}-{'a' * 12}.json")  # a sealed record copied to a later name
    replayed.write_bytes(first.read_bytes())
    assert registry.read_alias(root).version == "v2"
    replayed.unlink()

    newest.write_text(json.dumps(seal({**body, "version": "v1"})))  # forged and resealed
    with pytest.raises(IntegrityError, match="differ"):
        registry.production_model_path(root, NAMES[0])
    with pytest.raises(IntegrityError, match="differ"):
        registry.resolve(root)
    newest.write_bytes(good)
    assert registry.resolve(root).version == "v2"


@pytest.mark.parametrize("winner", ["first", "second"])
def test_concurrent_promoters_agree_on_one_winner(tmp_path: Path, promoted, monkeypatch, winner: str) -> None:
    """B promotes while A's record is still being written: both records stay, every reader picks the
    greater name, and A raises ConflictError if it lost."""
    root, _, _ = promoted
    registry.publish(root, "v3", model_files(tmp_path / "src", "v3"))
    ids = iter(["b" * 12, "c" * 12] if winner == "second" else ["c" * 12, "b" * 12])  # A's, then B's
    fresh = registry._new_record_id
    monkeypatch.setattr(registry, "_new_record_id", lambda: next(ids, None) or fresh())
    raced = []

    def hook(label: str) -> None:
        if not raced and label.endswith("temporary complete") and "v3" in label:
            raced.append(registry.promote(root, "v1"))  # B, at A's sequence number

    monkeypatch.setattr(registry, "_on_step", hook)
    if winner == "second":
        with pytest.raises(ConflictError, match="concurrent promotion of 'production' won: it names v1"):
            registry.promote(root, "v3")
    else:
        assert registry.promote(root, "v3").version == "v3"
    monkeypatch.setattr(registry, "_on_step", None)
    assert raced[0].seq == 3 and [r.seq for r in registry.history(root)] == [1, 2, 3, 3]
    assert registry.read_alias(root).version == ("v1" if winner == "second" else "v3")
    assert registry.rollback(root).version == "v2"  # both raced from v2


def test_remote_roots_are_fetched_into_a_checksummed_cache(tmp_path: Path) -> None:
    root = f"{CopyDeleteFS.PREFIX}{tmp_path / 'reg'}"
    files = model_files(tmp_path / "src", "v1")
    registry.publish(root, "v1", files, meta("v1"))
    registry.promote(root, "v1")
    assert registry.list_versions(root) == ["v1"] and registry.read_alias(root).version == "v1"
    cache = tmp_path / "cache"
    version, local = registry.production_model_path(root, NAMES[0], cache=str(cache))
    assert Path(local).parent == cache and Path(local).read_bytes() == contents(files)[NAMES[0]]
    Path(local).write_bytes(b"corrupt")  # a damaged cached copy is fetched again, not trusted
    assert registry.production_model_path(root, NAMES[0], cache=str(cache))[1] == local
    assert Path(local).read_bytes() == contents(files)[NAMES[0]]
    remote = tmp_path / "reg" / "versions" / "v1" / NAMES[0]
    remote.write_bytes(remote.read_bytes() + b"\0")
    Path(local).unlink()
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        registry.production_model_path(root, NAMES[0], cache=str(cache))
    assert not list(cache.iterdir())  # the refused download left nothing behind


# -- SIGKILL at every step ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crasher() -> Iterator[Callable[..., dict]]:
    """Runs registry.<fn>(*args) in a forked child killed at step `kill_at` (-1: never)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "tests.registry_fixtures"], cwd=REPO, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(fn: str, args: list, kill_at: int) -> dict:
        proc.stdin.write(json.dumps({"fn": fn, "args": args, "kill_at": kill_at, "chunk": CHUNK}) + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    yield run
    proc.kill()  # idle between requests: nothing to lose
    proc.wait(timeout=30)


def _base(tmp_path: Path, root_of: Callable[[Path], str], op: str) -> tuple[Path, dict, dict]:
    """The registry before the operation: v1 production (+ v2 published, + v2 promoted)."""
    base = tmp_path / "base"
    f1, f2 = model_files(tmp_path / "src", "v1"), model_files(tmp_path / "src", "v2")
    root = root_of(base)
    registry.publish(root, "v1", f1, meta("v1"))
    registry.promote(root, "v1")
    if op in ("promote", "rollback"):
        registry.publish(root, "v2", f2, meta("v2"))
    if op == "rollback":
        registry.promote(root, "v2")
    return base, f2, {"v1": contents(f1), "v2": contents(f2)}


def _check_readers(root: str, expected: dict[str, dict[str, bytes]], allowed: set[str], cache: Path) -> str:
    """What every reader sees is complete and verified; returns the aliased version."""
    alias = registry.read_alias(root)
    assert alias is not None and alias.version in allowed, alias
    assert registry.resolve(root).version == alias.version
    for name in NAMES:
        version, local = registry.production_model_path(root, name, cache=str(cache))
        assert version.version == alias.version and Path(local).read_bytes() == expected[alias.version][name]
    for name in registry.list_versions(root):
        registry.verify(registry.load_version(root, name))
        assert registry.load_version(root, name).files.keys() == set(NAMES)
    assert {r.version for r in registry.listing(root)} == set(registry.list_versions(root))
    return alias.version


@pytest.mark.parametrize("scheme", ["local", "copy-delete"])
@pytest.mark.parametrize("op", ["publish", "promote", "rollback"])
def test_sigkill_at_every_step_leaves_the_old_or_the_new_version(tmp_path: Path, crasher, scheme: str,
                                                                 op: str) -> None:
    def root_of(directory: Path) -> str:
        return str(directory) if scheme == "local" else f"{CopyDeleteFS.PREFIX}{directory}"

    base, f2, expected = _base(tmp_path, root_of, op)
    args = {"publish": ["v2", f2, meta("v2")], "promote": ["v2"], "rollback": []}[op]
    before, after = {"publish": ("v1", "v1"), "promote": ("v1", "v2"), "rollback": ("v2", "v1")}[op]

    dry = tmp_path / "dry"
    shutil.copytree(base, dry)
    whole = crasher(op, [root_of(dry), *args], -1)
    assert whole["exit"] == 0 and whole["error"] is None, whole
    steps = whole["steps"]
    if op == "publish":
        assert [s for s in steps if s.endswith(": in place")] == [
            f"publish v2/{n}: in place" for n in (*NAMES, "metadata.json")]
    else:
        assert sum(s.endswith(": in place") for s in steps) == 1
    assert sum(": chunk " in s for s in steps) >= 3 * (3 if op == "publish" else 1)
    if scheme == "copy-delete":
        assert sum(s.startswith("copy to ") for s in steps) >= 4

    seen, torn = set(), 0
    for k, label in enumerate(steps):
        directory = tmp_path / f"crash-{k}"
        shutil.copytree(base, directory)
        root = root_of(directory)
        result = crasher(op, [root, *args], k)
        assert result["signal"] == signal.SIGKILL and len(result["steps"]) == k + 1, (k, label, result)
        try:
            seen.add(_check_readers(root, expected, {before, after}, tmp_path / "cache"))
        except Exception as exc:
            raise AssertionError(f"after SIGKILL at step {k} ({label}): {type(exc).__name__}: {exc}") from exc
        records = records_on_disk(directory)
        meta_on_disk = (directory / "versions" / "v2" / "metadata.json").exists()
        listed = registry.list_versions(root)
        torn += len(records) > len(registry.history(root)) or (meta_on_disk and "v2" not in listed)

        # running the operation again completes it
        if op == "publish":
            if "v2" not in registry.list_versions(root):
                registry.publish(root, *args)
            registry.promote(root, "v2")
            assert registry.resolve(root).version == "v2"
        elif op == "promote":
            registry.promote(root, "v2")
            assert registry.rollback(root).version == "v1"  # the stack survived the crash
        elif registry.read_alias(root).version == "v2":
            registry.rollback(root)
        if op == "rollback":
            assert registry.resolve(root).version == "v1"
            with pytest.raises(RegistryError, match="nothing to roll back"):
                registry.rollback(root)

    assert seen == {before, after}  # both sides of the switch were observed
    if scheme == "copy-delete":
        assert torn > 0  # partial objects were visible at their final names, and skipped


# -- the command ----------------------------------------------------------------------------------

_DRIVER = r"""
import contextlib, io, json, sys
from pulserank import cli
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code
    results.append({"code": code, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps(results))
"""


def cli_batch(*commands: list[str]) -> list[dict]:
    """`pulserank.cli.main` on each argv, in order, in one subprocess."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(commands)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_the_models_command(tmp_path: Path) -> None:
    root = str(tmp_path / "reg")
    registry.publish(root, "v1", model_files(tmp_path / "src", "v1"), meta("v1"))
    registry.publish(root, "v2", model_files(tmp_path / "src", "v2"), {"metrics": {"ndcg@10": 0.45}})
    registry.publish(root, "v3", model_files(tmp_path / "src", "v3"))
    model = Path(registry.load_version(root, "v3").file_path(NAMES[0]))
    model.write_bytes(model.read_bytes() + b"\0")  # changed after publishing
    reg = ["--registry", root]
    empty, no_rollback, p1, p2, again, listed, table, hist, back, none_left, unknown, bad, tampered = cli_batch(
        ["models", "list", "--registry", str(tmp_path / "nothing")], ["models", "rollback", *reg],
        ["models", "promote", "v1", *reg], ["models", "promote", "v2", *reg], ["models", "promote", "v2", *reg],
        ["models", "list", "--json", *reg], ["models", "list", *reg], ["models", "history", *reg],
        ["models", "rollback", *reg], ["models", "rollback", *reg], ["models", "promote", "v9", *reg],
        ["models", "promote", "../v1", *reg], ["models", "promote", "v3", *reg])
    assert (empty["code"], empty["out"].strip()) == (0, "no published versions")
    assert (p1["code"], p1["out"].strip()) == (0, "production → v1")
    assert (p2["code"], p2["out"].strip()) == (0, "production → v2 (was v1)")
    assert (again["code"], again["out"].strip()) == (0, "production already is v2")
    doc = json.loads(listed["out"])
    assert doc["production"] == "v2" and [(v["version"], v["production"]) for v in doc["versions"]] == [
        ("v1", False), ("v2", True), ("v3", False)]
    assert doc["versions"][0]["metrics"] == meta("v1")["metrics"] and doc["versions"][0]["created_at"]
    rows = table["out"].splitlines()
    assert rows[1].startswith("  v1 ") and rows[1].endswith("ndcg@10=0.4 recall@10=0.2 baselines.itemknn.ndcg@10=0.39")
    assert rows[2].startswith("* v2 ") and rows[2].endswith("ndcg@10=0.45")
    assert [line.split()[-2:] for line in hist["out"].splitlines()] == [["promote", "v1"], ["promote", "v2"]]
    assert (back["code"], back["out"].strip()) == (0, "production → v1 (was v2)")
    checksum = (f"version v3: checksum mismatch for {NAMES[0]} (expected sha256 "
                f"{registry.load_version(root, 'v3').files[NAMES[0]][:12]}…, got {sha256_file(str(model))[:12]}…)")
    for result, code, message in [(no_rollback, 2, "nothing to roll back: 'production' was never promoted"),
                                  (none_left, 2, "nothing to roll back to: v1 is the first version"),
                                  (unknown, 2, "version v9 is not published"), (bad, 2, "invalid version name"),
                                  (tampered, 1, checksum)]:
        assert result["code"] == code and result["out"] == "", result
        assert len(result["err"].strip().splitlines()) == 1 and message in result["err"], result
        assert result["err"].startswith("pulserank models ") and "Traceback" not in result["err"]
    assert registry.read_alias(root).version == "v1"
