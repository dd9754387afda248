"""The live event stream in Redis (a Redis Stream), its consumer group, and the dead letters.

Clients (tests, the demo, later the `RecordEvents` RPC) `append` events as canonical JSON lines;
the live driver reads them in micro-batches through a consumer group. A batch is redelivered
exactly as it was first delivered: `read_batch` first returns this consumer's whole pending list
(entries delivered but never acknowledged, i.e. the batch a crash interrupted) and only then
blocks for new entries. The stream is trimmed only below both the archived high-water mark and
every acknowledged entry (`trim`), so nothing leaves Redis before it is in the lake.

Each stream entry has one field, `event`: the JSON line. Dead letters go to their own stream
with the raw input, the field and the reason, written once per source entry (a redelivered
batch does not add them twice).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from schemas import keys
from schemas.events import Event, to_json_line

FIELD = "event"
GROUP = "live"
DEAD_LETTER_MAXLEN = 100_000  # approximate cap: the dead-letter stream is a recent window, not an archive
DEAD_LETTER_GUARD_TTL_S = 7 * 86_400

# KEYS: the dead-letter stream, then one guard per record; ARGV: guard TTL, maxlen, then
# (source, line, raw, field, reason) per record. Appends a record only if its guard is new.
_DEAD_LETTER_LUA = """
local n = 0
for i = 2, #KEYS do
  local a = 3 + (i - 2) * 5
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'source', ARGV[a], 'line', ARGV[a + 1],
               'raw', ARGV[a + 2], 'field', ARGV[a + 3], 'reason', ARGV[a + 4])
    n = n + 1
  end
end
return n
"""

# KEYS[1]: the stream; ARGV: the field, then one line per entry. A whole batch is one command:
# a pipeline of single XADDs costs the client ~20 µs an entry to pack and parse, most of what
# logging a served list's impressions cost the server.
APPEND_LUA = """
local ids = {}
for i = 2, #ARGV do
  ids[i - 1] = redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[i])
