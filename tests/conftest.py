"""Suite-wide fixtures and the process exit that keeps TFT from segfaulting at teardown."""

from __future__ import annotations

import os
import sys

import pytest

_exit_status = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    # TFT pipelines segfault in protobuf's C extension while Python tears modules down
    # (FIELD-NOTES). Fixtures and plugins have finished here, so end the process now.
    if "tensorflow_transform" in sys.modules and not hasattr(config, "workerinput"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status)
