"""The LLM reasoner: a better-worded explanation from an OpenAI-compatible gateway, when it pays.

An LLM call costs tens of milliseconds and money, so the design calls it only under a policy
(`decide`): the user asked why, a cold start, low bandit confidence, a high-value decision or a
cross-domain slate invoke it; a high-confidence cache hit, a returning user with strong signals,
a spent latency budget or the rate limit forbid it, and every "forbid" beats every "invoke".

When invoked, the prompt carries the user's context (recent items, mood, segment: the retrieval
half of RAG) and the grounded reasons from `serving.explain`, and asks for one sentence using only
those facts. The call has a hard deadline inside the 200 ms LLM-path budget; a timeout, an HTTP
error or an answer that is not the protocol's JSON falls back to the template, so a slow or broken
gateway costs at most the deadline. A local token bucket caps the call rate and a TTL cache
answers repeats of (user, item, reasons) without a call. The API key is sent, never logged.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import httpx

from serving.explain import ItemSignals, Reason, template

log = logging.getLogger(__name__)

# The design's latency budget of the whole LLM path (ARCHITECTURE.md, "Latency targets").
LLM_PATH_BUDGET_MS = 200.0
# Below this much budget left a call is not worth starting (a gateway rarely answers faster).
MIN_BUDGET_MS = 20.0
# Kept back from the budget for cancelling the call and answering with the template.
DEADLINE_MARGIN_MS = 10.0
# Sampling temperature: low, since the sentence must restate the given facts, not invent.
TEMPERATURE = 0.2
# Cached answers kept at most (oldest dropped first), and the longest sentence passed on.
_CACHE_ENTRIES = 10_000
_MAX_ANSWER_CHARS = 300
_MAX_CONTEXT_CHARS = 300

_SYSTEM_PROMPT = (
    "You explain to a user, in one short friendly sentence (at most 25 words), why an item was "
    "recommended to them. Use only the facts given below; do not invent anything else. "
    "Answer with the sentence only."
)

_FIELDS = {"base_url", "model", "api_key_env", "timeout_ms", "rate_per_second", "burst", "cache_ttl_s", "max_tokens"}


@dataclass(frozen=True)
class LlmConfig:
    """Where the gateway is and how much of it we may use; `api_key` is kept out of `repr`."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout_ms: float = 120
    rate_per_second: float = 5.0
    burst: float = 5.0
    cache_ttl_s: float = 600
    max_tokens: int = 80


def llm_config(section: dict | None) -> LlmConfig | None:
    """The serving config's `llm:` section, checked; None (templates only) when absent or empty.

    The key itself never sits in the file: `api_key_env` names the environment variable holding it.
    """
    if not section:
        return None
    if not isinstance(section, dict):
        raise ValueError(f"llm: expected a mapping, got {type(section).__name__}")
    unknown = sorted(set(section) - _FIELDS)
    if unknown:
        raise ValueError(f"llm: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
    base_url = _text(section, "base_url")
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"llm.base_url: must start with http:// or https://, got {base_url!r}")
    model = _text(section, "model")
    api_key = None
    if section.get("api_key_env") is not None:
        env = _text(section, "api_key_env")
        api_key = os.environ.get(env)
        if not api_key:
            raise ValueError(f"llm.api_key_env: environment variable {env} is not set or empty")
    rate = _number(section, "rate_per_second", LlmConfig.rate_per_second, minimum=0.0)
    max_tokens = section.get("max_tokens", LlmConfig.max_tokens)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"llm.max_tokens: must be a positive integer, got {max_tokens!r}")
    return LlmConfig(
        base_url=base_url.rstrip("/"),
        model=model,
        api_key=api_key,
        timeout_ms=_number(section, "timeout_ms", LlmConfig.timeout_ms, minimum=0.0),
        rate_per_second=rate,
        burst=_number(section, "burst", max(1.0, rate), minimum=1.0, inclusive=True),
        cache_ttl_s=_number(section, "cache_ttl_s", LlmConfig.cache_ttl_s, minimum=0.0, inclusive=True),
        max_tokens=max_tokens,
    )


def _text(section: dict, name: str) -> str:
    value = section.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"llm.{name}: must be a non-empty string, got {value!r}")
    return value.strip()


def _number(section: dict, name: str, default: float, minimum: float, inclusive: bool = False) -> float:
    value = section.get(name, default)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (value == minimum and not inclusive):
        bound = f"≥ {minimum:g}" if inclusive else f"> {minimum:g}"
        raise ValueError(f"llm.{name}: must be a number {bound}, got {value!r}")
    return float(value)


