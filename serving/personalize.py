"""One Personalize request, stage by stage: context → retrieval → ranking → Thompson sampling →
explanations (ARCHITECTURE.md, "The serving path").

Redis is read twice per request — the user's context in one pipelined round trip, then the
bandit rows of the exploration pool (the ranker's top `rank_top`, timed in the `explore` stage:
decoding them for all ~500 candidates cost more than the ranker) — plus the vector-store
searches. The candidates' model features come from an in-process cache (`FeatureCache`); those
it lacks, and catalogue attributes when filters or explanations need them, take one more round
trip (the `features` stage). Each stage is timed into the metrics. The ranker's probability is the
Thompson-sampling prior; the bandit counts of the user's segment, borrowing from the global row
(`transforms/summaries/bandit.py`), are the evidence.

Retrieval sources (`SOURCES`): `collaborative` (the item-tower collection searched with the user
embedding), `content` (the content collection searched with the mean content vector of the
user's recent items) and `trending` (the segment's trending list). They are merged by relative
rank — each source's i-th item is placed at i / (its size) — so every source contributes its
best, deduplicated, the user's seen items dropped (retrieval mode only: a caller's candidate list
is ranked as given).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from schemas import keys
from schemas import personalization_pb2 as pb
from schemas.features import context_features
from serving import exploration
from serving.active_model import ActiveModel, collections_of
from serving.context import UserContext
from serving.edge_bandit import DEFAULT_TARGET_SHARE, EdgeExploration, ShareCalibrator
from serving.scoring import Scorer
from stores.deployment import ItemFeatures
from stores.serving_reads import ItemData, fetch_context, fetch_items
from stores.vector_store import Filter, VectorStore

log = logging.getLogger(__name__)

SOURCES = ("collaborative", "content", "trending")
DEFAULT_SEGMENT = "global"
NEW_WITHIN_DAYS = 30
# The current session's positives weigh n/(n + SESSION_HALF) in a re-embedded user vector: five
# session items weigh as much as the whole history before them.
SESSION_HALF = 5.0
DAY_MS = 86_400_000


@dataclass(frozen=True)
class ServingSizes:
    collaborative: int = 500
    content: int = 300
    trending: int = 200
    candidates: int = 500
    rank_top: int = 100
    per_source: int = 5  # of the rank_top pool exploration draws from, reserved for each source's best


@dataclass
class Variant:
    """What an A/B variant sets for a request (serving/ab.Variant has the same fields)."""

    name: str = "default"
    n0: float | None = None  # None: the n0 calibrated to the server's exploration share
    epsilon: float = 0.0


@dataclass
class Shown:
    item_id: str
    score: float
    position: int
    propensity: float
    explored: bool
    sources: tuple[str, ...]


@dataclass
class Outcome:
    """A Personalize result before it becomes the proto (the server adds explanations)."""

    request_id: str
    version: str
    items: list[Shown]
    context: UserContext | None
    data: ItemData | None
    degraded: bool = False
    candidates_per_source: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    stages_ms: dict[str, float] = field(default_factory=dict)
    feature_cache: tuple[int, int] = (0, 0)  # (hits, misses) of the item-feature cache
    pool: list[str] = field(default_factory=list)  # the exploration pool, ranker's order
    pool_scores: np.ndarray | None = None  # its ranker probabilities


class Timer:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = (now - self._t) * 1000.0
        self._t = now


class FeatureCache:
    """The model version's item features, held in memory: deploy writes them once per run, and
    reading ~500 of them (a 512-float content vector each) per request would dominate the
    latency. Bounded (LRU by item) and refreshed after `ttl_s`, so a re-deploy shows up."""

    def __init__(self, max_items: int = 200_000, ttl_s: float = 300.0) -> None:
        self.max_items = max_items
        self.ttl_s = ttl_s
        self._items: OrderedDict[tuple[str, str], tuple[float, ItemFeatures]] = OrderedDict()

    def missing(self, version: str, item_ids: Sequence[str]) -> list[str]:
        now = time.monotonic()
        out = []
        for item in item_ids:
            hit = self._items.get((version, item))
            if hit is None or now - hit[0] > self.ttl_s:
                out.append(item)
        return out

    def put(self, version: str, features: dict[str, ItemFeatures]) -> None:
        now = time.monotonic()
        for item, f in features.items():
            self._items[(version, item)] = (now, f)
            self._items.move_to_end((version, item))
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def get(self, version: str, item_ids: Sequence[str]) -> dict[str, ItemFeatures]:
        out = {}
        for item in item_ids:
            hit = self._items.get((version, item))
            if hit is not None:
                out[item] = hit[1]
        return out


def merge_sources(lists: dict[str, list[str]], sizes: dict[str, int], exclude: set[str], limit: int
                  ) -> tuple[list[str], dict[str, set[str]]]:
    """Items of every source by relative rank (i / size), deduplicated, `exclude` dropped, at most
    `limit`; and which sources proposed each kept item."""
    keyed = []
    for order, (source, items) in enumerate(lists.items()):
        size = max(1, sizes.get(source, len(items)))
        keyed += [(i / size, order, i, item, source) for i, item in enumerate(items)]
    keyed.sort()
    out: list[str] = []
    by: dict[str, set[str]] = {}
    for *_, item, source in keyed:
        if item in exclude:
            continue
        if item not in by:
            if len(out) >= limit:
                continue
            out.append(item)
            by[item] = set()
        by[item].add(source)
    return out, by


def pool(p: np.ndarray, sources: Sequence[set[str]], size: int, per_source: int) -> np.ndarray:
    """Indices of the pool exploration draws from, in the ranker's order: each source's best
    `per_source` items by p, then the best of the rest up to `size`. A ranker that follows one
    source's scores (the towers' dot product) would otherwise leave the other sources no item
    to explore."""
    ranked = np.lexsort((np.arange(len(p)), -p)).tolist()  # Python ints: this runs per request
    chosen: list[int] = []
    taken: set[int] = set()
    for source in sorted({s for ss in sources for s in ss}):
        found = 0
        for i in ranked:
            if found == per_source:
                break
            if source in sources[i] and i not in taken:
                chosen.append(i)
                taken.add(i)
                found += 1
    chosen = chosen[:size]
    for i in ranked:
        if len(chosen) >= size:
            break
        if i not in taken:
            chosen.append(i)
            taken.add(i)
    return np.array(sorted(chosen, key=lambda i: (-p[i], i)), dtype=np.int64)


def session_items(ctx: UserContext) -> list[str]:
    """The current session's distinct positive items among the last interactions, newest first."""
    return ctx.positives_since(ctx.session["start"]) if ctx.session else []


