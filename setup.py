"""Installs every Pulserank package and the `pulserank` command.

Beam ships this file to Dataflow/Flink workers with `--setup_file`, so install_requires is
the runtime part of requirements.txt (test and lint tools stay out of worker images).
"""

from pathlib import Path

from setuptools import find_packages, setup

_TEST_ONLY = {"pytest", "pytest-timeout", "pytest-xdist", "hypothesis", "ruff"}


def _runtime_requirements() -> list[str]:
    lines = Path(__file__).with_name("requirements.txt").read_text().splitlines()
    reqs = [ln.split("#")[0].strip() for ln in lines]
    return [r for r in reqs if r and r.split("==")[0].split("[")[0] not in _TEST_ONLY]


setup(
    name="pulserank",
    version="0.1.0",
    description="Real-time personalization engine on Apache Beam",
    python_requires=">=3.10,<3.13",
    packages=find_packages(
        include=["pulserank*", "pipelines*", "transforms*", "serving*", "models*", "schemas*", "stores*"]
    ),
    package_data={"schemas": ["*.proto", "*.pyi"], "stores": ["lua/*.lua"]},  # read at run time, workers too
    install_requires=_runtime_requirements(),
    entry_points={"console_scripts": ["pulserank = pulserank.cli:main"]},
)