# -- the invocation policy ------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyInput:
    """What the serving path knows when deciding whether an explanation is worth an LLM call."""

    user_asked: bool  # the Explain RPC, or explain=true on Personalize
    cold_start: bool  # the user has no history
    bandit_trials: float  # low → low confidence
    high_value: bool  # e.g. a purchase-surface / high price decision
    cross_domain: bool  # candidates span several top-level categories/domains
    cache_hit_high_confidence: bool  # answered from a cache with high confidence
    returning_strong_signals: bool  # a returning user with strong signals
    budget_left_ms: float  # of the 200 ms LLM-path budget
    rate_available: bool = True  # filled in by the reasoner from its rate limiter


@dataclass(frozen=True)
class Decision:
    invoke: bool
    reason: str  # the rule that decided


def decide(p: PolicyInput, min_budget_ms: float, low_confidence_trials: float = 10.0) -> Decision:
    """Invoke the LLM or not, and the rule that said so; every do-not-invoke rule wins over every invoke rule."""
    if not p.budget_left_ms >= min_budget_ms:  # also catches NaN
        return Decision(False, "budget_spent")
    if not p.rate_available:
        return Decision(False, "rate_limited")
    if p.cache_hit_high_confidence:
        return Decision(False, "cache_hit")
    if p.returning_strong_signals:
        return Decision(False, "strong_signals")
    if p.user_asked:
        return Decision(True, "user_asked")
    if p.cold_start:
        return Decision(True, "cold_start")
    if p.bandit_trials < low_confidence_trials:
        return Decision(True, "low_confidence")
    if p.high_value:
        return Decision(True, "high_value")
    if p.cross_domain:
        return Decision(True, "cross_domain")
    return Decision(False, "no_trigger")


# -- the reasoner ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    text: str
    used_llm: bool  # False: the grounded template
    decision: str  # the policy rule (`Decision.reason`), or "not_configured"
    latency_ms: float
    # What happened: "template" (no call), "llm" (a call answered), "cache" (an earlier answer),
    # "timeout" or "error" (a call failed; the template served). For per-request metrics and logs.
    outcome: str = "template"


