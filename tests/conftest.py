"""Suite-wide fixtures and the process exit that keeps TFT from segfaulting at teardown."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
import redis as redis_py

from stores import redis_client

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


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The Redis every test talks to: ``$REDIS_URL`` or one embedded redis-server per session.

    The embedded server is stopped here, before ``pytest_unconfigure`` may ``os._exit`` (which
    would skip its atexit hook; its death signal would still stop it).
    """
    yield redis_client.redis_url()
    redis_client.shutdown_embedded()


@pytest.fixture
def redis(redis_url: str) -> Iterator[redis_py.Redis]:
    """A client on a DB that is FLUSHED before each test, so tests start from an empty store.

    Tests flush the DB they are given: if you set ``REDIS_URL``, point it at a scratch database
    (e.g. ``redis://localhost:6379/15``), never at one holding data you care about.
    """
    client = redis_client.get_redis(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()
