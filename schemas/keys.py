"""The Redis key layout: every key the system writes is built here.

All keys of one user share the hash tag `{u:<id>}`, of one item `{i:<id>}`, of one segment's
bandit and trending rows `{s:<segment>}`, so on a Redis Cluster each merge and each per-user
read stays in one slot. An idempotency guard lives in the slot of the key it guards.
"""

from __future__ import annotations

PREFIX = "pr"

EVENT_STREAM = f"{PREFIX}:events"
DEAD_LETTER_STREAM = f"{PREFIX}:dead-letters"
GLOBAL_SEGMENT = "*"  # the bandit's and trending's all-segments row


def user(user_id: str, part: str) -> str:
    return f"{PREFIX}:{{u:{user_id}}}:{part}"


def item(item_id: str, part: str) -> str:
    return f"{PREFIX}:{{i:{item_id}}}:{part}"


def segment(name: str, part: str) -> str:
    return f"{PREFIX}:{{s:{name}}}:{part}"


def user_windows(user_id: str) -> str:
    """Hash of bucket field → count (transforms/summaries/windows.py)."""
    return user(user_id, "win")


def user_recent(user_id: str) -> str:
    """Sorted set of the last interactions, scored by event time."""
    return user(user_id, "recent")


def user_sessions(user_id: str) -> str:
    return user(user_id, "sess")


def user_emotion(user_id: str) -> str:
    return user(user_id, "emo")


def user_vectors(user_id: str) -> str:
    """Hash of `<kind>:<model version>` → decayed vector sums (collaborative, preference)."""
    return user(user_id, "vec")


def user_batch_embedding(user_id: str) -> str:
    """Hash of the batch user embeddings (pipelines/deploy): `<model version>` → epoch ms of the clock
    it was computed at, then the vector in that version's two-tower space as float16
    (stores/deployment.encode_user_embedding). One field per version, so a rollback finds its
    vectors still there."""
    return user(user_id, "bemb")


def user_seen(user_id: str) -> str:
    """The user's positive items (item id → last event time), the "already seen" set serving drops
    from candidates; written by pipelines/deploy as of its clock, capped at the most recent
    `SEEN_MAX`. One compact string (transforms/summaries/seen.py: "<newest ms>;" + deflated JSON),
    not a sorted set: a tenth of the memory. Interactions since then are in `user_recent`."""
    return user(user_id, "seen")


SEEN_MAX = 1000


def item_attributes(item_id: str) -> str:
    return item(item_id, "attrs")


def item_emotion(item_id: str) -> str:
    return item(item_id, "emo")


def item_model_features(item_id: str, model: str) -> str:
    """Hash of what serving's ranker needs about an item under one model version (pipelines/deploy):
    `categories` (JSON list padded with "" to the ranker's width), `content` and `embedding`
    (float32 bytes, little-endian), `popularity` (positive interactions in the log), `as_of` (ms)."""
    return item(item_id, f"feat:{model}")


def bandit(segment_name: str) -> str:
    """Hash of item → decayed (α, β) for one segment (GLOBAL_SEGMENT: every segment)."""
    return segment(segment_name, "bandit")


def bandit_rebuild(segment_name: str, run: str, part: str) -> str:
    """Scratch keys of one bandit re-derivation run (`part`: staging, snapshot), beside the live key."""
    return segment(segment_name, f"bandit:{part}:{run}")


def trending(segment_name: str) -> str:
    """Sorted set of item → forward-decayed interaction count at the landmark below."""
    return segment(segment_name, "trend")


def landmark_of(key: str) -> str:
    """Where a sorted set of decayed scores keeps the landmark its scores are held at."""
    return f"{key}:landmark"


def trending_landmark(segment_name: str) -> str:
    return landmark_of(trending(segment_name))


def hash_tag(key: str) -> str:
    start = key.index("{") + 1
    return key[start : key.index("}", start)]


def guard(key: str, summary_id: str) -> str:
    """The idempotency guard of one summary merged into `key` (same slot as `key`)."""
    return f"{PREFIX}:{{{hash_tag(key)}}}:g:{summary_id}"


def guard_pattern() -> str:
    return f"{PREFIX}:{{*}}:g:*"


DEPLOYED_MODELS = f"{PREFIX}:models:deployed"  # hash: model version → JSON record of its last deploy run
VECTOR_QUEUE = f"{PREFIX}:vectors:pending"  # upserts waiting for a single-writer vector store


# Vector-store collection kinds. For a trained version: ITEMS holds item-tower embeddings (the
# collaborative ANN), CONTENT content-tower vectors (the content ANN), USERS batch user embeddings
# (pipelines/deploy). For `hash-v0` (no model yet) ITEMS holds the hashed content vectors. The
# streaming path adds `users_collab` and `users_pref` (decayed means, transforms/sinks.py).
ITEMS = "items"
CONTENT = "content"
USERS = "users"


def vector_collection(kind: str, model: str) -> str:
    """Vector-store collection of `kind` (ITEMS, CONTENT, USERS, users_collab, users_pref) for one model version."""
    safe = "".join(ch if ch.isalnum() else "_" for ch in model.lower())
    return f"{kind}_{safe}"


# -- local live mode (stores/event_stream.py) --------------------------------------------------

EVENT_STREAM_ARCHIVED = f"{EVENT_STREAM}:archived"  # highest stream id archived to the lake


def seen_event(event_id: str) -> str:
    """Live mode's cross-batch dedupe marker for one event id (value: the batch that merged it)."""
    return f"{PREFIX}:seen:{event_id}"


def dead_letter_guard(source: str) -> str:
    """Written-once marker of one dead letter; its hash tag is the dead-letter stream's own name,
    so on a Redis Cluster it shares the stream's slot and one script can check and append."""
    return f"{{{DEAD_LETTER_STREAM}}}:g:{source}"


def live_batch(consumer: str) -> str:
    """The micro-batch a live driver hands to its (built-once) Beam pipeline."""
    return f"{PREFIX}:live:batch:{consumer}"