class TokenBucket:
    """`rate` tokens a second up to `burst`; `take()` spends one if there is one."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self._rate, self._burst, self._clock = rate, burst, clock
        self._tokens, self._last = burst, clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + max(0.0, now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class LlmReasoner:
    """Explanations for the serving path: the template, or the LLM's sentence when the policy allows."""

    def __init__(
        self,
        config: LlmConfig | None,
        clock: Callable[[], float] = time.monotonic,
        *,
        min_budget_ms: float = MIN_BUDGET_MS,
        low_confidence_trials: float = 10.0,
    ) -> None:
        self._config = config
        self._clock = clock
        self._min_budget_ms = min_budget_ms
        self._low_confidence_trials = low_confidence_trials
        self._stats = dict.fromkeys(
            ("requests", "invoked", "llm_ok", "timeouts", "errors", "cache_hits", "rate_limited"), 0)
        self._cache: OrderedDict[tuple, tuple[float, str]] = OrderedDict()
        self._bucket = TokenBucket(config.rate_per_second, config.burst, clock) if config else None
        self._client: httpx.AsyncClient | None = None
        if config is not None:
            headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
            # httpx's own timeout is only a backstop; the hard deadline is the asyncio one per call.
            self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(config.timeout_ms / 1000 + 1.0))
            self._url = f"{config.base_url.rstrip('/')}/chat/completions"

    @property
    def configured(self) -> bool:
        return self._config is not None

    async def explain(
        self, user_context: dict[str, str], s: ItemSignals, rs: list[Reason], policy: PolicyInput
    ) -> Explanation:
        """The sentence for item `s`: the LLM's when the policy invokes it and it answers in time, else the template.

        `user_context` goes into the prompt (minus `user_id`, which only keys the cache).
        """
        t0 = self._clock()
        self._stats["requests"] += 1
        fallback = template(s, rs)

        def answer(text: str, used_llm: bool, decision: str, outcome: str = "template") -> Explanation:
            return Explanation(text, used_llm, decision, (self._clock() - t0) * 1000.0, outcome)

        if self._config is None or self._client is None:
            return answer(fallback, False, "not_configured")
        decision = decide(replace(policy, rate_available=True), self._min_budget_ms, self._low_confidence_trials)
        if not decision.invoke:
            return answer(fallback, False, decision.reason)

        key = _cache_key(user_context, s, rs)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > t0:
            self._stats["cache_hits"] += 1
            return answer(cached[1], True, decision.reason, "cache")

        if self._bucket is None or not self._bucket.take():
            self._stats["rate_limited"] += 1
            return answer(fallback, False, "rate_limited")

        deadline_ms = min(self._config.timeout_ms, policy.budget_left_ms - DEADLINE_MARGIN_MS)
        if deadline_ms <= 0:
            return answer(fallback, False, "budget_spent")
        self._stats["invoked"] += 1
        text, outcome = await self._call(prompt_messages(user_context, s, rs), deadline_ms)
        if text is None:
            return answer(fallback, False, decision.reason, outcome)
        self._stats["llm_ok"] += 1
        if self._config.cache_ttl_s > 0:
            self._remember(key, text, self._clock() + self._config.cache_ttl_s)
        return answer(text, True, decision.reason, outcome)

    async def _call(self, messages: list[dict[str, str]], deadline_ms: float) -> tuple[str | None, str]:
        """(sentence, "llm") or (None, "timeout" | "error")."""
        assert self._config is not None and self._client is not None
        body = {"model": self._config.model, "messages": messages,
                "max_tokens": self._config.max_tokens, "temperature": TEMPERATURE}
        try:
            async with asyncio.timeout(deadline_ms / 1000.0):
                response = await self._client.post(self._url, json=body)
        except (TimeoutError, httpx.TimeoutException):
            self._stats["timeouts"] += 1
            log.warning("LLM gateway: no answer within %.0f ms; using the template", deadline_ms)
            return None, "timeout"
        except Exception as e:  # refused, reset, protocol error...: an optional helper must never fail the RPC
            self._stats["errors"] += 1
            log.warning("LLM gateway: %s; using the template", type(e).__name__)
            return None, "error"
        text = _content(response)
        if text is None:
            self._stats["errors"] += 1
            log.warning("LLM gateway: HTTP %d without a usable answer; using the template", response.status_code)
            return None, "error"
        return text, "llm"

    def _remember(self, key: tuple, text: str, expires: float) -> None:
        self._cache[key] = (expires, text)
        self._cache.move_to_end(key)
        while len(self._cache) > _CACHE_ENTRIES:
            self._cache.popitem(last=False)

    def stats(self) -> dict[str, int]:
        """Counters since start: requests, invoked (calls made), llm_ok, timeouts, errors, cache_hits, rate_limited."""
        return dict(self._stats)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def prompt_messages(user_context: dict[str, str], s: ItemSignals, rs: list[Reason]) -> list[dict[str, str]]:
    """The chat messages: the instruction, then the user's context, the item and its grounded reasons."""
    lines = ["About the user:"]
    lines += [f"- {_line(k)}: {_line(v)}" for k, v in sorted(user_context.items()) if k != "user_id" and _line(v)]
    if len(lines) == 1:
        lines.append("- (nothing known yet: a new user)")
    item = f"“{_line(s.title)}”" if _line(s.title) else f"item {_line(s.item_id)}"
    if s.categories:
        item += f" ({', '.join(_line(c) for c in s.categories)})"
    lines += ["", f"Recommended item: {item}", "Why it was recommended (strongest first):"]
    lines += [f"- {r.text}" for r in rs] or ["- (no specific reason: a general pick)"]
    return [{"role": "system", "content": _SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(lines)}]


def _content(response: httpx.Response) -> str | None:
    """choices[0].message.content of a 200 answer, as one bounded line; None for anything else."""
    if response.status_code != 200:
        return None
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(content, str):
        return None
    text = " ".join(content.split()).strip().strip('"“”').strip()
    if not text:
        return None
    return text if len(text) <= _MAX_ANSWER_CHARS else text[: _MAX_ANSWER_CHARS - 1] + "…"


def _cache_key(user_context: dict[str, str], s: ItemSignals, rs: list[Reason]) -> tuple:
    user = user_context.get("user_id") or tuple(sorted(user_context.items()))
    return (user, s.item_id, tuple((r.code, r.text) for r in rs))


def _line(text: object) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= _MAX_CONTEXT_CHARS else line[: _MAX_CONTEXT_CHARS - 1] + "…"
