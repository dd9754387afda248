"""Off-policy evaluation (models/ope.py), the Thompson slate sampler (serving/exploration.py) and
`pulserank evaluate ope` (pipelines/ope.py): coverage on a bandit with known values, the OBD check,
properties, bad input.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import ope
from pipelines import ope as ope_cli
from pipelines.datasets import FetchOptions, fetch, obd
from pipelines.datasets._io import DatasetUnavailable, pip_download
from serving.exploration import action_distribution, beta_parameters, sample_slate, sample_slates, slate_propensities

CACHE = FetchOptions().cache_dir


# -- a slate bandit with known policy values ----------------------------------------------------


def plackett_luce_marginals(scores: np.ndarray, k: int) -> np.ndarray:
    """Exact P(item at position) of a Plackett–Luce slate (draw without replacement ∝ score)."""
    n = scores.size
    marg = np.zeros((n, k))
    for slate in itertools.permutations(range(n), k):
        p, left = 1.0, scores.sum()
        for item in slate:
            p *= scores[item] / left
            left -= scores[item]
        marg[list(slate), np.arange(k)] += p
    return marg


class KnownBandit:
    """Contexts x (uniform), slates of K out of A items, position-based clicks q = θ[x, a]·κ[k].

    Each logged round is one impression, as in the OBD: a position k uniform, the item shown
    there by the logging policy's Plackett–Luce slate, its exact marginal propensity, a click.
    The target policy's value is computed exactly from the same model.
    """

    n_contexts, n_items, n_positions = 4, 6, 3

    def __init__(self) -> None:
        rng = np.random.default_rng(12345)
        self.theta = rng.uniform(0.05, 0.5, size=(self.n_contexts, self.n_items))
        self.kappa = np.array([1.0, 0.7, 0.5])
        self.q = self.theta[:, :, None] * self.kappa[None, None, :]  # (x, a, k)
        logging_scores = rng.uniform(0.5, 1.5, size=(self.n_contexts, self.n_items))
        self.pi_b = np.stack([plackett_luce_marginals(s, self.n_positions) for s in logging_scores])
        # the target favours the better items
        self.pi_e = np.stack([plackett_luce_marginals(t**2, self.n_positions) for t in self.theta])
        self.truth = float((self.pi_e * self.q).sum(axis=1).mean())
        self.logging_value = float((self.pi_b * self.q).sum(axis=1).mean())

    def sample(self, n: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The logged rounds (the estimators' arguments, π_e per round included) and their contexts."""
        x = rng.integers(0, self.n_contexts, n)
        k = rng.integers(0, self.n_positions, n)
        cdf = np.cumsum(self.pi_b[x, :, k], axis=1)
        a = np.minimum((rng.random(n)[:, None] > cdf).sum(axis=1), self.n_items - 1)
        r = (rng.random(n) < self.q[x, a, k]).astype(np.float64)
        logs = {"reward": r, "action": a, "position": k, "pscore": self.pi_b[x, a, k], "action_dist": self.pi_e[x]}
        return logs, x


def test_known_bandit_intervals_cover_the_true_value() -> None:
    bandit = KnownBandit()
    assert abs(bandit.truth - bandit.logging_value) > 0.02  # the target really differs from the logger
    trials, n = 100, 2_000
    values = {name: [] for name in ope.ESTIMATORS}
    covered = {name: 0 for name in ope.ESTIMATORS}
    for trial in range(trials):
        logs, _ = bandit.sample(n, np.random.default_rng(trial))
        for name, est in ope.evaluate(**logs, n_bootstrap=400, seed=trial).items():
            values[name].append(est.value)
            covered[name] += est.covers(bandit.truth)
    coverage = {name: c / trials for name, c in covered.items()}
    print(f"\nknown bandit: truth {bandit.truth:.4f} (logging policy {bandit.logging_value:.4f}); "
          f"95% coverage over {trials} trials of {n} rounds: {coverage}; "
          f"mean estimates { {k: round(float(np.mean(v)), 4) for k, v in values.items()} }")
    assert coverage["ips"] >= 0.90 and coverage["dr"] >= 0.90
    assert coverage["snips"] >= 0.85
    for name in ("ips", "dr"):  # unbiased: the mean over trials is within 3 standard errors of the truth
        v = np.asarray(values[name])
        assert abs(v.mean() - bandit.truth) < 3 * v.std(ddof=1) / np.sqrt(trials), name
    snips_mean = float(np.mean(values["snips"]))  # consistent: its O(1/n) bias is negligible here
    assert abs(snips_mean - bandit.truth) < 0.01


