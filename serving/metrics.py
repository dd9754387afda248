"""The origin's Prometheus metrics (prometheus-client), one registry per server instance.

A registry per instance lets tests and benchmarks run several servers in one process; the
metrics endpoint (`--metrics-port`) serves that registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_MS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 25, 35, 50, 75, 100, 150, 200, 300, 500, 1000)
_COUNTS = (0, 1, 5, 10, 25, 50, 100, 200, 300, 500, 1000)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pulserank_requests", "RPCs by method and status code", ["method", "code"], registry=r)
        self.latency = Histogram("pulserank_request_ms", "RPC latency (ms) by method", ["method"], buckets=_MS,
                                 registry=r)
        self.stage = Histogram("pulserank_stage_ms", "Personalize latency (ms) per stage", ["stage"], buckets=_MS,
                               registry=r)
        self.candidates = Histogram("pulserank_candidates", "candidates proposed per retrieval source", ["source"],
                                    buckets=_COUNTS, registry=r)
        self.dropped = Counter("pulserank_candidates_dropped", "candidates dropped, by reason", ["reason"],
                               registry=r)
        self.cache = Counter("pulserank_cache", "cache lookups by cache and result", ["cache", "result"], registry=r)
        self.degraded = Counter("pulserank_degraded_responses", "responses served by a fallback", ["reason"],
                                registry=r)
        self.shown = Counter("pulserank_items_shown", "items shown, by variant", ["variant"], registry=r)
        self.explored = Counter("pulserank_items_explored", "items shown above their ranker slot, by variant",
                                ["variant"], registry=r)
        self.llm = Counter("pulserank_llm_decisions", "explanation LLM decisions by outcome", ["decision", "used"],
                           registry=r)
        self.impressions = Counter("pulserank_impressions", "impression events by outcome", ["outcome"], registry=r)
        self.model = Gauge("pulserank_model_info", "the model version served (1 = current)", ["version"], registry=r)

    def serve(self, port: int, addr: str = "127.0.0.1"):
        """Starts the /metrics endpoint; returns (server, thread)."""
        return start_http_server(port, addr=addr, registry=self.registry)
