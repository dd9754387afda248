"""A re-embedded user vector leans toward the current session, so a session shift shows at once."""

from __future__ import annotations

import json

import numpy as np
import pytest

from schemas.clock import WALL
from schemas.features import context_features
from serving.active_model import ActiveModel
from serving.context import UserContext
from serving.personalize import SESSION_HALF, Personalizer, blend_session, session_items
from serving.scoring import Scorer

NOW = 1_700_000_000_000


def _ctx(recent: list[dict], session_start: int | None, seen: dict[str, int] | None = None) -> UserContext:
    session = None if session_start is None else {"key": "id:s", "start": session_start, "end": NOW}
    return UserContext("u", "global", NOW, None, None, seen or {}, recent, session, None, [])


def _event(ts: int, item: str, etype: str = "click") -> dict:
    return {"ts": ts, "event_id": f"e-{ts}", "type": etype, "item_id": item}


def test_session_items_are_the_current_sessions_positives_newest_first() -> None:
    recent = [_event(NOW - 1, "a"), _event(NOW - 2, "b", "impression"), _event(NOW - 3, "a", "view"),
              _event(NOW - 4, "c", "purchase"), _event(NOW - 60_000, "old")]
    assert session_items(_ctx(recent, NOW - 10)) == ["a", "c"]
    assert session_items(_ctx(recent, None)) == []


def test_the_session_weighs_n_over_n_plus_half() -> None:
    whole, session = np.zeros(4, np.float32), np.ones(4, np.float32)
    np.testing.assert_allclose(blend_session(whole, session, int(SESSION_HALF)), 0.5)
    np.testing.assert_allclose(blend_session(whole, session, 15), 0.75)
    assert blend_session(whole, session, 0).tolist() == [0.0] * 4
    assert blend_session(whole, session, 3).dtype == np.float32


def test_a_users_new_session_moves_the_served_vector_toward_the_sessions_items(trained_registry) -> None:
    """On the suite's trained model: a user with a long history whose session turned to other
    items. The served (fresh) vector is the history's, moved toward the session's own."""
    personalizer = Personalizer(None, None, ActiveModel(trained_registry.root), WALL)
    scorer = Scorer(personalizer.active.state)
    items = [json.loads(line)["item_id"] for line in
             (trained_registry.data_dir / "items.jsonl").read_text().splitlines() if line]
    history = {item: NOW - 86_400_000 * (k + 1) for k, item in enumerate(items[:60])}
    new = items[-5:]
    recent = [_event(NOW - 1000 * (k + 1), item) for k, item in enumerate(new)]
    ctx = _ctx(recent, NOW - 3_600_000, history)
    vec, source = personalizer.user_embedding(scorer, ctx)
    assert source == "fresh"
    context = context_features(ctx.activity, NOW)
    whole = scorer.embed_user("u", ctx.history(scorer.history_len), context)
    own = scorer.embed_user("u", new, context)
    np.testing.assert_allclose(vec, blend_session(whole, own, 5), rtol=1e-6)
    assert np.linalg.norm(vec - own) < np.linalg.norm(whole - own)  # closer to the session's own
    assert not np.allclose(vec, whole)
    # without a session the same interactions only join the history
    alone, _ = personalizer.user_embedding(scorer, _ctx(recent, None, history))
    np.testing.assert_allclose(alone, whole, rtol=1e-6)


@pytest.mark.parametrize("n", [1, 5, 40])
def test_the_blend_stays_on_the_segment_between_the_two(n: int) -> None:
    rng = np.random.default_rng(n)
    whole, session = rng.normal(size=8), rng.normal(size=8)
    out = blend_session(whole, session, n)
    w = n / (n + SESSION_HALF)
    np.testing.assert_allclose(out - whole, w * (session - whole))


def test_a_fresh_batch_embedding_is_served_as_it_is(trained_registry) -> None:
    """The ranker's user_embedding width is read by name, so a batch embedding of that width with no
    positives after it is used as deployed (no tower run, no blend), current session or not."""
    personalizer = Personalizer(None, None, ActiveModel(trained_registry.root), WALL)
    scorer = Scorer(personalizer.active.state)
    batch = scorer.embed_user("u", ["x"], context_features(1, NOW))
    assert scorer.embedding_dim == batch.shape[0]
    ctx = _ctx([_event(NOW - 10_000, "a")], NOW - 3_600_000)
    ctx.embedding, ctx.embedding_as_of = batch * 2, NOW - 1000  # newer than every interaction
    vec, source = personalizer.user_embedding(scorer, ctx)
    assert source == "batch" and np.array_equal(vec, batch * 2)