def test_dr_stays_unbiased_with_a_wrong_reward_model() -> None:
    """Double robustness: with exact propensities, even a badly wrong q̂ leaves DR unbiased."""
    bandit = KnownBandit()
    trials = 40
    wrong, true_q = [], []
    for trial in range(trials):
        logs, x = bandit.sample(2_000, np.random.default_rng(1_000 + trial))
        wrong.append(ope.dr(**logs, q_hat=np.full((bandit.n_items, bandit.n_positions), 0.9)))
        true_q.append(ope.dr(**logs, q_hat=bandit.q[x]))
    for values in (np.asarray(wrong), np.asarray(true_q)):
        assert abs(values.mean() - bandit.truth) < 3 * values.std(ddof=1) / np.sqrt(trials)
    assert np.std(true_q) < np.std(wrong)  # a better q̂ is a better control variate


# -- properties ---------------------------------------------------------------------------------


@st.composite
def context_free_logs(draw: st.DrawFn) -> dict[str, np.ndarray]:
    seed = draw(st.integers(0, 2**32 - 1))
    n_items = draw(st.integers(2, 8))
    n_positions = draw(st.integers(1, min(n_items, 4)))
    n = draw(st.integers(1, 300))
    rng = np.random.default_rng(seed)
    pi_b = rng.dirichlet(np.ones(n_items), size=n_positions).T + 1e-3
    pi_b /= pi_b.sum(axis=0)
    pi_e = rng.dirichlet(np.ones(n_items) * 0.5, size=n_positions).T
    k = rng.integers(0, n_positions, n)
    a = np.array([rng.choice(n_items, p=pi_b[:, j]) for j in k])
    r = (rng.random(n) < 0.3).astype(np.float64) * draw(st.sampled_from([1.0, 2.5]))
    return {"reward": r, "action": a, "position": k, "pscore": pi_b[a, k], "pi_b": pi_b, "pi_e": pi_e}


def _logged(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: d[key] for key in ("reward", "action", "position", "pscore")}


@given(context_free_logs())
@settings(max_examples=60, deadline=None)
def test_ips_and_snips_of_the_logging_policy_equal_the_on_policy_mean(d: dict[str, np.ndarray]) -> None:
    on_policy = d["reward"].mean()
    assert ope.ips(**_logged(d), action_dist=d["pi_b"]) == pytest.approx(on_policy, abs=1e-12)
    assert ope.snips(**_logged(d), action_dist=d["pi_b"]) == pytest.approx(on_policy, abs=1e-12)


@given(context_free_logs(), st.floats(0.01, 1.0))
@settings(max_examples=60, deadline=None)
def test_snips_ignores_a_common_scale_of_the_weights(d: dict[str, np.ndarray], c: float) -> None:
    scaled = {**_logged(d), "pscore": d["pscore"] * c}  # every weight × 1/c
    base = ope.snips(**_logged(d), action_dist=d["pi_e"])
    if np.isnan(base):
        assert np.isnan(ope.snips(**scaled, action_dist=d["pi_e"]))
        return
    assert ope.snips(**scaled, action_dist=d["pi_e"]) == pytest.approx(base, rel=1e-9, abs=1e-12)
    assert ope.ips(**scaled, action_dist=d["pi_e"]) == pytest.approx(ope.ips(**_logged(d), action_dist=d["pi_e"]) / c,
                                                                     rel=1e-9, abs=1e-12)


@given(context_free_logs())
@settings(max_examples=40, deadline=None)
def test_dr_with_a_zero_reward_model_is_ips(d: dict[str, np.ndarray]) -> None:
    zero = np.zeros_like(d["pi_e"])
    assert ope.dr(**_logged(d), action_dist=d["pi_e"], q_hat=zero) == pytest.approx(
        ope.ips(**_logged(d), action_dist=d["pi_e"]), abs=1e-12)


