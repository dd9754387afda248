"""Beam `Enrichment` source handler for item data in Redis (Beam ships none for Redis).

Looks up each event's item (categories and content vector, written by the catalog path) with
one pipelined round trip per batch of requests.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.transforms.enrichment import EnrichmentSourceHandler

from schemas import keys
from stores.redis_client import get_redis


class RedisItemHandler(EnrichmentSourceHandler[list[beam.Row], list[tuple[beam.Row, beam.Row]]]):
    """Request rows carry `item_id`; responses carry `item_fields` (the item hash, decoded)."""

    def __init__(self, redis_url: str, batch_size: int = 500) -> None:
        self.redis_url = redis_url
        self.batch_size = batch_size
        self._client: Any = None

    def __enter__(self) -> None:
        self._client = get_redis(self.redis_url)

    def __call__(self, requests: list[beam.Row], *args: Any, **kwargs: Any) -> list[tuple[beam.Row, beam.Row]]:
        pipe = self._client.pipeline(transaction=False)
        for req in requests:
            pipe.hgetall(keys.item_attributes(req.item_id))
        out = []
        for req, raw in zip(requests, pipe.execute(), strict=True):
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            out.append((req, beam.Row(item_fields=fields)))
        return out

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def batch_elements_kwargs(self) -> dict[str, int]:
        return {"min_batch_size": 1, "max_batch_size": self.batch_size}

    def get_cache_key(self, request: beam.Row) -> str:
        return f"item:{request.item_id}"
