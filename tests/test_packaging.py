"""What Beam ships to workers with --setup_file: an sdist that builds on its own."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"pulserank", "pipelines", "transforms", "serving", "models", "schemas", "stores"}


def test_sdist_carries_every_package_and_its_runtime_requirements(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path), "egg_info", "-e", str(tmp_path)],
                   cwd=REPO, check=True, capture_output=True)
    (archive,) = tmp_path.glob("pulserank-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    root = next((tmp_path / "x").iterdir())
    top = {p.parts[0] for p in (q.relative_to(root) for q in root.rglob("*.py"))}
    assert top >= PACKAGES
    assert (root / "schemas" / "personalization.proto").exists()

    # Workers run setup.py from the unpacked sdist: it must find requirements.txt there.
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "-e", str(tmp_path)], cwd=root, check=True,
                   capture_output=True)
    requires = (tmp_path / "pulserank.egg-info" / "requires.txt").read_text().split()
    assert "apache-beam[gcp]==2.77.0" in requires and "redis==8.1.0" in requires
    assert not any(r.startswith(("pytest", "hypothesis", "ruff")) for r in requires)
