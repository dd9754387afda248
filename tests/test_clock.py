"""One clock: wall time by default, pinned by --as-of or PULSERANK_AS_OF, TTLs in event time."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.clock import (
    AS_OF_ENV,
    MAX_INSTANT_MS,
    MIN_INSTANT_MS,
    WALL,
    Clock,
    InstantError,
    clock_from,
    default_clock,
    format_instant,
    parse_instant,
)

END_OF_ML100K = "1998-04-22T23:10:38Z"


def test_wall_clock_follows_time() -> None:
    before = time.time_ns() // 1_000_000
    now = WALL.now_ms()
    assert before <= now <= time.time_ns() // 1_000_000
    assert not WALL.is_pinned


def test_pinned_clock_stays_put() -> None:
    clock = clock_from(END_OF_ML100K)
    assert clock.is_pinned
    assert clock.now_ms() == clock.now_ms() == 893_286_638_000
    assert clock.now() == 893_286_638.0
    assert clock_from("893286638000") == clock == clock_from(893_286_638_000)
    assert "1998-04-22" in clock.describe()


def test_ttl_counts_in_event_time_when_pinned() -> None:
    clock = clock_from(END_OF_ML100K)
    day = 86_400_000
    assert clock.expired(clock.now_ms() - 2 * day, ttl_ms=day)
    assert not clock.expired(clock.now_ms() - day // 2, ttl_ms=day)
    # The same stamps under wall time: a 1998 timestamp is long expired.
    assert WALL.expired(clock.now_ms() - day // 2, ttl_ms=day)


def test_default_clock_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AS_OF_ENV, raising=False)
    assert default_clock() == WALL
    monkeypatch.setenv(AS_OF_ENV, END_OF_ML100K)
    assert default_clock().now_ms() == 893_286_638_000


@given(st.integers(MIN_INSTANT_MS, MAX_INSTANT_MS - 1))
def test_format_then_parse_is_identity(ms: int) -> None:
    assert parse_instant(format_instant(ms)) == ms


@pytest.mark.parametrize("bad", ["", "soon", "1998-04-22", "1898-01-01T00:00:00Z", 1.5, True, None, 5])
def test_bad_as_of_is_refused(bad: object) -> None:
    with pytest.raises(InstantError):
        Clock(pinned_ms=parse_instant(bad))


def test_cli_rejects_a_bad_as_of() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pulserank.cli", "--as-of", "yesterday", "data", "fetch", "synthetic", "--out", "x"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "--as-of" in proc.stderr
