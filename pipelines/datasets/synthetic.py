"""A seeded synthetic world with known ground truth, written as Pulserank event logs.

Real logs never say *why* a user clicked; this world does, so tests can check that the
system recovers what was put in. Everything is plain numpy and fully determined by
`(seed, SyntheticConfig)`:

- **Categories** have orthonormal centroids in a small latent space (when there are no more
  categories than latent dimensions). An **item** has one category, a latent vector (its
  centroid plus noise), a popularity, a price, a title and description drawn from its
  category's vocabulary, and up to four precomputed **modality vectors** of known
  informativeness: `image` (strong signal about the latent vector), `text` (moderate),
  `audio` (weak) and `video` (pure noise); each is missing with some probability.
- A **user** has a taste: a mixture over 1–3 categories, whose normalized centroid mix (plus
  noise) is the taste vector; a **segment** (`seg-0`…) follows the dominant category with
  probability `segment_purity`; a locale.
- **`click_probability(user, item, position)`** — a sharp logistic of taste·item affinity
  times a position discount 1/log2(2 + position) — is the one click model: generation uses
  it, and so do later bandit simulations and off-policy evaluation (OPE).
- **Sessions**: each has an intent category drawn from the taste. With probability
  `shift_probability` the intent shifts mid-session to another category (recorded in
  `session_shifts.jsonl`). Browse events (no `request_id`) follow the intent: views (value =
  dwell seconds), clicks (Bernoulli of `click_probability` at position 0), add-to-cart and
  purchase (value = price), ratings drawn from affinity, reviews whose sentiment words follow
  the rating (so a lexicon scorer such as VADER can read them), and skips of shown items of
  other categories (a negative signal).
- **Impressions**: a few requests per session show a slate of `slate_size` items drawn by a
  known stochastic *logging policy* — Plackett–Luce (sampling without replacement) with
  weights softmax(score / temperature) over the user's segment's candidate pool, the score
  being log-popularity plus a boost for the segment's categories. Each impression logs
  `propensity` = the exact marginal probability of that item at that position, `variant` =
  the policy name and a `request_id`; a `click` with the same `request_id` follows when a
  Bernoulli draw of `click_probability` succeeds. `SyntheticWorld.logging_propensities`
  exposes the policy so other policies can be evaluated on the same world.

Files written under `out`: `items.jsonl` (item events, earlier than every user event),
`events.jsonl` (user events sorted by ts then event_id; `duplicate_rate` re-emits some with
the same event_id, `disorder_rate` delivers some late), `truth.json`, `session_shifts.jsonl`
and `manifest.json`. Output is byte-identical for the same seed and config: a fixed base
instant, no wall clock, rounded floats and stable ordering. `SyntheticWorld.load(out)`
regenerates the world from the seed and config stored in `truth.json`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.datasets import FetchOptions
from pipelines.datasets._io import EventLogWriter, write_manifest
from schemas.clock import format_instant, parse_instant

NAME = "synthetic"
BASE_INSTANT = "2026-01-05T00:00:00.000Z"
BASE_MS = parse_instant(BASE_INSTANT)
LOGGING_POLICY = "logging-pl-softmax-v1"
DECIMALS = 6  # floats in events and truth
VECTOR_DECIMALS = 4  # modality vectors

# Real English sentiment words (in the VADER lexicon); category vocabularies are pseudo-words
# built from syllables, so they never carry sentiment.
POSITIVE_WORDS = ("great", "excellent", "love", "perfect", "wonderful", "amazing", "good", "happy",
                  "best", "fantastic", "nice", "recommend")
NEGATIVE_WORDS = ("bad", "terrible", "poor", "awful", "disappointing", "broken", "waste", "hate",
                  "worst", "boring", "useless", "ugly")
_FILLER = ("the", "this", "it", "was", "and", "really", "with", "for", "my", "very")
_CATEGORY_NAMES = ("books", "music", "garden", "sports", "kitchen", "toys", "travel", "beauty")
_CONSONANTS = "bdklmnrstvz"  # with these vowels no word is in a sentiment lexicon
_VOWELS = "aiou"
_DEVICES = ("mobile", "desktop", "tablet")
_LOCALES = ("en-US", "en-GB", "de-DE", "fr-FR", "ja-JP")
_BROWSE_SURFACES = ("browse", "search", "product")
_IMPRESSION_SURFACE = "home"

# RNG streams, so that changing one stage never shifts another's draws.
_STREAM_WORLD, _STREAM_EVENTS, _STREAM_NOISE = 0, 1, 2


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and knobs of the world; the defaults generate ~50k events in a few seconds."""

    n_users: int = 500
    n_items: int = 300
    n_categories: int = 8
    n_segments: int = 4
    latent_dim: int = 8
    scale: float = 1.0  # multiplies users and items (hence sessions and events)
    sessions_per_user: tuple[int, int] = (1, 4)  # inclusive range
    steps_per_session: tuple[int, int] = (6, 16)  # browse steps (one view each)
    requests_per_session: tuple[int, int] = (2, 4)  # impression requests (one slate each)
    slate_size: int = 3  # positions 0..slate_size-1
    candidate_pool: int = 40  # per segment, for the logging policy
    policy_temperature: float = 1.0
    segment_boost: float = 0.5  # logging score bonus for the segment's own categories
    segment_purity: float = 0.8  # P(segment follows the dominant taste category)
    shift_probability: float = 0.7  # P(a session's intent shifts midway)
    item_noise: float = 0.35  # norm of an item's deviation from its category centroid
    taste_noise: float = 0.1
    click_max: float = 0.5
    click_sharpness: float = 12.0
    click_threshold: float = 0.6
    cart_given_click: float = 0.35
    purchase_given_cart: float = 0.5
    rating_rate: float = 0.15  # per view
    review_given_rating: float = 0.5
    skip_rate: float = 0.5  # per browse step
    # (name, dim, signal, missing probability); signal 0 = pure noise. Listed most informative first.
    modalities: tuple[tuple[str, int, float, float], ...] = (
        ("image", 64, 1.5, 0.15),
        ("text", 32, 0.5, 0.10),
        ("audio", 16, 0.3, 0.40),
        ("video", 16, 0.0, 0.30),
    )
    span_days: int = 14
    duplicate_rate: float = 0.0  # share of user events re-emitted with the same event_id
    disorder_rate: float = 0.0  # share of events.jsonl lines delivered late (out of ts order)

    @property
    def users(self) -> int:
        return max(1, round(self.n_users * self.scale))

    @property
    def items(self) -> int:
        return max(self.n_categories, round(self.n_items * self.scale))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SyntheticConfig:
        """Inverse of `to_dict` (JSON turns tuples into lists)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: _tuplify(v) for k, v in data.items() if k in known})


def _tuplify(v: Any) -> Any:
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v


# -- the math (plain numpy) ----------------------------------------------------------------------


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


def position_discount(position: np.ndarray | int) -> np.ndarray:
    """Examination probability by slot (DCG-style): 1, 0.63, 0.5, … for positions 0, 1, 2."""
    return 1.0 / np.log2(2.0 + np.asarray(position, dtype=float))


def click_model(affinity: np.ndarray | float, position: np.ndarray | int, config: SyntheticConfig) -> np.ndarray:
    """P(click) from affinity: sharp, so that knowing the taste matters a lot."""
    relevance = config.click_max * sigmoid(config.click_sharpness * (np.asarray(affinity) - config.click_threshold))
    return relevance * position_discount(position)


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(scores, dtype=float) / temperature
    e = np.exp(z - z.max())
    return e / e.sum()


def plackett_luce_marginals(weights: np.ndarray, k: int) -> np.ndarray:
    """(k, n): exact P(item j at position i) for slates drawn without replacement ∝ weights.

    Enumerates ordered prefixes, so the cost is ~n^(k-1) vector steps: fine for slates of 3–4.
    """
    p = np.asarray(weights, dtype=float)
    n = len(p)
    k = min(k, n)
    if n ** max(k - 1, 0) > 2_000_000:
        raise ValueError(f"slate of {k} from {n} candidates is too large to enumerate exactly")
    out = np.zeros((k, n))

    def visit(taken: np.ndarray, prob: float, depth: int) -> None:
        free = np.where(taken, 0.0, p)
        nxt = free / free.sum()
        out[depth] += prob * nxt
        if depth + 1 < k:
            for j in np.flatnonzero(nxt):
                taken[j] = True
                visit(taken, prob * nxt[j], depth + 1)
                taken[j] = False

    visit(np.zeros(n, dtype=bool), 1.0, 0)
    return out


def sample_plackett_luce(weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """One slate (indices into `weights`) by the Gumbel-top-k trick, which is exactly Plackett–Luce."""
    keys = np.log(weights) + rng.gumbel(size=len(weights))
    return np.argsort(-keys, kind="stable")[:k]


def _make_vocabulary(rng: np.random.Generator, n_groups: int, words_per_group: int) -> list[list[str]]:
    """Distinct pseudo-words (consonant-vowel syllables), `words_per_group` for each group."""
    seen: set[str] = set()
    groups: list[list[str]] = []
    for _ in range(n_groups):
        words: list[str] = []
        while len(words) < words_per_group:
            n_syl = int(rng.integers(2, 4))
            word = "".join(_CONSONANTS[rng.integers(len(_CONSONANTS))] + _VOWELS[rng.integers(len(_VOWELS))]
                           for _ in range(n_syl))
            if word not in seen:
                seen.add(word)
                words.append(word)
        groups.append(words)
    return groups


def _r(x: float, decimals: int = DECIMALS) -> float:
    """Round for output; -0.0 becomes 0.0 so equal worlds print equal bytes."""
    return round(float(x), decimals) + 0.0


# -- the world -----------------------------------------------------------------------------------


class SyntheticWorld:
    """Users, items, the click model and the logging policy of one (seed, config)."""

    def __init__(self, seed: int = 0, config: SyntheticConfig | None = None) -> None:
        self.seed = int(seed)
        self.config = cfg = config or SyntheticConfig()
        if not 1 <= cfg.slate_size <= 4:
            raise ValueError("slate_size must be within 1..4")
        rng = np.random.default_rng([self.seed, _STREAM_WORLD])
        n_u, n_i, n_c, n_s, d = cfg.users, cfg.items, cfg.n_categories, cfg.n_segments, cfg.latent_dim

        self.category_names = [
            _CATEGORY_NAMES[c] if c < len(_CATEGORY_NAMES) else f"category-{c}" for c in range(n_c)
        ]
        self.segment_names = [f"seg-{g}" for g in range(n_s)]
        self.segment_of_category = np.arange(n_c) % n_s
        if n_c <= d:
            q, _ = np.linalg.qr(rng.normal(size=(d, d)))
            self.centroids = q[:n_c].copy()
        else:
            c = rng.normal(size=(n_c, d))
            self.centroids = c / np.linalg.norm(c, axis=1, keepdims=True)

        # Items: balanced categories, latent = centroid + noise of norm ~item_noise.
        self.item_category = rng.permutation(np.arange(n_i) % n_c)
        self.item_latent = self.centroids[self.item_category] + rng.normal(
            scale=cfg.item_noise / math.sqrt(d), size=(n_i, d)
        )
        self.item_log_popularity = rng.normal(size=n_i)
        category_price = np.exp(rng.normal(np.log(25.0), 0.6, size=n_c))
        self.item_price = np.round(category_price[self.item_category] * np.exp(rng.normal(0, 0.3, size=n_i)), 2)
        self.item_created_ms = BASE_MS - rng.integers(1, 365 * 86_400, size=n_i) * 1000
        self.items_by_category = [np.flatnonzero(self.item_category == c) for c in range(n_c)]

        # Modality vectors: signal · (random projection of the latent) + unit noise.
        self.modality_names = [m[0] for m in cfg.modalities]
        self.item_vectors: dict[str, np.ndarray] = {}
        self.item_vector_present: dict[str, np.ndarray] = {}
        for name, dim, signal, missing in cfg.modalities:
            projection = rng.normal(size=(dim, d))
            self.item_vectors[name] = signal * self.item_latent @ projection.T + rng.normal(size=(n_i, dim))
            self.item_vector_present[name] = rng.random(n_i) >= missing

        # Texts.
        vocab = _make_vocabulary(rng, n_c + 1, 40)
        self.category_vocabulary, self.shared_vocabulary = vocab[:n_c], vocab[n_c]
        self.item_title: list[str] = []
        self.item_description: list[str] = []
        for i in range(n_i):
            words = self.category_vocabulary[self.item_category[i]]
            title = " ".join(words[j].capitalize() for j in rng.choice(len(words), rng.integers(2, 5), False))
            n_desc = int(rng.integers(10, 26))
            from_cat = rng.random(n_desc) < 0.75
            desc = [
                words[rng.integers(len(words))] if fc else self.shared_vocabulary[rng.integers(40)]
                for fc in from_cat
            ]
            self.item_title.append(title)
            self.item_description.append(" ".join(desc))

        # Users: a mixture over 1–3 categories (dominant first), normalized, plus noise.
        self.user_categories: list[np.ndarray] = []
        self.user_weights: list[np.ndarray] = []
        self.user_taste = np.zeros((n_u, d))
        self.user_segment = np.zeros(n_u, dtype=int)
        for u in range(n_u):
            k = int(rng.integers(1, min(3, n_c) + 1))
            cats = rng.choice(n_c, k, replace=False)
            w = np.sort(rng.dirichlet(np.ones(k)))[::-1]
            taste = w @ self.centroids[cats]
            taste = taste / np.linalg.norm(taste) + rng.normal(scale=cfg.taste_noise / math.sqrt(d), size=d)
            self.user_categories.append(cats)
            self.user_weights.append(w)
            self.user_taste[u] = taste
            pure = rng.random() < cfg.segment_purity
            self.user_segment[u] = self.segment_of_category[cats[0]] if pure else rng.integers(n_s)
        self.user_locale = rng.integers(len(_LOCALES), size=n_u)

        # Logging policy: per segment, the top candidates by score, softmax weights.
        self._pools: list[np.ndarray] = []
        self._pool_weights: list[np.ndarray] = []
        self._propensities: list[np.ndarray] = []
        pool_size = min(cfg.candidate_pool, n_i)
        for g in range(n_s):
            score = self.item_log_popularity + cfg.segment_boost * (self.segment_of_category[self.item_category] == g)
            pool = np.argsort(-score, kind="stable")[:pool_size]
            weights = softmax(score[pool], cfg.policy_temperature)
            full = np.zeros((min(cfg.slate_size, pool_size), n_i))
            full[:, pool] = plackett_luce_marginals(weights, cfg.slate_size)
            self._pools.append(pool)
            self._pool_weights.append(weights)
            self._propensities.append(full)

    # ids ----------------------------------------------------------------------------------------

    @property
    def n_users(self) -> int:
        return len(self.user_taste)

    @property
    def n_items(self) -> int:
        return len(self.item_latent)

    def user_id(self, u: int) -> str:
        return f"user-{u:05d}"

    def item_id(self, i: int) -> str:
        return f"item-{i:05d}"

    def user_index(self, user_id: str) -> int:
        return int(user_id.rsplit("-", 1)[1])

    def item_index(self, item_id: str) -> int:
        return int(item_id.rsplit("-", 1)[1])

    def segment_index(self, segment: str) -> int:
        return self.segment_names.index(segment)

    # ground truth -------------------------------------------------------------------------------

    def affinity(self, users: np.ndarray | int, items: np.ndarray | int) -> np.ndarray:
        """taste·latent, broadcasting `users` against `items` (pass u[:, None], i[None, :] for a grid)."""
        u, i = np.asarray(users), np.asarray(items)
        return np.einsum("...d,...d->...", self.user_taste[u], self.item_latent[i])

    def click_probability(
        self, users: np.ndarray | int, items: np.ndarray | int, positions: np.ndarray | int = 0
    ) -> np.ndarray:
        """The click model shared by generation and every later simulation (broadcasts)."""
        return click_model(self.affinity(users, items), positions, self.config)

    def modality_informativeness(self) -> list[str]:
        """Modalities from most to least informative about the item latent (by design)."""
        signal = {m[0]: m[2] for m in self.config.modalities}
        return sorted(signal, key=lambda m: -signal[m])

    # logging policy ------------------------------------------------------------------------------

    def candidate_pool(self, segment: int) -> np.ndarray:
        """Item indices the logging policy may show to users of `segment` (best score first)."""
        return self._pools[segment]

    def logging_propensities(self, segment: int) -> np.ndarray:
        """(slate_size, n_items): P(item at position) under the logging policy in `segment`."""
        return self._propensities[segment]

    def sample_slate(self, segment: int, rng: np.random.Generator) -> np.ndarray:
        """Item indices for positions 0.. drawn by the logging policy."""
        pick = sample_plackett_luce(self._pool_weights[segment], self.config.slate_size, rng)
        return self._pools[segment][pick]

    def rating(self, affinity: float, rng: np.random.Generator) -> int:
        """1–5 stars, increasing with affinity, with noise."""
        mean = 1.0 + 4.0 * float(sigmoid(6.0 * (affinity - 0.45)))
        return int(np.clip(round(mean + rng.normal(0.0, 0.6)), 1, 5))

    def review_text(self, item: int, rating: int, rng: np.random.Generator) -> str:
        """Sentiment words by rating (5 → 3 positive … 1 → 3 negative) among neutral words."""
        n_pos, n_neg = {5: (3, 0), 4: (2, 0), 3: (1, 1), 2: (0, 2), 1: (0, 3)}[rating]
        vocab = self.category_vocabulary[self.item_category[item]]
        words = [POSITIVE_WORDS[j] for j in rng.choice(len(POSITIVE_WORDS), n_pos, replace=False)]
        words += [NEGATIVE_WORDS[j] for j in rng.choice(len(NEGATIVE_WORDS), n_neg, replace=False)]
        words += [vocab[j] for j in rng.integers(len(vocab), size=int(rng.integers(3, 7)))]
        words += [_FILLER[j] for j in rng.integers(len(_FILLER), size=int(rng.integers(2, 5)))]
        return " ".join(words[j] for j in rng.permutation(len(words)))

    def truth(self) -> dict[str, Any]:
        """The ground truth as JSON-ready data (rounded)."""
        return {
            "dataset": NAME,
            "seed": self.seed,
            "config": self.config.to_dict(),
            "base_instant": BASE_INSTANT,
            "categories": self.category_names,
            "segments": self.segment_names,
            "segment_of_category": {
                self.category_names[c]: self.segment_names[g] for c, g in enumerate(self.segment_of_category)
            },
            "modality_informativeness": self.modality_informativeness(),
            "logging_policy": {
                "variant": LOGGING_POLICY,
                "context": ["segment", "position"],
                "pools": {
                    self.segment_names[g]: [self.item_id(i) for i in pool] for g, pool in enumerate(self._pools)
                },
            },
            "click_model": {
                "formula": "click_max * sigmoid(click_sharpness * (taste . latent - click_threshold))"
                " / log2(2 + position)",
                "click_max": self.config.click_max,
                "click_sharpness": self.config.click_sharpness,
                "click_threshold": self.config.click_threshold,
            },
            "users": [
                {
                    "user_id": self.user_id(u),
                    "segment": self.segment_names[self.user_segment[u]],
                    "categories": [self.category_names[c] for c in self.user_categories[u]],
                    "weights": [_r(w) for w in self.user_weights[u]],
                    "taste": [_r(x) for x in self.user_taste[u]],
                }
                for u in range(self.n_users)
            ],
            "items": [
                {
                    "item_id": self.item_id(i),
                    "category": self.category_names[self.item_category[i]],
                    "latent": [_r(x) for x in self.item_latent[i]],
                }
                for i in range(self.n_items)
            ],
        }

    @classmethod
    def load(cls, out_dir: Path | str) -> SyntheticWorld:
        """Rebuild the world of a written data set from `truth.json` (seed + config)."""
        truth = json.loads((Path(out_dir) / "truth.json").read_text(encoding="utf-8"))
        world = cls(truth["seed"], SyntheticConfig.from_dict(truth["config"]))
        stored = np.array([u["taste"] for u in truth["users"]])
        if stored.shape != world.user_taste.shape or not np.allclose(stored, world.user_taste, atol=1e-5):
            raise ValueError(f"{out_dir}/truth.json was written by a different generator version")
        return world

    # items ----------------------------------------------------------------------------------------

    def item_event(self, i: int) -> dict[str, Any]:
        vectors = {
            name: [_r(x, VECTOR_DECIMALS) for x in self.item_vectors[name][i]]
            for name in self.modality_names
            if self.item_vector_present[name][i]
        }
        attributes: dict[str, Any] = {
            "title": self.item_title[i],
            "description": self.item_description[i],
            "categories": [self.category_names[self.item_category[i]]],
            "price": float(self.item_price[i]),
            "created_at": int(self.item_created_ms[i]),
        }
        if vectors:
            attributes["vectors"] = vectors
        return {
            "event_id": f"syn{self.seed}-item-{i:05d}",
            "ts": BASE_MS + 10 * i,
            "type": "item",
            "item_id": self.item_id(i),
            "attributes": attributes,
        }


# -- the behaviour ------------------------------------------------------------------------------


@dataclass
class Simulation:
    """What `simulate` produced: the user events, the shift ground truth and a few counts."""

    events: list[dict[str, Any]]  # user events, sorted by (ts, event_id)
    shifts: list[dict[str, Any]]
    sessions: int
    requests: int


class _UserLog:
    """Collects one user's events with sequential event ids (stable across runs)."""

    def __init__(self, world: SyntheticWorld, u: int, events: list[dict[str, Any]]) -> None:
        self.world, self.events, self.seq = world, events, 0
        self.user_id = world.user_id(u)
        self.prefix = f"syn{world.seed}-{self.user_id}-"

    def emit(self, ts: int, etype: str, item: int, ctx: dict[str, Any], **extra: Any) -> None:
        ev = {"event_id": f"{self.prefix}{self.seq:05d}", "ts": int(ts), "user_id": self.user_id,
              "type": etype, "item_id": self.world.item_id(item), "context": ctx}
        ev.update(extra)
        self.events.append(ev)
        self.seq += 1


