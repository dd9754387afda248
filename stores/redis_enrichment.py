"""Beam `Enrichment` source handler for item data in Redis (Beam ships none for Redis).

Looks up each event's item (categories and content vector, written by the catalog path) with
one pipelined round trip per batch of requests, each distinct item fetched once per batch.
"""

from __future__ import annotations

from typing import Any

from apache_beam.transforms.enrichment import EnrichmentSourceHandler

from schemas import keys
from stores.redis_client import get_redis


class RedisItemHandler(EnrichmentSourceHandler[list[Any], list[tuple[Any, dict[str, str]]]]):
    """Requests are anything with an `item_id` (events); each response is the item hash as a
    dict of str (only `fields` when given; empty for an unknown item).

    Custom types (`use_custom_types`): Enrichment hands `(request, fields)` to `join_fn` as they
    are, instead of converting both to `beam.Row`s and joining them into a third per event.
    """

    use_custom_types = True

    def __init__(self, redis_url: str, batch_size: int = 1000, fields: tuple[str, ...] | None = None) -> None:
        self.redis_url = redis_url
        self.batch_size = batch_size
        self.fields = fields  # only these fields of the item hash (None: all of it)
        self._client: Any = None

    def __enter__(self) -> None:
        self._client = get_redis(self.redis_url)

    def __call__(self, requests: list[Any], *args: Any, **kwargs: Any) -> list[tuple[Any, dict[str, str]]]:
        ids = list(dict.fromkeys(req.item_id for req in requests))  # each item once per batch
        pipe = self._client.pipeline(transaction=False)
        for item_id in ids:
            if self.fields is None:
                pipe.hgetall(keys.item_attributes(item_id))
            else:
                pipe.hmget(keys.item_attributes(item_id), self.fields)
        found = {item_id: self._decode(raw) for item_id, raw in zip(ids, pipe.execute(), strict=True)}
        return [(req, found[req.item_id]) for req in requests]

    def _decode(self, raw: dict | list) -> dict[str, str]:
        if self.fields is None:
            return {k.decode(): v.decode() for k, v in raw.items()}
        return {k: v.decode() for k, v in zip(self.fields, raw, strict=True) if v is not None}

    @staticmethod
    def join_fn(request: Any, fields: dict[str, str]) -> tuple[Any, dict[str, str]]:
        return request, fields

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def batch_elements_kwargs(self) -> dict[str, int]:
        # Fixed-size batches: growing from 1 (BatchElements' adaptive default) costs a thread per
        # tiny call. A bundle's last batch is flushed when the bundle ends, so streaming waits for none.
        return {"min_batch_size": self.batch_size, "max_batch_size": self.batch_size}

    def get_cache_key(self, request: Any) -> str:
        return f"item:{request.item_id}"