def blend_session(whole: np.ndarray, session: np.ndarray, n_session: int, half: float = SESSION_HALF) -> np.ndarray:
    """The user vector of the whole history moved toward the session's own: weight n/(n + half).

    The user tower averages its history, so a long-standing user's few new interactions barely
    move the mean (MovieLens-100K users hold ~100); a session that turns to something new should
    show in what is retrieved and ranked now, while the history still counts."""
    w = n_session / (n_session + half)
    return ((1.0 - w) * whole + w * session).astype(whole.dtype)


def has_filters(f: pb.Filters) -> bool:
    """True when the request constrains the items at all."""
    return bool(f.exclude_item_ids or f.include_categories or f.exclude_categories or f.HasField("price_range")
                or f.new_items_only)


def passes(item: str, categories: Sequence[str], attrs: dict[str, str], flt: pb.Filters, now_ms: int,
           excluded: set[str]) -> str | None:
    """None when the item passes the request's filters, else the filter that dropped it."""
    if item in excluded:
        return "exclude_item_ids"
    cats = {c for c in categories if c}
    if flt.include_categories and not cats & set(flt.include_categories):
        return "include_categories"
    if cats & set(flt.exclude_categories):
        return "exclude_categories"
    if flt.HasField("price_range"):
        price = attrs.get("price")
        lo = flt.price_range.min_price if flt.price_range.HasField("min_price") else None
        hi = flt.price_range.max_price if flt.price_range.HasField("max_price") else None
        if price is None:
            return "price_range"
        p = float(price)
        if (lo is not None and p < lo) or (hi is not None and p > hi):
            return "price_range"
    if flt.new_items_only:
        days = flt.new_within_days if flt.HasField("new_within_days") else NEW_WITHIN_DAYS
        created = attrs.get("created_at")
        if created is None or int(created) < now_ms - days * DAY_MS:
            return "new_items_only"
    return None