def simulate(world: SyntheticWorld) -> Simulation:
    """All user events of the world (sessions, browsing, impressions), in time order."""
    cfg = world.config
    rng = np.random.default_rng([world.seed, _STREAM_EVENTS])
    events: list[dict[str, Any]] = []
    shifts: list[dict[str, Any]] = []
    n_sessions = n_requests = 0
    n_c = cfg.n_categories
    start_ms = BASE_MS + 3_600_000
    span_ms = cfg.span_days * 86_400_000
    not_in_category = [np.flatnonzero(world.item_category != c) for c in range(n_c)]
    positions = np.arange(cfg.slate_size)

    for u in range(world.n_users):
        log = _UserLog(world, u, events)
        seg = int(world.user_segment[u])
        segment = world.segment_names[seg]
        locale = _LOCALES[world.user_locale[u]]
        aff = world.affinity(u, np.arange(world.n_items))
        p_click = click_model(aff[None, :], positions[:, None], cfg)  # (position, item)
        propensities = world.logging_propensities(seg)
        # Which item of a category the user browses: taste first, popularity second.
        browse_logit = 3.0 * aff + 0.5 * world.item_log_popularity
        browse_p = [softmax(browse_logit[items]) for items in world.items_by_category]
        cats, weights = world.user_categories[u], world.user_weights[u]

        for s in range(int(rng.integers(cfg.sessions_per_user[0], cfg.sessions_per_user[1] + 1))):
            n_sessions += 1
            session_id = f"sess-{u:05d}-{s}"
            device = _DEVICES[rng.integers(len(_DEVICES))]
            base_ctx = {"device": device, "locale": locale, "segment": segment, "session_id": session_id}
            t = start_ms + int(rng.integers(0, span_ms))
            n_steps = int(rng.integers(cfg.steps_per_session[0], cfg.steps_per_session[1] + 1))
            intent_before = int(rng.choice(cats, p=weights))
            shift_step, intent_after = n_steps, intent_before
            if n_steps >= 2 and rng.random() < cfg.shift_probability:
                shift_step = int(rng.integers(max(1, n_steps // 3), max(2, (2 * n_steps) // 3) + 1))
                shift_step = min(shift_step, n_steps - 1)
                others = [(c, w) for c, w in zip(cats, weights, strict=True) if c != intent_before]
                if others and rng.random() < 0.7:
                    oc, ow = zip(*others, strict=True)
                    intent_after = int(rng.choice(oc, p=np.array(ow) / sum(ow)))
                else:
                    intent_after = int(rng.choice([c for c in range(n_c) if c != intent_before]))

            step_times: list[int] = []
            for k in range(n_steps):
                t += int(rng.integers(15_000, 120_000))
                step_times.append(t)
                intent = intent_before if k < shift_step else intent_after
                if k == shift_step:
                    shifts.append({
                        "user_id": log.user_id, "session_id": session_id, "segment": segment,
                        "ts": format_instant(t), "intent_before": world.category_names[intent_before],
                        "intent_after": world.category_names[intent_after],
                    })
                ctx = {**base_ctx, "surface": _BROWSE_SURFACES[rng.integers(len(_BROWSE_SURFACES))]}
                if rng.random() < cfg.skip_rate:  # scrolled past an item of another category
                    others_ = not_in_category[intent]
                    log.emit(t - int(rng.integers(1_000, 8_000)), "skip", int(others_[rng.integers(len(others_))]),
                             ctx)
                candidates = world.items_by_category[intent]
                item = int(candidates[rng.choice(len(candidates), p=browse_p[intent])])
                dwell = float(np.exp(rng.normal(math.log(20.0) + 1.5 * aff[item], 0.5)))
                log.emit(t, "view", item, ctx, value=_r(min(dwell, 3600.0), 1))
                if rng.random() < p_click[0, item]:
                    log.emit(t + int(rng.integers(1_000, 10_000)), "click", item, ctx)
                    if rng.random() < cfg.cart_given_click:
                        log.emit(t + int(rng.integers(10_000, 14_000)), "add_to_cart", item, ctx)
                        if rng.random() < cfg.purchase_given_cart:
                            log.emit(t + int(rng.integers(14_000, 15_000)), "purchase", item, ctx,
                                     value=float(world.item_price[item]))
                if rng.random() < cfg.rating_rate:
                    stars = world.rating(float(aff[item]), rng)
                    log.emit(t + 5_000, "rating", item, ctx, value=float(stars))
                    if rng.random() < cfg.review_given_rating:
                        log.emit(t + 6_000, "review", item, ctx, value=float(stars),
                                 text=world.review_text(item, stars, rng))

            # Impression requests at random moments of the session, logged with propensities.
            ctx = {**base_ctx, "surface": _IMPRESSION_SURFACE}
            for r in range(int(rng.integers(cfg.requests_per_session[0], cfg.requests_per_session[1] + 1))):
                n_requests += 1
                t_req = step_times[int(rng.integers(n_steps))] + int(rng.integers(500, 14_000))
                request_id = f"req-{u:05d}-{s}-{r}"
                for pos, item in enumerate(world.sample_slate(seg, rng).tolist()):
                    common = {"request_id": request_id, "position": pos, "variant": LOGGING_POLICY}
                    log.emit(t_req, "impression", item, ctx, **common,
                             propensity=max(_r(propensities[pos, item]), 1e-6))
                    if rng.random() < p_click[pos, item]:
                        log.emit(t_req + int(rng.integers(1_000, 20_000)), "click", item, ctx, **common)

    events.sort(key=lambda e: (e["ts"], e["event_id"]))
    shifts.sort(key=lambda x: (x["ts"], x["session_id"]))
    return Simulation(events, shifts, n_sessions, n_requests)


def corrupt(events: Sequence[dict[str, Any]], seed: int, duplicate_rate: float, disorder_rate: float
            ) -> list[dict[str, Any]]:
    """Re-emit some events (same event_id, right after the original: a retry) and deliver some late.

    A late event is moved after at least one event with a later ts (1–30 minutes late), so the
    share of lines whose ts is below the running maximum equals `disorder_rate` (up to ties).
    """
    rng = np.random.default_rng([seed, _STREAM_NOISE])
    lines = list(events)
    if duplicate_rate > 0:
        dup = set(rng.choice(len(lines), round(duplicate_rate * len(lines)), replace=False).tolist())
        lines = [e for i, ev in enumerate(lines) for e in ((ev, ev) if i in dup else (ev,))]
    if disorder_rate > 0 and lines:
        ts = np.array([e["ts"] for e in lines], dtype=np.int64)
        arrival = ts.astype(float)
        late = rng.choice(len(lines), round(disorder_rate * len(lines)), replace=False)
        delay = rng.integers(60_000, 1_800_000, size=len(late))
        next_greater = np.searchsorted(ts, ts[late], side="right")  # first index with a later ts
        for j, idx in enumerate(late):
            after = ts[next_greater[j]] if next_greater[j] < len(ts) else ts[idx]
            arrival[idx] = max(ts[idx] + delay[j], after + 0.5)
        order = np.lexsort((np.arange(len(lines)), arrival))
        lines = [lines[i] for i in order]
    return lines


def generate(out: Path, seed: int = 0, config: SyntheticConfig | None = None) -> dict[str, Any]:
    """Write the world of (seed, config) under `out`; returns the manifest."""
    config = config or SyntheticConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world = SyntheticWorld(seed, config)
    sim = simulate(world)
    lines = corrupt(sim.events, seed, config.duplicate_rate, config.disorder_rate)

    with EventLogWriter(out / "items.jsonl") as items:
        for i in range(world.n_items):
            items.write(world.item_event(i))
    with EventLogWriter(out / "events.jsonl") as log:
        for ev in lines:
            log.write(ev)
    with (out / "session_shifts.jsonl").open("w", encoding="utf-8", newline="\n") as fh:
        for shift in sim.shifts:
            fh.write(json.dumps(shift, sort_keys=True, separators=(",", ":")) + "\n")
    (out / "truth.json").write_text(
        json.dumps(world.truth(), sort_keys=True, separators=(",", ":")) + "\n", encoding="utf-8"
    )
    types = dict(sorted((items.types + log.types).items()))
    return write_manifest(
        out, NAME,
        {"items.jsonl": items.count, "events.jsonl": log.count},
        types=types, seed=seed, config=config.to_dict(), users=world.n_users, items=world.n_items,
        sessions=sim.sessions, requests=sim.requests, base_instant=BASE_INSTANT,
        logging_policy=LOGGING_POLICY,
        ground_truth={"world": "truth.json", "session_shifts": "session_shifts.jsonl", "shifts": len(sim.shifts)},
    )


def write(out: Path, options: FetchOptions) -> dict[str, Any]:
    """The `fetch` entry point: the default world, scaled by `options.scale`, seeded by `options.seed`."""
    return generate(out, options.seed, SyntheticConfig(scale=options.scale))
