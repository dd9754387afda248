"""Closed-loop bandit simulation on the synthetic world: serving's exploration policy against baselines.

Offline logs cannot say what a policy *would* have earned; a simulated world can. Each round a
user of `SyntheticWorld` arrives; a noisy ranker scores the catalogue and keeps the top
`candidates`; the policy shows `k` of them; clicks are drawn from the world's own click model
(`SyntheticWorld.click_probability`: relevance × the position discount); the shown items' clicks
and non-clicks are added to per-(segment, item) and global counts (raw, as the pipelines count
them), which the next rounds read borrowed from the global row
(`transforms.summaries.bandit.borrowed_posterior`), as serving does.

The ranker (the Thompson prior p) is calibrated to impressions — the click rate of an impression
averaged over the slate's positions, the scale raw counts have — and knows the truth only in part:

- `personalization` w: logit p = w·(the user's logit) + (1 − w)·(the item's logit over all
  users). 1 is a ranker that knows each user's taste, 0 one that knows only each item's overall
  appeal (a user-cold ranker);
- `item_bias`: a persistent per-item logit error (what per-item counts can correct);
- `request_noise`: fresh per-(request, item) logit noise (what they cannot).

What the counts can add is per-(segment, item) click rates. They help when the ranker's item
errors outweigh what it knows about the user (the defaults: w = 0.2, item errors of sd 1.5);
with a well-personalized ranker, segment counts that outgrow n0 drown its per-user signal and the
click rate falls over time (`benchmarks/bandit_loop.py` prints both regimes).

Policies:

- `thompson` — serving's sampler (`serving.exploration.sample_slates`) at `n0`, no ε;
- `epsilon-greedy` — the posterior mean (n0·p + α)/(n0 + α + β), each slot uniform with
  probability `epsilon` (the same slot rule as Thompson's ε);
- `uniform` — k distinct candidates uniformly at random;
- `ranker` — the ranker's top k, no exploration and no learning (a reference).

The environment (arrivals, ranker errors, click uniforms) is one seeded stream shared by every
policy (common random numbers), so differences come from the policies. Regret per round is the
expected clicks of the best slate from the same candidates (sorted by true relevance) minus the
shown slate's. The loop uses the sampler only: propensities are not needed to learn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipelines.datasets.synthetic import SyntheticConfig, SyntheticWorld, position_discount
from serving.exploration import DEFAULT_N0, Slate, epsilon_slots, sample_slates
from transforms.summaries.bandit import DEFAULT_STRENGTH, borrowed_posterior

POLICIES = ("thompson", "epsilon-greedy", "uniform", "ranker")

# RNG streams: the shared environment, then one per policy's own randomness.
_STREAM_ENV, _STREAM_POLICY = 0, 1


@dataclass(frozen=True)
class LoopConfig:
    rounds: int = 4_000
    k: int = 10
    candidates: int = 100
    n0: float = DEFAULT_N0
    epsilon: float = 0.1  # ε-greedy's share of uniform slots
    personalization: float = 0.2  # share of the ranker's logit that follows the user (module doc)
    item_bias: float = 1.5  # sd of the ranker's persistent per-item logit error
    request_noise: float = 0.3  # sd of the ranker's per-(request, item) logit noise
    seed: int = 0
    world_seed: int = 0
    world: SyntheticConfig = field(default_factory=lambda: SyntheticConfig(n_users=500, n_items=300))


@dataclass(frozen=True, eq=False)
class LoopResult:
    """Per-round outcomes of one policy."""

    policy: str
    k: int
    clicks: np.ndarray  # [rounds] clicks drawn
    expected: np.ndarray  # [rounds] expected clicks of the shown slate under the world's click model
    regret: np.ndarray  # [rounds] best slate's expected clicks − the shown slate's
    explored: np.ndarray  # [rounds] shown items placed above their ranker-only position

    def click_rate(self, windows: int) -> np.ndarray:
        """Clicks per impression in `windows` consecutive, equal blocks of rounds."""
        return np.array([c.sum() / (c.size * self.k) for c in np.array_split(self.clicks, windows)])

    def cumulative_regret(self) -> np.ndarray:
        return np.cumsum(self.regret)

    @property
    def exploration_share(self) -> float:
        return float(self.explored.sum() / (self.explored.size * self.k))


def run_loop(policy: str, config: LoopConfig | None = None, world: SyntheticWorld | None = None) -> LoopResult:
    """Play `config.rounds` rounds of `policy` against the world; same config → same result."""
    if policy not in POLICIES:
        raise ValueError(f"policy: unknown {policy!r}; choose one of {', '.join(POLICIES)}")
    cfg = config or LoopConfig()
    if not 1 <= cfg.k <= cfg.candidates:
        raise ValueError(f"k: expected 1..{cfg.candidates} (the candidates), got {cfg.k}")
    if not 0.0 <= cfg.personalization <= 1.0:
        raise ValueError(f"personalization: expected a share in [0, 1], got {cfg.personalization}")
    world = world or SyntheticWorld(cfg.world_seed, cfg.world)
    if cfg.candidates > world.n_items:
        raise ValueError(f"candidates: the world has only {world.n_items} items, got {cfg.candidates}")
    n_items, n_seg, k, c = world.n_items, len(world.segment_names), cfg.k, cfg.candidates

    env = np.random.default_rng([cfg.seed, _STREAM_ENV])
    relevance = world.click_probability(np.arange(world.n_users)[:, None], np.arange(n_items)[None, :], 0)
    calibrated = relevance * position_discount(np.arange(cfg.k)).mean()
    user_logit = np.log(calibrated) - np.log1p(-calibrated)
    appeal = calibrated.mean(axis=0)  # the item's click probability over all users
    item_logit = np.log(appeal) - np.log1p(-appeal)
    true_logit = cfg.personalization * user_logit + (1.0 - cfg.personalization) * item_logit
    bias = env.normal(0.0, cfg.item_bias, n_items)
    users = env.integers(world.n_users, size=cfg.rounds)
    click_u = env.random((cfg.rounds, k))
    discount = position_discount(np.arange(k))

    rng = np.random.default_rng([cfg.seed, _STREAM_POLICY, POLICIES.index(policy)])
    seg_clicks = np.zeros((n_seg, n_items))
    seg_misses = np.zeros((n_seg, n_items))
    glob_clicks = np.zeros(n_items)
    glob_misses = np.zeros(n_items)
    out = {name: np.zeros(cfg.rounds) for name in ("clicks", "expected", "regret", "explored")}
    for t in range(cfg.rounds):
        u = int(users[t])
        g = int(world.user_segment[u])
        score = true_logit[u] + bias + env.normal(0.0, cfg.request_noise, n_items)
        cand = np.argpartition(-score, c - 1)[:c]
        p = 1.0 / (1.0 + np.exp(-score[cand]))
        shown = _choose(policy, p, cand, g, cfg, rng, seg_clicks, seg_misses, glob_clicks, glob_misses)

        items = cand[shown]
        prob = relevance[u, items] * discount
        clicked = (click_u[t] < prob).astype(float)
        seg_clicks[g, items] += clicked
        seg_misses[g, items] += 1.0 - clicked
        glob_clicks[items] += clicked
        glob_misses[items] += 1.0 - clicked

        ranker_rank = np.empty(c, dtype=np.intp)
        ranker_rank[np.argsort(-p, kind="stable")] = np.arange(c)
        out["clicks"][t] = clicked.sum()
        out["expected"][t] = prob.sum()
        out["regret"][t] = np.sort(relevance[u, cand])[::-1][:k] @ discount - prob.sum()
        out["explored"][t] = np.count_nonzero(np.arange(k) < ranker_rank[shown])
    return LoopResult(policy, k, **out)


def run_all(config: LoopConfig | None = None, policies: tuple[str, ...] = POLICIES) -> dict[str, LoopResult]:
    """Every policy on the same world and environment stream."""
    cfg = config or LoopConfig()
    world = SyntheticWorld(cfg.world_seed, cfg.world)
    return {policy: run_loop(policy, cfg, world) for policy in policies}


def _choose(policy: str, p: np.ndarray, cand: np.ndarray, g: int, cfg: LoopConfig, rng: np.random.Generator,
            seg_clicks: np.ndarray, seg_misses: np.ndarray, glob_clicks: np.ndarray,
            glob_misses: np.ndarray) -> np.ndarray:
    """Indices into the candidates, shown order."""
    k, c = cfg.k, cand.size
    if policy == "uniform":
        return rng.choice(c, k, replace=False)
    if policy == "ranker":
        return np.argsort(-p, kind="stable")[:k]
    alpha, beta = borrowed_posterior((seg_clicks[g, cand], seg_misses[g, cand]),
                                     (glob_clicks[cand], glob_misses[cand]), DEFAULT_STRENGTH)
    if policy == "thompson":
        return sample_slates(alpha, beta, k, rng, prior_mean=p, n0=cfg.n0)[0]
    mean = (cfg.n0 * p + alpha) / (cfg.n0 + alpha + beta)  # epsilon-greedy
    return epsilon_slots(np.argsort(-mean, kind="stable")[:k], c, cfg.epsilon, rng)[0]


# -- measuring how close a slate stays to the ranker ---------------------------------------------


def calibrated_probabilities(rng: np.random.Generator, retrieved: int = 500, keep: int = 100,
                             mean: float = -6.0, sd: float = 2.0) -> np.ndarray:
    """A ranker's top-`keep` probabilities as a calibrated click model spreads them, in random order.

    logit p ~ N(mean, sd) over `retrieved` candidates, the `keep` highest kept: a few high, a long
    tail (defaults: median top 0.49, 10th 0.13, 20th 0.08, 100th 0.013). Shuffled, so that the
    candidates' index order carries no information.
    """
    logits = np.sort(rng.normal(mean, sd, retrieved))[::-1][:keep]
    return (1.0 / (1.0 + np.exp(-logits)))[rng.permutation(keep)]


def ranker_tau(slate: Slate) -> float:
    """Kendall τ between the shown order and the ranker's order of the same items (1 = identical)."""
    r = np.asarray(slate.ranker_rank)
    if r.size < 2:
        return 1.0
    upper = np.triu_indices(r.size, 1)
    sign = np.sign(r[None, :] - r[:, None])[upper]  # +1 when the earlier-shown item ranks earlier
    return float(sign.sum() / sign.size)
