"""The LLM reasoner: its invocation policy, hard deadline, cache, rate limit and prompt, against a loopback gateway."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from serving.explain import ItemSignals, reasons, template
from serving.llm import (
    DEADLINE_MARGIN_MS,
    Decision,
    LlmConfig,
    LlmReasoner,
    PolicyInput,
    decide,
    llm_config,
    prompt_messages,
)
from tests.llm_server import LlmServer

MIN_BUDGET = 20.0
# Nothing triggers and nothing forbids: the base every policy case changes one field of.
QUIET = PolicyInput(user_asked=False, cold_start=False, bandit_trials=500.0, high_value=False, cross_domain=False,
                    cache_hit_high_confidence=False, returning_strong_signals=False, budget_left_ms=150.0,
                    rate_available=True)
INVOKE = {
    "user_asked": {"user_asked": True},
    "cold_start": {"cold_start": True},
    "low_confidence": {"bandit_trials": 3.0},
    "high_value": {"high_value": True},
    "cross_domain": {"cross_domain": True},
}
FORBID = {
    "budget_spent": {"budget_left_ms": MIN_BUDGET - 1},
    "rate_limited": {"rate_available": False},
    "cache_hit": {"cache_hit_high_confidence": True},
    "strong_signals": {"returning_strong_signals": True},
}
CONTEXT = {"user_id": "u42", "recent_titles": "Heat; Ronin; The Godfather", "mood": "tense", "segment": "night owls"}
CASINO = ItemSignals("m1", "Casino", ("Crime",), 0.4, (("m2", "Heat", 0.82),), 3, "night owls", bandit_trials=4.0,
                     mood_match=("tense", 0.6))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def llm_server() -> Iterator[LlmServer]:
    server = LlmServer().start()
    yield server
    server.stop()


def asked(**changes: object) -> PolicyInput:
    return replace(QUIET, user_asked=True, **changes)


# -- the policy -----------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", sorted(INVOKE))
def test_each_invoke_rule_invokes(rule: str) -> None:
    assert decide(replace(QUIET, **INVOKE[rule]), MIN_BUDGET) == Decision(True, rule)


@pytest.mark.parametrize("rule", sorted(FORBID))
def test_each_do_not_invoke_rule_blocks_every_invoke_rule(rule: str) -> None:
    assert decide(replace(QUIET, **FORBID[rule]), MIN_BUDGET) == Decision(False, rule)
    all_triggers = {k: v for change in INVOKE.values() for k, v in change.items()}
    assert decide(replace(QUIET, **FORBID[rule], **all_triggers), MIN_BUDGET) == Decision(False, rule)


@pytest.mark.parametrize(("forbid", "trigger"), list(itertools.product(sorted(FORBID), sorted(INVOKE))))
def test_do_not_invoke_wins_pairwise(forbid: str, trigger: str) -> None:
    assert decide(replace(QUIET, **INVOKE[trigger], **FORBID[forbid]), MIN_BUDGET) == Decision(False, forbid)


def test_no_trigger_and_the_thresholds() -> None:
    assert decide(QUIET, MIN_BUDGET) == Decision(False, "no_trigger")
    assert decide(replace(QUIET, bandit_trials=10.0), MIN_BUDGET, low_confidence_trials=10.0).reason == "no_trigger"
    assert decide(replace(QUIET, bandit_trials=9.9), MIN_BUDGET, low_confidence_trials=10.0).reason == "low_confidence"
    assert decide(asked(budget_left_ms=MIN_BUDGET), MIN_BUDGET).invoke
    assert decide(asked(budget_left_ms=float("nan")), MIN_BUDGET).reason == "budget_spent"


# -- config ---------------------------------------------------------------------------------------


def test_config_absent_means_templates() -> None:
    assert llm_config(None) is None and llm_config({}) is None


def test_config_reads_the_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_LLM_KEY", "sk-secret-123")
    c = llm_config({"base_url": "http://127.0.0.1:8000/v1/", "model": "gpt-4o-mini", "api_key_env": "TEST_LLM_KEY",
                    "timeout_ms": 90, "rate_per_second": 2, "cache_ttl_s": 0})
    assert c == LlmConfig("http://127.0.0.1:8000/v1", "gpt-4o-mini", "sk-secret-123", 90.0, 2.0, 2.0, 0.0, 80)
    assert "sk-secret-123" not in repr(c)


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"model": "m"}, "llm.base_url"),
        ({"base_url": "127.0.0.1:8000", "model": "m"}, "llm.base_url"),
        ({"base_url": "http://h/v1"}, "llm.model"),
        ({"base_url": "http://h/v1", "model": "m", "timeout_ms": 0}, "llm.timeout_ms"),
        ({"base_url": "http://h/v1", "model": "m", "timeout_ms": "fast"}, "llm.timeout_ms"),
        ({"base_url": "http://h/v1", "model": "m", "rate_per_second": -1}, "llm.rate_per_second"),
        ({"base_url": "http://h/v1", "model": "m", "cache_ttl_s": -5}, "llm.cache_ttl_s"),
        ({"base_url": "http://h/v1", "model": "m", "max_tokens": 0}, "llm.max_tokens"),
        ({"base_url": "http://h/v1", "model": "m", "burst": 0.5}, "llm.burst"),
        ({"base_url": "http://h/v1", "model": "m", "api_key_env": "PULSERANK_TEST_UNSET_VAR"}, "llm.api_key_env"),
        ({"base_url": "http://h/v1", "model": "m", "api_key": "sk-inline"}, "api_key"),
        ("http://h/v1", "llm:"),
    ],
)
def test_config_errors_name_the_field(section: object, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        llm_config(section)  # type: ignore[arg-type]


# -- the reasoner against the loopback gateway ----------------------------------------------------


def test_without_config_templates_serve() -> None:
    async def run() -> None:
        r = LlmReasoner(None)
        rs = reasons(CASINO)
        e = await r.explain(CONTEXT, CASINO, rs, asked())
        assert (e.text, e.used_llm, e.decision) == (template(CASINO, rs), False, "not_configured")
        await r.aclose()

    asyncio.run(run())


def test_the_llm_sees_the_users_context_and_the_grounded_reasons(
    llm_server: LlmServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def run() -> None:
        r = LlmReasoner(LlmConfig(llm_server.base_url, "gpt-test", api_key="sk-abc", max_tokens=60))
        rs = reasons(CASINO)
        e = await r.explain(CONTEXT, CASINO, rs, asked())
        await r.aclose()
        assert (e.used_llm, e.decision, e.outcome) == (True, "user_asked", "llm")
        assert "tense" in e.text and "Heat; Ronin" in e.text  # the loopback model echoes the prompt it got
        assert r.stats() == {"requests": 1, "invoked": 1, "llm_ok": 1, "timeouts": 0, "errors": 0, "cache_hits": 0,
                             "rate_limited": 0}

    asyncio.run(run())
    (body,) = llm_server.requests
    assert body["model"] == "gpt-test" and body["max_tokens"] == 60 and 0 <= body["temperature"] <= 1
    prompt = body["messages"][-1]["content"]
    for value in ("Heat; Ronin; The Godfather", "tense", "night owls", "“Casino”"):
        assert value in prompt
    for r in reasons(CASINO):
        assert r.text in prompt
    assert "u42" not in prompt  # the user id keys the cache; the model does not need it
    assert "only the facts" in body["messages"][0]["content"]
    assert llm_server.headers[0]["Authorization"] == "Bearer sk-abc"
    assert "sk-abc" not in caplog.text


def test_a_new_user_prompt_says_nothing_is_known() -> None:
    (_, user) = prompt_messages({"user_id": "u1"}, ItemSignals("m1"), [])
    assert "new user" in user["content"] and "item m1" in user["content"]


@pytest.mark.parametrize("rule", sorted(set(FORBID) - {"rate_limited"}) + ["no_trigger"])
def test_do_not_invoke_makes_no_call(llm_server: LlmServer, rule: str) -> None:
    policy = replace(QUIET, **FORBID[rule], cold_start=True) if rule in FORBID else QUIET

    async def run() -> None:
        r = LlmReasoner(LlmConfig(llm_server.base_url, "m"))
        e = await r.explain(CONTEXT, CASINO, reasons(CASINO), policy)
        await r.aclose()
        assert (e.used_llm, e.decision, e.outcome) == (False, rule, "template")
        assert e.text == template(CASINO, reasons(CASINO))

    asyncio.run(run())
    assert llm_server.calls == 0


def test_the_cache_answers_repeats_without_a_call(llm_server: LlmServer) -> None:
    clock = FakeClock()

    async def run() -> None:
        r = LlmReasoner(LlmConfig(llm_server.base_url, "m", cache_ttl_s=60), clock=clock)
        rs = reasons(CASINO)
        first = await r.explain(CONTEXT, CASINO, rs, asked())
        again = await r.explain(CONTEXT, CASINO, rs, asked())
        assert (again.used_llm, again.outcome, again.text) == (True, "cache", first.text)
        assert llm_server.calls == 1 and r.stats()["cache_hits"] == 1
        await r.explain({**CONTEXT, "user_id": "u7"}, CASINO, rs, asked())  # another user
        await r.explain(CONTEXT, CASINO, rs[:1], asked())  # other reasons
        assert llm_server.calls == 3
        clock.now += 61  # past the TTL
        await r.explain(CONTEXT, CASINO, rs, asked())
        assert llm_server.calls == 4
        await r.aclose()

    asyncio.run(run())


def test_the_rate_limit_caps_calls(llm_server: LlmServer) -> None:
    clock = FakeClock()

    async def run() -> None:
        r = LlmReasoner(LlmConfig(llm_server.base_url, "m", rate_per_second=2, burst=2), clock=clock)
        items = [replace(CASINO, item_id=f"m{i}") for i in range(4)]
        got = [await r.explain(CONTEXT, s, reasons(s), asked()) for s in items[:3]]
        assert [e.used_llm for e in got] == [True, True, False]
        assert got[2].decision == "rate_limited" and got[2].text == template(items[2], reasons(items[2]))
        assert llm_server.calls == 2 and r.stats()["rate_limited"] == 1
        clock.now += 0.5  # one token back at 2 a second
        assert (await r.explain(CONTEXT, items[3], reasons(items[3]), asked())).used_llm
        assert not (await r.explain(CONTEXT, items[2], reasons(items[2]), asked())).used_llm
        assert llm_server.calls == 3
        await r.aclose()

    asyncio.run(run())


@pytest.mark.parametrize("mode", ["slow", "error", "garbage", "down"])
@pytest.mark.parametrize(("timeout_ms", "budget_left_ms"), [(120.0, 60.0), (40.0, 200.0)])
def test_a_slow_or_failing_llm_never_passes_the_budget(
    llm_server: LlmServer, caplog: pytest.LogCaptureFixture, mode: str, timeout_ms: float, budget_left_ms: float
) -> None:
    caplog.set_level(logging.DEBUG)
    llm_server.slow_s = 0.5
    if mode == "down":
        llm_server.stop()  # connection refused
    else:
        llm_server.mode = mode

    async def run() -> list[float]:
        r = LlmReasoner(LlmConfig(llm_server.base_url, "m", api_key="sk-never-logged", timeout_ms=timeout_ms))
        walls = []
        for i in range(3):
            s = replace(CASINO, item_id=f"m{i}")
            t0 = time.perf_counter()
            e = await r.explain(CONTEXT, s, reasons(s), asked(budget_left_ms=budget_left_ms))
            walls.append((time.perf_counter() - t0) * 1000)
            assert (e.used_llm, e.decision, e.text) == (False, "user_asked", template(s, reasons(s)))
            assert e.outcome == ("timeout" if mode == "slow" else "error")
        stats = r.stats()
        assert stats["invoked"] == 3 and stats["llm_ok"] == 0
        assert stats["timeouts" if mode == "slow" else "errors"] == 3
        await r.aclose()
        return walls

    walls = asyncio.run(run())
    assert max(walls) < budget_left_ms, walls
    if mode == "slow":  # waited up to the hard deadline, not the gateway's 500 ms
        assert min(walls) >= min(timeout_ms, budget_left_ms - DEADLINE_MARGIN_MS) - 1
    assert "sk-never-logged" not in caplog.text


def test_too_little_budget_left_makes_no_call(llm_server: LlmServer) -> None:
    async def run() -> None:
        r = LlmReasoner(LlmConfig(llm_server.base_url, "m"), min_budget_ms=5.0)
        e = await r.explain(CONTEXT, CASINO, reasons(CASINO), asked(budget_left_ms=DEADLINE_MARGIN_MS))
        assert (e.used_llm, e.decision) == (False, "budget_spent")
        await r.aclose()

    asyncio.run(run())
    assert llm_server.calls == 0
