"""The one clock of Pulserank, and the one way to read and write an instant.

Every part that needs "now" (window reads, TTLs and pruning, serving, bandit decay) asks a
`Clock`. It defaults to wall time; pinned (`--as-of T`, or `PULSERANK_AS_OF` for servers and
workers), it lets a 1998 log be replayed, inspected and served as of its own end, and TTLs
count in event time.

Instants are integer epoch milliseconds (UTC) everywhere inside the system.
"""

from __future__ import annotations

import functools
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

AS_OF_ENV = "PULSERANK_AS_OF"

# Sane event-time bounds: digital interaction logs before 1990 or after 2100 are bad input.
MIN_INSTANT_MS = 631_152_000_000  # 1990-01-01T00:00:00Z
MAX_INSTANT_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


class InstantError(ValueError):
    """An instant that cannot be read, or lies outside the sane bounds."""


def parse_instant(value: object) -> int:
    """Epoch milliseconds from an RFC 3339 string or an integral epoch-ms number.

    Fractions finer than a millisecond are truncated, so formatting the result and parsing it
    again gives the same instant.
    """
    if isinstance(value, bool):
        raise InstantError("expected an RFC 3339 string or epoch milliseconds, got a boolean")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")) or not value.is_integer():
            raise InstantError("epoch milliseconds must be a whole number")
        ms = int(value)
    elif isinstance(value, str):
        ms = _parse_rfc3339(value)
    else:
        raise InstantError(f"expected an RFC 3339 string or epoch milliseconds, got {type(value).__name__}")
    if not MIN_INSTANT_MS <= ms < MAX_INSTANT_MS:
        hint = " (epoch seconds? this field takes milliseconds)" if 0 < ms < MIN_INSTANT_MS // 100 else ""
        raise InstantError(f"instant {ms} ms is outside 1990-01-01..2100-01-01{hint}")
    return ms


def _parse_rfc3339(text: str) -> int:
    m = _RFC3339.match(text.strip()) if len(text) <= 40 else None
    if m is None:
        raise InstantError(f"not an RFC 3339 timestamp: {text[:40]!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac, zone = m.group(7), m.group(8)
    try:
        dt = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise InstantError(f"not a valid date/time: {text[:40]!r} ({exc})") from None
    offset_min = 0
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        hh, mm = int(zone[1:3]), int(zone[4:6])
        if hh > 23 or mm > 59:
            raise InstantError(f"bad UTC offset in {text[:40]!r}")
        offset_min = sign * (hh * 60 + mm)
    millis = int((frac or ".0")[1:4].ljust(3, "0"))
    return (int(dt.timestamp()) - offset_min * 60) * 1000 + millis


@functools.lru_cache(maxsize=1024)
def format_instant(ms: int) -> str:
    """RFC 3339 in UTC with millisecond precision (the canonical form in logs).

    Cached: a served list's impressions, and a busy second's events, share their instants."""
    dt = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


@dataclass(frozen=True)
class Clock:
    """Wall time, or a pinned instant when `pinned_ms` is set."""

    pinned_ms: int | None = None

    def now_ms(self) -> int:
        return self.pinned_ms if self.pinned_ms is not None else time.time_ns() // 1_000_000

    def now(self) -> float:
        """Seconds since the epoch, for code that speaks seconds."""
        return self.now_ms() / 1000.0

    @property
    def is_pinned(self) -> bool:
        return self.pinned_ms is not None

    def expired(self, last_ms: int, ttl_ms: int) -> bool:
        """True when `last_ms` is older than `ttl_ms` by this clock (event time when pinned)."""
        return self.now_ms() - last_ms > ttl_ms

    def describe(self) -> str:
        return f"pinned at {format_instant(self.pinned_ms)}" if self.is_pinned else "wall time"


WALL = Clock()


def clock_from(as_of: str | int | None) -> Clock:
    """The clock for a `--as-of` value or setting: pinned when given, wall time when not."""
    if as_of is None or as_of == "":
        return WALL
    if isinstance(as_of, str) and as_of.lstrip("-").isdigit():
        as_of = int(as_of)
    return Clock(pinned_ms=parse_instant(as_of))


def default_clock() -> Clock:
    """The process's clock: pinned by `PULSERANK_AS_OF` when set (servers, workers), else wall."""
    return clock_from(os.environ.get(AS_OF_ENV))
