"""A/B allocation (stable hash, configured shares), its statistics, and `pulserank evaluate ab`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from scipy.stats import binomtest, chi2_contingency

from models.ab_stats import newcombe_interval, two_proportion_z_test, wilson_interval
from pipelines import evaluate
from pipelines.ab import attribute_clicks, evaluate_logs
from schemas.events import parse_event
from serving.ab import Experiment, Variant, allocate, bucket, load_experiment

THREE_WAY = {"name": "exp-1", "variants": [
    {"name": "control", "weight": 0.5},
    {"name": "explore", "weight": 0.3, "n0": 5, "epsilon": 0.05},
    {"name": "candidate", "weight": 0.2, "model": "v2024-05-01", "n0": 40},
]}


# -- config ---------------------------------------------------------------------------------------


def test_load_experiment_defaults_and_fields():
    assert load_experiment(None) == Experiment("default", (Variant("default", 1.0),))
    assert load_experiment({}) == load_experiment(None)
    exp = load_experiment(THREE_WAY)
    assert exp.name == "exp-1"
    assert exp.variants == (Variant("control", 0.5), Variant("explore", 0.3, "production", 5.0, 0.05),
                            Variant("candidate", 0.2, "v2024-05-01", 40.0, 0.0))


@pytest.mark.parametrize("section, message", [
    ([], "experiment: expected a mapping"),
    ({"variants": [{"name": "a", "weight": 1}]}, "experiment.name: expected a string"),
    ({"name": "exp:1", "variants": [{"name": "a", "weight": 1}]}, "experiment.name: 'exp:1' must be"),
    ({"name": "e", "variants": []}, "experiment.variants: expected a non-empty list"),
    ({"name": "e", "variants": [{"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.4}]},
     "experiment.variants: weights must sum to 1, they sum to 0.9"),
    ({"name": "e", "variants": [{"name": "a", "weight": 0.5}, {"name": "a", "weight": 0.5}]},
     "experiment.variants[1].name: 'a' repeats variants[0]"),
    ({"name": "e", "variants": [{"name": "a", "weight": 1, "n0": -1}]}, "experiment.variants[0].n0: must be ≥ 0"),
    ({"name": "e", "variants": [{"name": "a", "weight": 1, "epsilon": 1.0}]},
     "experiment.variants[0].epsilon: must be within [0, 1)"),
    ({"name": "e", "variants": [{"name": "a", "weight": 1, "epsilon": -0.1}]}, "experiment.variants[0].epsilon"),
    ({"name": "e", "variants": [{"name": "a"}]}, "experiment.variants[0].weight: required"),
    ({"name": "e", "variants": [{"name": "a", "weight": "half"}]}, "experiment.variants[0].weight: expected a"),
    ({"name": "e", "variants": [{"name": "a", "weight": 1.5}, {"name": "b", "weight": -0.5}]},
     "experiment.variants[0].weight: must be within 0–1"),
    ({"name": "e", "variants": [{"name": "a", "weight": 1, "modle": "x"}]},
     "experiment.variants[0].modle: unknown field"),
    ({"name": "e", "variants": [{"name": "a", "weight": 1, "model": ""}]}, "experiment.variants[0].model"),
    ({"name": "e", "variants": [{"name": "a", "weight": 1}], "salt": 3}, "experiment.salt: unknown field"),
])
def test_load_experiment_names_the_bad_field(section, message):
    with pytest.raises(ValueError) as err:
        load_experiment(section)
    assert message in str(err.value)


# -- allocation -----------------------------------------------------------------------------------


def test_bucket_is_the_documented_sha256_position():
    # Pinned values: SDKs and edges in other languages must reproduce them from the module docstring.
    assert bucket("u1", "exp-1") == 0.7600282752001775
    assert bucket("user-42", "exp-1") == 0.12051692748703625
    assert bucket("u1", "exp-2") != bucket("u1", "exp-1")


def test_shares_over_100k_users_match_the_weights_within_one_point():
    exp = load_experiment(THREE_WAY)
    counts = Counter(allocate(f"user-{i}", exp).name for i in range(100_000))
    for v in exp.variants:
        assert abs(counts[v.name] / 100_000 - v.weight) < 0.01, (v.name, counts[v.name])
    positions = [bucket(f"user-{i}", "exp-1") for i in range(100_000)]
    assert all(0.0 <= b < 1.0 for b in positions)
    deciles = Counter(int(b * 10) for b in positions)
    assert all(abs(deciles[d] / 100_000 - 0.1) < 0.01 for d in range(10))


def test_experiments_split_users_independently():
    a = load_experiment({"name": "exp-a", "variants": [{"name": "x", "weight": 0.5}, {"name": "y", "weight": 0.5}]})
    b = load_experiment({"name": "exp-b", "variants": [{"name": "x", "weight": 0.5}, {"name": "y", "weight": 0.5}]})
    both = sum(allocate(f"u{i}", a).name == "x" and allocate(f"u{i}", b).name == "x" for i in range(40_000))
    assert abs(both / 40_000 - 0.25) < 0.01  # not 0.5: the experiment name is part of the hash


def test_zero_weight_variant_gets_nobody():
    exp = load_experiment({"name": "ramp", "variants": [{"name": "old", "weight": 0.0},
                                                        {"name": "new", "weight": 1.0}]})
    assert {allocate(f"u{i}", exp).name for i in range(5_000)} == {"new"}


def test_allocation_is_stable_across_processes():
    users = [f"user-{i}" for i in range(2_000)]
    exp = load_experiment(THREE_WAY)
    here = [allocate(u, exp).name for u in users]
    code = ("import json, sys; from serving.ab import allocate, load_experiment; "
            "exp = load_experiment(json.loads(sys.argv[1])); "
            "print(json.dumps([allocate(f'user-{i}', exp).name for i in range(2000)]))")
    for seed in ("1", "2"):  # Python's own hash() would differ between these two
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code, json.dumps(THREE_WAY)], capture_output=True, text=True,
                             env=env, timeout=60, check=True)
        assert json.loads(out.stdout) == here


# -- statistics -----------------------------------------------------------------------------------


@pytest.mark.parametrize("k, n", [(81, 263), (0, 10), (10, 10), (1, 2_000), (700, 4_000)])
def test_wilson_matches_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(ref.low, abs=1e-12) and high == pytest.approx(ref.high, abs=1e-12)


def test_difference_interval_and_z_test_match_references():
    # Newcombe (1998), Statistics in Medicine 17:873, table II example (56/70 vs 48/80): 0.0524 to 0.3339
    low, high = newcombe_interval(48, 80, 56, 70)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    z, p = two_proportion_z_test(48, 80, 56, 70)
    assert z > 0 and p == pytest.approx(chi2_contingency([[48, 32], [56, 14]], correction=False)[1], rel=1e-9)
    assert two_proportion_z_test(0, 50, 0, 70) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes ≤ trials"):
        wilson_interval(5, 3)


# -- evaluate ab ----------------------------------------------------------------------------------

T0 = 1_714_557_600_000  # 2024-05-01T10:00:00Z
MINUTE = 60_000
RATES = {"control": (2, 20), "explore": (3, 20)}  # clicked impressions: k of every n → 10 %, 15 %


def _event(**fields) -> str:
    return json.dumps(fields)


def _write_logs(tmp: Path) -> dict:
    """Impressions of exp-1 (allocated by serving.ab) with planted clicks, plus every kind of noise."""
    exp = load_experiment({"name": "exp-1", "variants": [{"name": "control", "weight": 0.5},
                                                          {"name": "explore", "weight": 0.5}]})
    lines: list[str] = []
    planted = {v: {"impressions": 0, "clicks": 0, "users": set()} for v in RATES}
    n = 0
    first_unclicked = None
    for u in range(1_000):
        user = f"u{u}"
        variant = allocate(user, exp).name
        request = f"req-{u}"
        for pos in range(8):
            n += 1
            ts = T0 + u * 10_000 + pos * 100
            item = f"item-{(u * 8 + pos) % 5000}"
            lines.append(_event(event_id=f"imp-{n}", ts=ts, user_id=user, type="impression", item_id=item,
                                request_id=request, position=pos, propensity=0.5, variant=variant,
                                context={"experiment": "exp-1", "segment": "s1"}))
            stats = planted[variant]
            k, every = RATES[variant]
            clicked = stats["impressions"] % every < k
            stats["impressions"] += 1
            stats["users"].add(user)
            if clicked:
                stats["clicks"] += 1
                lines.append(_event(event_id=f"clk-{n}", ts=ts + 10_000, user_id=user, type="click", item_id=item,
                                    request_id=request, position=pos))
                if n == 1:  # a second click on the same impression counts once
                    lines.append(_event(event_id="clk-again", ts=ts + MINUTE, user_id=user, type="click",
                                        item_id=item))
            elif first_unclicked is None:
                first_unclicked = (user, item, ts)
    user, item, ts = first_unclicked
    lines.append(_event(event_id="clk-late", ts=ts + 31 * MINUTE, user_id=user, type="click", item_id=item))
    lines.append(_event(event_id="clk-orphan", ts=T0, user_id="u1", type="click", item_id="never-shown"))
    lines.append(_event(event_id="imp-novariant", ts=T0, user_id="u9999", type="impression", item_id="i0",
                        request_id="r", position=0, context={"experiment": "exp-1"}))
    lines.append(_event(event_id="imp-other", ts=T0, user_id="u9998", type="impression", item_id="i0",
                        request_id="r", position=0, variant="control", context={"experiment": "exp-0"}))
    lines.insert(10, "this is not json")
    lines.insert(20, _event(event_id="broken", type="click"))
    (tmp / "a.jsonl").write_text("\n".join(lines[:4000]) + "\n\n")
    with open(tmp / "b.jsonl", "wb") as fh:
        fh.write(b"\xff\xfe not utf-8\n")
        fh.write(("\n".join(lines[4000:] + lines[:5]) + "\n").encode())  # the first 5 lines again
    repeated_valid = sum(1 for line in lines[:5] if _valid(line))
    repeated_bad = 5 - repeated_valid
    return {"planted": planted, "lines": len(lines) + 1 + 5, "bad": 3 + repeated_bad, "duplicates": repeated_valid}


def _valid(line: str) -> bool:
    try:
        parse_event(line)
    except ValueError:
        return False
    return True


def test_evaluate_ab_counts_exactly_what_was_planted(tmp_path):
    planted = _write_logs(tmp_path)
    report = evaluate_logs(str(tmp_path / "*.jsonl"), experiment="exp-1")
    assert report.lines == planted["lines"]
    assert report.bad_lines == planted["bad"] and len(report.bad_examples) == planted["bad"]
    assert any("not valid JSON" in e for e in report.bad_examples)
    assert any("not UTF-8" in e for e in report.bad_examples)
    assert report.duplicates == planted["duplicates"]
    assert report.impressions_without_variant == 1 and report.impressions_other_experiments == 1
    assert report.clicks_repeat == 1 and report.clicks_unattributed == 2  # the late click and the orphan
    assert report.baseline == "control" and [v.variant for v in report.variants] == ["control", "explore"]
    for v in report.variants:
        want = planted["planted"][v.variant]
        assert (v.users, v.impressions, v.clicks) == (len(want["users"]), want["impressions"], want["clicks"])
        k, every = RATES[v.variant]
        assert v.stats.low < k / every < v.stats.high  # the interval covers the planted rate
        ref = binomtest(v.clicks, v.impressions).proportion_ci(method="wilson")
        assert (v.stats.low, v.stats.high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert report.clicks_attributed == sum(v.clicks for v in report.variants)
    explore = report.variants[1].stats
    assert explore.diff == pytest.approx(0.05, abs=0.002)
    assert explore.diff_low < 0.05 < explore.diff_high and explore.p_value < 1e-6
    assert report.users_in_several_variants == 0


def test_evaluate_ab_asks_which_experiment_when_logs_hold_several(tmp_path):
    _write_logs(tmp_path)
    with pytest.raises(ValueError, match=r"several experiments \(exp-0, exp-1\): pick one with --experiment"):
        evaluate_logs(str(tmp_path / "*.jsonl"))
    with pytest.raises(ValueError, match="--experiment: no impression of experiment 'exp-9'"):
        evaluate_logs(str(tmp_path / "*.jsonl"), experiment="exp-9")
    with pytest.raises(ValueError, match="--baseline: no impressions of variant 'nope'"):
        evaluate_logs(str(tmp_path / "*.jsonl"), experiment="exp-1", baseline="nope")
    with pytest.raises(ValueError, match="matches no file"):
        evaluate_logs(str(tmp_path / "missing-*.jsonl"))


def test_clicks_go_to_the_latest_impression_within_the_window():
    def ev(eid, ts, etype, item="i1", variant=None):
        return parse_event({"event_id": eid, "ts": ts, "user_id": "u", "type": etype, "item_id": item,
                            **({"variant": variant} if variant else {})})

    imps = [ev("a", T0, "impression", variant="A"), ev("b", T0 + 5 * MINUTE, "impression", variant="B"),
            ev("c", T0 + 50 * MINUTE, "impression", variant="A")]
    clicks = [ev("k1", T0 + 6 * MINUTE, "click"),  # → b, the latest before it
              ev("k2", T0 - 1, "click"),  # before every impression
              ev("k3", T0 + 50 * MINUTE, "click"),  # same instant as c → c
              ev("k4", T0 + 81 * MINUTE, "click"),  # 31 min after c: outside the window
              ev("k5", T0 + 7 * MINUTE, "click", item="i2")]  # another item
    result = attribute_clicks(imps, clicks, 30 * MINUTE)
    assert result.clicked == [False, True, True]
    assert (result.attributed, result.repeat, result.unattributed) == (2, 0, 3)


def test_pulserank_evaluate_ab_command(tmp_path, capsys):
    planted = _write_logs(tmp_path)
    logs = str(tmp_path / "*.jsonl")
    assert evaluate.main(["ab", "--logs", logs, "--experiment", "exp-1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(v["variant"], v["impressions"], v["clicks"]) for v in out["variants"]] == [
        (name, planted["planted"][name]["impressions"], planted["planted"][name]["clicks"])
        for name in ("control", "explore")]
    assert evaluate.main(["ab", "--logs", logs, "--experiment", "exp-1", "--baseline", "explore"]) == 0
    text = capsys.readouterr().out
    assert "experiment exp-1" in text and "baseline" in text and f"skipped {planted['bad']} bad lines" in text
    assert text.index("\nexplore") < text.index("\ncontrol")
    # through the installed entry point: usage errors exit 2 with one line naming the option
    proc = subprocess.run([sys.executable, "-m", "pulserank.cli", "evaluate", "ab", "--logs", logs,
                           "--window-minutes", "0"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2 and "--window-minutes: must be > 0" in proc.stderr