end
return ids
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: its id and the raw line (None when the entry has no `event` field)."""

    id: str
    raw: bytes | None


def to_line(event: Event | dict | str | bytes) -> str | bytes:
    """An Event or a dict as a compact JSON line (Events in canonical form); str/bytes pass as is."""
    if isinstance(event, Event):
        return to_json_line(event)
    if isinstance(event, dict):
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return event


def append_command(stream: str, events: Iterable[Event | dict | str | bytes]) -> tuple:
    """The EVAL arguments that append `events` to `stream` (`APPEND_LUA`), for sync and async clients."""
    return (APPEND_LUA, 1, stream, FIELD, *(to_line(e) for e in events))


def append(client: redis.Redis, events: Iterable[Event | dict | str | bytes],
           stream: str = keys.EVENT_STREAM) -> list[str]:
    """Appends events (raw lines too, valid or not) in one command; returns their stream ids."""
    events = list(events)
    return [_text(i) for i in client.eval(*append_command(stream, events))] if events else []


def ensure_group(client: redis.Redis, group: str = GROUP, stream: str = keys.EVENT_STREAM,
                 start_id: str = "0") -> bool:
    """Creates the consumer group (and the stream) if missing; True when it was created."""
    try:
        client.xgroup_create(stream, group, id=start_id, mkstream=True)
        return True
    except redis.ResponseError as err:
        if "BUSYGROUP" in str(err):
            return False
        raise


def read_batch(client: redis.Redis, consumer: str, count: int, block_ms: int, group: str = GROUP,
               stream: str = keys.EVENT_STREAM) -> tuple[list[Entry], bool]:
    """The next micro-batch for `consumer` and whether it is a redelivery.

    Pending entries first, all of them (no COUNT), so the batch a crash interrupted comes back
    whole and identical; otherwise up to `count` new entries, blocking up to `block_ms` (which
    must be shorter than the client's socket timeout).
    """
    pending = client.xreadgroup(group, consumer, {stream: "0"})
    entries = _entries(pending)
    if entries:
        return entries, True
    fresh = client.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms or None)
    return _entries(fresh), False


def _entries(reply) -> list[Entry]:
    out: list[Entry] = []
    if not reply:
        return out
    for _stream, messages in reply:
        for entry_id, fields in messages:
            # A pending entry deleted from the stream comes back with no fields (None on Redis 7).
            raw = (fields or {}).get(FIELD.encode())
            out.append(Entry(_text(entry_id), raw))
    return out


def ack(client: redis.Redis, ids: Sequence[str], group: str = GROUP, stream: str = keys.EVENT_STREAM) -> int:
    return int(client.xack(stream, group, *ids)) if ids else 0


def _archived_key(stream: str) -> str:
    return keys.EVENT_STREAM_ARCHIVED if stream == keys.EVENT_STREAM else f"{stream}:archived"


def mark_archived(client: redis.Redis, through_id: str, stream: str = keys.EVENT_STREAM) -> None:
    """Raises the archived high-water mark (never lowers it; one driver writes it)."""
    key = _archived_key(stream)
    current = client.get(key)
    if current is None or parse_id(_text(current)) < parse_id(through_id):
        client.set(key, through_id)


def archived_through(client: redis.Redis, stream: str = keys.EVENT_STREAM) -> str | None:
    value = client.get(_archived_key(stream))
    return _text(value) if value is not None else None


def trim(client: redis.Redis, stream: str = keys.EVENT_STREAM) -> int:
    """Deletes entries that are archived AND acknowledged by every group; returns how many.

    The bound is the lowest of: just past the archived high-water mark, each group's lowest
    pending id, and just past each group's last delivered id (XTRIM MINID keeps ids ≥ bound).
    """
    archived = archived_through(client, stream)
    if archived is None:
        return 0
    bound = successor(parse_id(archived))
    for g in client.xinfo_groups(stream):
        g = {_text(k): v for k, v in g.items()}
        bound = min(bound, successor(parse_id(_text(g["last-delivered-id"]))))
        if int(g["pending"]):
            lowest = client.xpending(stream, _text(g["name"]))["min"]
            bound = min(bound, parse_id(_text(lowest)))
    if bound <= (0, 0):
        return 0
    return int(client.xtrim(stream, minid=f"{bound[0]}-{bound[1]}", approximate=False))


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def successor(entry_id: tuple[int, int]) -> tuple[int, int]:
    return entry_id[0], entry_id[1] + 1


def stage_batch(client: redis.Redis, key: str, inputs: Sequence[tuple[str, int, bytes | None]],
                ttl_s: int = 86_400) -> None:
    """Hands a micro-batch's `(source, n, raw)` tuples to the live driver's Beam pipeline."""
    rows = [[source, n, None if raw is None else base64.b64encode(raw).decode()] for source, n, raw in inputs]
    client.set(key, json.dumps(rows, separators=(",", ":")), ex=ttl_s)


def staged_batch(client: redis.Redis, key: str) -> list[tuple[str, int, bytes | None]]:
    raw = client.get(key)
    rows = json.loads(raw) if raw else []
    return [(source, n, None if b64 is None else base64.b64decode(b64)) for source, n, b64 in rows]


def seen_elsewhere(client: redis.Redis, event_ids: Sequence[str], batch_id: str) -> set[str]:
    """The ids among `event_ids` that an EARLIER batch merged (live mode's cross-batch dedupe).

    A marker holding `batch_id` itself is this batch's own, left by a run that crashed after
    marking and before acknowledging: the redelivered batch must stay identical, so it counts
    as unseen (its merges are then skipped by the summary guards).
    """
    if not event_ids:
        return set()
    pipe = client.pipeline(transaction=False)
    for event_id in event_ids:
        pipe.get(keys.seen_event(event_id))
    mine = batch_id.encode()
    return {e for e, v in zip(event_ids, pipe.execute(), strict=True) if v is not None and v != mine}


def mark_seen(client: redis.Redis, event_ids: Iterable[str], batch_id: str, ttl_s: int) -> None:
    """Marks ids as merged by `batch_id` (SET NX, so the first batch to merge an id keeps it)."""
    pipe = client.pipeline(transaction=False)
    for event_id in event_ids:
        pipe.set(keys.seen_event(event_id), batch_id, nx=True, ex=ttl_s)
    pipe.execute()


def dead_letter(client: redis.Redis, records: Sequence[dict], stream: str = keys.DEAD_LETTER_STREAM,
                ttl_s: int = DEAD_LETTER_GUARD_TTL_S) -> int:
    """Appends dead letters (source, line, raw, field, reason), each at most once per source.

    Returns how many were new. The guard makes a redelivered batch's dead letters a no-op.
    """
    if not records:
        return 0
    guard_keys = [keys.dead_letter_guard(str(r["source"])) if stream == keys.DEAD_LETTER_STREAM
                  else f"{{{stream}}}:g:{r['source']}" for r in records]
    args: list[object] = [ttl_s, DEAD_LETTER_MAXLEN]
    for r in records:
        raw = r.get("raw")
        if not isinstance(raw, str | bytes):
            raw = json.dumps(raw, default=str, ensure_ascii=False)
        args += [str(r["source"]), str(r.get("line", 0)), raw, str(r["field"]), str(r["reason"])]
    return int(client.eval(_DEAD_LETTER_LUA, 1 + len(guard_keys), stream, *guard_keys, *args))


def dead_letters(client: redis.Redis, count: int = 1000, stream: str = keys.DEAD_LETTER_STREAM) -> list[dict]:
    """The oldest `count` dead letters as dicts (with their stream `id`)."""
    out = []
    for entry_id, fields in client.xrange(stream, count=count):
        record = {_text(k): _text(v) for k, v in fields.items()}
        record["line"] = int(record.get("line", 0))
        record["id"] = _text(entry_id)
        out.append(record)
    return out


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