class Personalizer:
    """The origin's request path over one Redis client, one vector store and the active model."""

    def __init__(self, redis, store: VectorStore | None, active: ActiveModel, clock,
                 sizes: ServingSizes = ServingSizes(), sources: Sequence[str] = SOURCES,
                 bandit_tau_ms: float | None = None, n_sim: int = 250, seed: int | None = None,
                 exploration_share: float = DEFAULT_TARGET_SHARE) -> None:
        self.redis = redis
        self.store = store
        self.active = active
        self.clock = clock
        self.sizes = sizes
        self.sources = tuple(sources)
        self.bandit_tau_ms = bandit_tau_ms
        self.n_sim = n_sim
        self.rng = np.random.default_rng(seed)
        self._scorer: Scorer | None = None
        self._refused: set[str] = set()
        self.features = FeatureCache()
        # n0 for variants that leave it to the server: calibrated to `exploration_share` on the pools
        # this origin explored lately (`calibrate_exploration`); the stated default until then
        self.n0 = exploration.DEFAULT_N0
        self.calibrator = ShareCalibrator(exploration_share)

    @property
    def version(self) -> str | None:
        return self._scorer.version if self._scorer else None

    def refresh(self) -> None:
        """Follows the alias (blocking: the server runs it in a thread) and builds the new
        version's sessions before swapping them in, so requests see the old or the new whole.
        A version whose files do not load is refused; the old one keeps serving."""
        self.active.refresh()
        state = self.active.state
        if state is None or (self._scorer is not None and self._scorer.version == state.version):
            return
        if state.version in self._refused:
            return
        try:
            self._scorer = Scorer(state)
        except Exception as exc:  # onnxruntime refuses a corrupt or incompatible file
            self._refused.add(state.version)
            log.warning("serving: refusing model %s (%s); still serving %s", state.version, exc, self.version)

    def scorer(self) -> Scorer | None:
        """The sessions of the version being served (switched by `refresh`, never mid-request)."""
        if self._scorer is None:
            self.refresh()
        return self._scorer

    def user_embedding(self, scorer: Scorer, ctx: UserContext) -> tuple[np.ndarray, str]:
        """(embedding, where it came from): the batch one while it is fresh, else the user tower now
        on the history, blended toward the current session's positives (`blend_session`)."""
        if ctx.embedding is not None and ctx.embedding_is_fresh and len(ctx.embedding) == scorer.embedding_dim:
            return ctx.embedding, "batch"
        history = ctx.history(scorer.history_len)
        context = context_features(ctx.activity, ctx.now_ms)
        vec = scorer.embed_user(ctx.user_id, history, context)
        session = session_items(ctx)
        if session and len(session) < len(history):  # else the session is the whole history
            vec = blend_session(vec, scorer.embed_user(ctx.user_id, session, context), len(session))
        return vec, "fresh"


    def retrieve(self, scorer: Scorer, ctx: UserContext, user_vec: np.ndarray, seen: set[str]
                 ) -> tuple[list[str], dict[str, set[str]], dict[str, int]]:
        state = self.active.state
        collections = state.collections if state and state.version == scorer.version else \
            collections_of(scorer.version)
        not_seen = Filter.not_ids(seen) if seen else None
        lists: dict[str, list[str]] = {}
        if "collaborative" in self.sources and self.store is not None and not ctx.is_cold:
            hits = self.store.search(collections[keys.ITEMS], user_vec, self.sizes.collaborative, not_seen)
            lists["collaborative"] = [h.id for h in hits]
        recent = ctx.recent_items()
        if "content" in self.sources and self.store is not None and recent:
            vecs = self.store.get(collections[keys.CONTENT], recent)
            if vecs:
                pref = np.mean(np.stack(list(vecs.values())), axis=0)
                hits = self.store.search(collections[keys.CONTENT], pref, self.sizes.content, not_seen)
                lists["content"] = [h.id for h in hits]
        if "trending" in self.sources:
            lists["trending"] = [i for i, _ in ctx.trending[: self.sizes.trending]]
        sizes = {"collaborative": self.sizes.collaborative, "content": self.sizes.content,
                 "trending": self.sizes.trending}
        items, by = merge_sources(lists, sizes, seen, self.sizes.candidates)
        return items, by, {s: len(v) for s, v in lists.items()}

    async def personalize(self, req: pb.PersonalizeRequest, variant: Variant, request_id: str | None = None
                          ) -> Outcome:
        timer = Timer()
        request_id = request_id or uuid.uuid4().hex
        now = self.clock.now_ms()
        segment = req.context.segment or DEFAULT_SEGMENT
        scorer = self.scorer()
        if scorer is None:
            raise NoModelError("no production model is deployed yet")
        ctx = await fetch_context(self.redis, req.user_id, scorer.version, segment, now)
        timer.lap("context")
        user_vec, _ = self.user_embedding(scorer, ctx)
        if req.candidate_item_ids:
            items = list(dict.fromkeys(req.candidate_item_ids))
            by = {i: {"candidates"} for i in items}
            per_source = {"candidates": len(items)}
        else:
            items, by, per_source = self.retrieve(scorer, ctx, user_vec, ctx.seen_items())
        timer.lap("retrieve")
        missing = self.features.missing(scorer.version, items)
        f = req.filters
        attrs_needed = req.explain or f.HasField("price_range") or f.new_items_only
        data = ItemData({}, {}, {}, {})
        if missing or attrs_needed:  # bandit rows: only for the exploration pool, after ranking
            data = await fetch_items(self.redis, scorer.version, [], segment, now, self.bandit_tau_ms,
                                     features_for=missing, attributes_for=items if attrs_needed else [])
        self.features.put(scorer.version, data.features)
        data.features = self.features.get(scorer.version, items)
        timer.lap("features")
        excluded = set(req.filters.exclude_item_ids)
        filtering = has_filters(f)  # else skip `passes` for each of ~500 candidates
        dropped: dict[str, int] = {}
        kept = []
        for item in items:
            feat = data.features.get(item)
            why = "no_model_features" if feat is None else None
            if why is None and filtering:
                why = passes(item, feat.categories, data.attributes.get(item, {}), f, now, excluded)
            if why:
                dropped[why] = dropped.get(why, 0) + 1
            else:
                kept.append(item)
        feats = [data.features[i] for i in kept]
        p = scorer.rank(user_vec, kept, [f.categories for f in feats],
                        np.stack([f.content for f in feats]) if feats else np.zeros((0, scorer.content_dim)),
                        context_features(ctx.activity, now))
        order = pool(np.asarray(p), [by.get(i, set()) for i in kept], self.sizes.rank_top, self.sizes.per_source)
        top, p_top = [kept[i] for i in order], p[order].astype(np.float64)
        timer.lap("rank")
        evidence = await fetch_items(self.redis, None, top, segment, now, self.bandit_tau_ms, features_for=[],
                                     attributes_for=[])
        data.bandit, data.bandit_global = evidence.bandit, evidence.bandit_global
        shown = self.explore(top, p_top, data, segment, min(req.n, len(top)), variant, req.disable_exploration)
        for s in shown:
            s.sources = tuple(sorted(by.get(s.item_id, ())))
        timer.lap("explore")
        return Outcome(request_id, scorer.version, shown, ctx, data, False, per_source, dropped, timer.stages,
                       (len(items) - len(missing), len(missing)), top, p_top)

    def explore(self, items: list[str], p: np.ndarray, data: ItemData, segment: str, n: int, variant: Variant,
                disabled: bool) -> list[Shown]:
        if n <= 0 or not items:
            return []
        none, missing = (0.0, 0.0), (np.nan, np.nan)  # NaN: no global row, so no borrowing (the bare prior)
        seg = np.array([data.bandit.get(i, none) if segment != keys.GLOBAL_SEGMENT else none for i in items])
        glob = np.array([data.bandit_global.get(i, missing) for i in items])
        alpha, beta = exploration.posterior(seg[:, 0], seg[:, 1], glob[:, 0], glob[:, 1])
        prob = np.clip(p, 0.0, 1.0)
        n0 = self.n0 if variant.n0 is None else variant.n0
        if variant.n0 is None and not disabled:
            self.calibrator.observe(prob, n, seg[:, 0], seg[:, 1], glob[:, 0], glob[:, 1])
        slate = exploration.thompson_slate(prob, alpha, beta, n, self.rng, n0=n0, epsilon=variant.epsilon,
                                           explore=not disabled, n_sim=self.n_sim)
        return [Shown(items[int(i)], float(p[int(i)]), pos, float(slate.propensity[pos]), bool(slate.explored[pos]), ())
                for pos, i in enumerate(slate.order)]


    @property
    def calibration(self) -> tuple[str, float] | None:
        """(model version, monotonic time) of the last calibration of n0."""
        return self.calibrator.last

    def calibration_due(self) -> bool:
        return self.calibrator.due(self.version)

    def calibrate_exploration(self) -> float | None:
        """n0 for the configured share on the pools explored lately. The stated default (350) was
        chosen on probabilities far wider than trained rankers give, where it flags most of a slate
        explored. Blocking: the server runs it in a thread. ε stays the variant's (n0 = 0 when even
        that explores too little)."""
        def apply(found: EdgeExploration) -> None:
            log.info("exploration: n0 %g → %g for model %s (a %.0f %% share)", self.n0, found.n0, self.version,
                     100 * self.calibrator.share)
            self.n0 = found.n0

        found = self.calibrator.run(self.version or "", apply)
        return None if found is None else found.n0


class NoModelError(RuntimeError):
    """No verified, deployed model version to serve yet."""