@given(context_free_logs(), st.integers(0, 2**32 - 1))
@settings(max_examples=30, deadline=None)
def test_estimates_do_not_depend_on_the_order_of_rounds(d: dict[str, np.ndarray], seed: int) -> None:
    perm = np.random.default_rng(seed).permutation(d["reward"].size)
    shuffled = {key: v[perm] for key, v in _logged(d).items()}
    q = ope.fit_reward_model(d["action"], d["position"], d["reward"], *d["pi_e"].shape)
    q_shuffled = ope.fit_reward_model(shuffled["action"], shuffled["position"], shuffled["reward"], *d["pi_e"].shape)
    np.testing.assert_allclose(q, q_shuffled, atol=1e-12)
    for fn in (ope.ips, ope.snips):
        a, b = fn(**_logged(d), action_dist=d["pi_e"]), fn(**shuffled, action_dist=d["pi_e"])
        assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, abs=1e-12)
    assert ope.dr(**_logged(d), action_dist=d["pi_e"], q_hat=q) == pytest.approx(
        ope.dr(**shuffled, action_dist=d["pi_e"], q_hat=q), abs=1e-12)


@given(context_free_logs())
@settings(max_examples=20, deadline=None)
def test_a_wider_level_gives_a_wider_interval_from_the_same_resamples(d: dict[str, np.ndarray]) -> None:
    narrow = ope.evaluate(**_logged(d), action_dist=d["pi_e"], n_bootstrap=200, level=0.8, seed=3)
    wide = ope.evaluate(**_logged(d), action_dist=d["pi_e"], n_bootstrap=200, level=0.99, seed=3)
    for name in ope.ESTIMATORS:
        if np.isnan(narrow[name].lower):
            continue
        assert wide[name].lower <= narrow[name].lower <= narrow[name].upper <= wide[name].upper


def test_intervals_are_reproducible_by_seed_and_vary_without_it() -> None:
    logs, _ = KnownBandit().sample(1_000, np.random.default_rng(7))
    a = ope.evaluate(**logs, n_bootstrap=200, seed=11)
    assert a == ope.evaluate(**logs, n_bootstrap=200, seed=11)
    assert a["ips"].lower != ope.evaluate(**logs, n_bootstrap=200, seed=12)["ips"].lower


