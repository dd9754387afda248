"""Sliding-window activity as bucket counts: minute buckets for 5 min, 5-minute buckets for
1 h, hourly buckets for 24 h. A field is `<granularity>|<label>|<bucket index>`; counts add,
so merging is addition. Reads sum the buckets overlapping the window ending at "now";
pruning drops buckets no window can read any more, so it never changes a later read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

# granularity code → (bucket width, window span, window name)
GRANULARITIES = {
    "m": (60_000, 300_000, "5m"),
    "f": (300_000, 3_600_000, "1h"),
    "h": (3_600_000, 86_400_000, "24h"),
}


_WIDTHS = tuple((code, width) for code, (width, _, _) in GRANULARITIES.items())


def fields_for(ts_ms: int, labels: Iterable[str]) -> Counter[str]:
    """The bucket fields one event increments: each label in each granularity."""
    labels = tuple(labels)
    out: dict[str, int] = {}
    for code, width in _WIDTHS:
        bucket = ts_ms // width
        for label in labels:
            field = f"{code}|{label}|{bucket}"
            out[field] = out.get(field, 0) + 1
    return Counter(out)


def _parse(field: str) -> tuple[str, str, int]:
    code, rest = field.split("|", 1)
    label, bucket = rest.rsplit("|", 1)
    return code, label, int(bucket)


def in_window(code: str, bucket: int, now_ms: int) -> bool:
    """A bucket counts when it overlaps (now − span, now] and has started by now."""
    width, span, _ = GRANULARITIES[code]
    start = bucket * width
    return start <= now_ms and start + width > now_ms - span


def expired(code: str, bucket: int, now_ms: int) -> bool:
    """No window read at `now_ms` or later can include this bucket."""
    width, span, _ = GRANULARITIES[code]
    return bucket * width + width <= now_ms - span


def read(fields: Mapping[str, float], now_ms: int) -> dict[str, dict[str, int]]:
    """{"5m": {label: count}, "1h": {...}, "24h": {...}} as of `now_ms`."""
    out: dict[str, dict[str, int]] = {name: {} for _, _, name in GRANULARITIES.values()}
    for field, count in fields.items():
        code, label, bucket = _parse(field)
        if code in GRANULARITIES and in_window(code, bucket, now_ms):
            window = out[GRANULARITIES[code][2]]
            window[label] = window.get(label, 0) + int(count)
    return {name: dict(sorted(counts.items())) for name, counts in out.items()}


def prunable(fields: Iterable[str], now_ms: int) -> list[str]:
    return [f for f in fields if (p := _parse(f))[0] in GRANULARITIES and expired(p[0], p[2], now_ms)]