def test_reward_model_shrinks_sparse_cells_to_their_position_rate() -> None:
    action = np.array([0] * 100 + [1] * 2 + [0] * 50)
    position = np.array([0] * 102 + [1] * 50)
    reward = np.array([1.0] * 20 + [0.0] * 80 + [1.0, 1.0] + [0.0] * 50)
    q = ope.fit_reward_model(action, position, reward, n_items=3, n_positions=2, smoothing=10.0)
    rho0 = 22 / 102
    assert q[0, 0] == pytest.approx((20 + 10 * rho0) / 110)
    assert q[1, 0] == pytest.approx((2 + 10 * rho0) / 12)  # two clicks in two views is not 100 %
    assert q[2, 0] == pytest.approx(rho0)  # never shown: the position's rate
    assert q[2, 1] == pytest.approx(0.0)  # position 1 never clicked
    crossed = ope.cross_fit_reward_model(action, position, reward, 3, 2, folds=2, seed=0)
    assert crossed.shape == (152, 3, 2)
    assert len({crossed[i].tobytes() for i in range(152)}) == 2  # one model per fold


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "argument"),
    [
        ({"pscore": [0.5, 0.0, 0.5]}, "pscore"),
        ({"pscore": [0.5, 1.5, 0.5]}, "pscore"),
        ({"pscore": [0.5, float("nan"), 0.5]}, "pscore"),
        ({"pscore": [0.5, 0.5]}, "pscore"),
        ({"action": [0, 1]}, "action"),
        ({"action": [0, 1, 5]}, "action_dist"),
        ({"action": [0, 1.5, 1]}, "action"),
        ({"position": [0, 0, 2]}, "action_dist"),
        ({"position": [0, -1, 0]}, "position"),
        ({"reward": [[1, 0, 0]]}, "reward"),
        ({"reward": []}, "reward"),
        ({"action_dist": np.full((3, 2), 0.5)}, "action_dist"),  # a position summing to 1.5
        ({"action_dist": np.full((4, 3, 2), 1 / 3)}, "action_dist"),  # 4 rounds of π_e for 3 logged
        ({"action_dist": np.full(3, 1 / 3)}, "action_dist"),
        ({"q_hat": np.zeros((3, 3))}, "q_hat"),
        ({"q_hat": np.zeros((2, 3, 2))}, "q_hat"),
        ({"n_bootstrap": 0}, "n_bootstrap"),
        ({"level": 1.0}, "level"),
        ({"estimators": ["ips", "magic"]}, "estimators"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_argument(change: dict, argument: str) -> None:
    good = {"reward": [1.0, 0.0, 0.0], "action": [0, 1, 2], "position": [0, 1, 0], "pscore": [0.5, 0.25, 0.5],
            "action_dist": np.full((3, 2), 1 / 3), "q_hat": np.zeros((3, 2))}
    with pytest.raises(ValueError, match=rf"^{argument}:"):
        ope.evaluate(**{**good, **change})


def test_sampler_bad_inputs_name_the_argument() -> None:
    with pytest.raises(ValueError, match="^alpha:"):
        action_distribution([1.0, 0.0], [1.0, 1.0], 1)
    with pytest.raises(ValueError, match="^beta:"):
        sample_slate([1.0, 1.0], [1.0, -2.0], 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="^alpha and beta:"):
        beta_parameters([1.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="^k:"):
        action_distribution([1.0, 1.0], [1.0, 1.0], 3)
    with pytest.raises(ValueError, match="^prior_mean:"):
        beta_parameters([1.0, 1.0], [1.0, 1.0], prior_mean=[0.5, 1.2], n0=10)
    with pytest.raises(ValueError, match="^n_sim:"):
        action_distribution([1.0, 1.0], [1.0, 1.0], 1, n_sim=0)


# -- the Thompson slate sampler -----------------------------------------------------------------


def test_action_distribution_matches_a_known_two_item_race() -> None:
    # X1 ~ Beta(2, 1) beats X0 ~ Beta(1, 1) with probability ∫ 2x · x dx = 2/3
    n_sim = 200_000
    d = action_distribution([1.0, 2.0], [1.0, 1.0], 2, n_sim=n_sim, seed=5)
    sigma = np.sqrt(2 / 9 / n_sim)
    assert abs(d[1, 0] - 2 / 3) < 4 * sigma
    np.testing.assert_allclose(d.sum(axis=0), 1.0)
    np.testing.assert_allclose(d.sum(axis=1), 1.0)  # a full ranking: each item somewhere
    np.testing.assert_array_equal(d, action_distribution([1.0, 2.0], [1.0, 1.0], 2, n_sim=n_sim, seed=5))


def test_action_distribution_matches_obps_one_draw_at_a_time_definition() -> None:
    # obp's BernoulliTS: per simulation, Beta draws, argsort()[::-1][:len_list], count (item, position)
    alpha, beta = np.array([3.0, 1.0, 8.0, 2.0, 5.0]), np.array([30.0, 5.0, 60.0, 40.0, 20.0])
    rng = np.random.default_rng(99)
    counts = np.zeros((5, 3))
    for _ in range(20_000):
        for pos, item in enumerate(rng.beta(alpha, beta).argsort()[::-1][:3]):
            counts[item, pos] += 1
    ours = action_distribution(alpha, beta, 3, n_sim=20_000, seed=1)
    assert np.max(np.abs(ours - counts / 20_000)) < 0.02


def test_prior_mean_with_a_large_strength_ranks_by_the_prior() -> None:
    p = np.array([0.1, 0.5, 0.9])
    slate = sample_slate(np.ones(3), np.ones(3), 3, np.random.default_rng(0), prior_mean=p, n0=1e6)
    assert slate.tolist() == [2, 1, 0]
    d = action_distribution(np.ones(3), np.ones(3), 2, n_sim=2_000, prior_mean=p, n0=1e6)
    np.testing.assert_array_equal(d, [[0, 0], [0, 1], [1, 0]])
    a, b = beta_parameters([1.0, 2.0], [3.0, 4.0], prior_mean=[0.25, 0.5], n0=4)
    np.testing.assert_allclose(a, [2.0, 4.0])
    np.testing.assert_allclose(b, [6.0, 6.0])


@given(st.integers(2, 12), st.integers(0, 2**32 - 1), st.integers(1, 50))
@settings(max_examples=40, deadline=None)
def test_slates_hold_distinct_items_and_their_propensities_come_from_the_distribution(
    n_items: int, seed: int, size: int
) -> None:
    rng = np.random.default_rng(seed)
    alpha, beta = rng.uniform(0.5, 5, n_items), rng.uniform(0.5, 5, n_items)
    k = int(rng.integers(1, n_items + 1))
    slates = sample_slates(alpha, beta, k, rng, size=size)
    assert slates.shape == (size, k)
    assert all(len(set(s.tolist())) == k for s in slates)
    d = action_distribution(alpha, beta, k, n_sim=500, seed=seed)
    props = slate_propensities(slates[0], d)
    np.testing.assert_array_equal(props, d[slates[0], np.arange(k)])


def test_models_ope_and_serving_exploration_import_neither_tensorflow_nor_beam() -> None:
    code = ("import sys, models.ope, serving.exploration; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'apache_beam')]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0


# -- the command on hand-written logs -----------------------------------------------------------


def _write_log(path: Path, events: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return path


def _impression(i: int, item: str, position: int, propensity: float, segment: str = "s", **extra) -> dict:
    return {"event_id": f"imp-{i}", "ts": 1_700_000_000_000 + i * 1000, "user_id": f"u{i % 3}", "type": "impression",
            "item_id": item, "context": {"segment": segment}, "request_id": f"req-{i}", "position": position,
            "propensity": propensity, "variant": "random", **extra}


def _click(i: int, item: str, position: int, segment: str = "s") -> dict:
    return {"event_id": f"imp-{i}-click", "ts": 1_700_000_000_001 + i * 1000, "user_id": f"u{i % 3}", "type": "click",
            "item_id": item, "context": {"segment": segment}, "request_id": f"req-{i}", "position": position}


def test_rounds_join_clicks_by_request_item_and_position(tmp_path: Path) -> None:
    events = [_impression(i, f"i{i % 4}", i % 2, 0.25) for i in range(40)]
    clicks = [_click(i, f"i{i % 4}", i % 2) for i in range(0, 40, 5)]
    clicks.append(_click(1, "i1", 0))  # wrong position for request 1: not a click on what was shown
    _write_log(tmp_path / "imp.jsonl", events)
    _write_log(tmp_path / "clk.jsonl", [*clicks, clicks[0]])  # a duplicate line counts once
    rounds, _ = ope_cli.rounds_from_events(ope_cli.read_events(ope_cli.expand(f"{tmp_path}/*.jsonl")))
    assert rounds.n == 40 and rounds.items == ["i0", "i1", "i2", "i3"] and rounds.segment == "s"
    assert rounds.reward.tolist() == [1.0 if i % 5 == 0 else 0.0 for i in range(40)]
    counts = ope_cli.bandit_counts(ope_cli.read_events(ope_cli.expand(f"{tmp_path}/*.jsonl")))
    # the streaming transform's counts: i0 shown 10 times, clicked at requests 0, 20 (i0 = i % 4 == 0, i % 5 == 0)
    assert counts["s"]["i0"] == (2.0, 8.0) and counts["*"]["i0"] == (2.0, 8.0)


def test_command_reports_json_and_uniform_ips_equals_the_logged_rate(tmp_path: Path, capsys) -> None:
    events = [_impression(i, f"i{i % 4}", i % 2, 0.25) for i in range(200)]
    _write_log(tmp_path / "logs" / "imp.jsonl", events)
    _write_log(tmp_path / "logs" / "clk.jsonl", [_click(i, f"i{i % 4}", i % 2) for i in range(0, 200, 7)])
    code = ope_cli.main(["--logs", f"{tmp_path}/logs/*.jsonl", "--policy", "uniform", "--bootstrap", "100", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rounds"] == 200 and report["clicks"] == 29
    assert report["estimates"]["ips"]["value"] == pytest.approx(29 / 200)
    code = ope_cli.main(["--logs", f"{tmp_path}/logs/*.jsonl", "--policy", "pulserank", "--bootstrap", "100",
                         "--n-sim", "2000"])
    out = capsys.readouterr().out
    assert code == 0 and "trained on 100 impressions" in out and "ips" in out and "dr" in out


def test_pulserank_split_keeps_each_request_on_one_side(tmp_path: Path) -> None:
    # 5 requests of 2 slots each; the earliest 50 % of impressions ends inside request 2
    events = [{**_impression(i, f"i{i % 3}", i % 2, 0.5), "request_id": f"req-{i // 2}"} for i in range(10)]
    _write_log(tmp_path / "imp.jsonl", events)
    report = ope_cli.evaluate_logs(str(tmp_path / "imp.jsonl"), "pulserank", n_bootstrap=50, n_sim=500)
    assert report["train"]["rounds"] == 6 and report["rounds"] == 4  # requests 0–2 train, 3–4 are evaluated


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--logs", "{tmp}/nothing-*.jsonl", "--policy", "uniform"], "--logs: "),
        (["--logs", "{tmp}/logs/*.jsonl", "--policy", "bts"], "--priors: the bts policy needs"),
        (["--logs", "{tmp}/logs/*.jsonl", "--policy", "bts", "--priors", "{tmp}/none.json"], "--priors: cannot read"),
        (["--logs", "{tmp}/logs/*.jsonl", "--policy", "bts", "--priors", "{tmp}/priors.json"], "no prior for logged"),
        (["--logs", "{tmp}/logs/*.jsonl", "--policy", "uniform", "--bootstrap", "1"], "n_bootstrap"),
        (["--logs", "{tmp}/logs/*.jsonl", "--policy", "pulserank", "--train-fraction", "1.5"], "--train-fraction"),
        (["--logs", "{tmp}/bad/*.jsonl", "--policy", "uniform"], "bad.jsonl:2: propensity:"),
        (["--logs", "{tmp}/two/*.jsonl", "--policy", "uniform"], "--segment: "),
    ],
)
def test_command_bad_input_exits_2_naming_the_option(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    _write_log(tmp_path / "logs" / "imp.jsonl", [_impression(i, f"i{i % 4}", i % 2, 0.25) for i in range(20)])
    (tmp_path / "priors.json").write_text(json.dumps({"s": {"i0": {"alpha": 1, "beta": 9}}}))
    bad = [_impression(0, "i0", 0, 0.5), {**_impression(1, "i1", 0, 0.5), "propensity": 0}]
    _write_log(tmp_path / "bad" / "bad.jsonl", bad)
    _write_log(tmp_path / "two" / "a.jsonl", [_impression(0, "i0", 0, 0.5), _impression(1, "i1", 0, 0.5, "t")])
    assert ope_cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    assert message in capsys.readouterr().err


# -- the Open Bandit Dataset check --------------------------------------------------------------


@pytest.fixture(scope="module")
def obd_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        pip_download(obd.OBP_SPEC, CACHE, *obd.OBP_PIP_ARGS)
    except DatasetUnavailable as exc:
        pytest.skip(f"package registry unreachable: {str(exc)[:200]}")
    out = tmp_path_factory.mktemp("obd-ope")
    fetch("obd", out, FetchOptions(cache_dir=CACHE))
    return out


def test_obd_bts_estimated_from_random_logs_covers_its_on_policy_click_rate(obd_logs: Path) -> None:
    bts_rounds, _ = ope_cli.rounds_from_events(ope_cli.read_events(ope_cli.expand(f"{obd_logs}/*/bts_all.jsonl")))
    on_policy = float(bts_rounds.reward.mean())
    n_clicks = sum(1 for _ in (obd_logs / "clicks" / "bts_all.jsonl").open())
    assert bts_rounds.n == 10_000 and on_policy == n_clicks / 10_000
    report = ope_cli.evaluate_logs(f"{obd_logs}/*/random_all.jsonl", "bts", priors=obd_logs / obd.PRIORS_FILE,
                                   n_bootstrap=2_000, seed=0)
    est = report["estimates"]
    print(f"\nOBD all: bts on-policy click rate {on_policy:.5f} ({n_clicks} clicks in 10,000); from the random logs "
          f"(logged rate {report['logged_click_rate']['value']:.5f}, ESS {report['effective_sample_size']:.0f}): "
          + "; ".join(f"{k} {v['value']:.5f} [{v['lower']:.5f}, {v['upper']:.5f}]" for k, v in est.items()))
    assert report["rounds"] == 10_000 and report["items"] == 80 and report["positions"] == 3
    assert report["variants"] == {"random": 10_000}
    for name in ("ips", "dr"):
        assert est[name]["lower"] <= on_policy <= est[name]["upper"], name


def test_obd_uniform_policy_on_the_random_logs_is_their_click_rate(obd_logs: Path) -> None:
    report = ope_cli.evaluate_logs(f"{obd_logs}/*/random_all.jsonl", "uniform", n_bootstrap=200)
    n_clicks = sum(1 for _ in (obd_logs / "clicks" / "random_all.jsonl").open())
    assert report["clicks"] == n_clicks
    assert report["estimates"]["ips"]["value"] == pytest.approx(n_clicks / 10_000)  # every weight is exactly 1


def test_obd_pulserank_policy_learned_on_half_the_random_logs(obd_logs: Path) -> None:
    report = ope_cli.evaluate_logs(f"{obd_logs}/*/random_all.jsonl", "pulserank", n_bootstrap=2_000, seed=0)
    print("\nOBD all, pulserank TS (learned on the earlier 5,000 random impressions, evaluated on the later 5,000):\n"
          + ope_cli.format_report(report))
    assert report["train"]["rounds"] == 5_000 and report["rounds"] == 5_000
    for e in report["estimates"].values():
        assert np.isfinite(e["value"]) and e["lower"] <= e["value"] <= e["upper"]
