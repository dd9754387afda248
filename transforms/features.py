"""The feature transforms: small composites over the plain functions in `transforms/observe.py`.

Each family maps events to keyed partial summaries and combines them per key; the result is a
PCollection of `stores.feature_store.Write` that `transforms.sinks.WriteFeatures` merges. The
same transforms run in batch (one summary per key per run) and streaming (one per key per
pane), since merges are associative and commutative and guarded by the summary's id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import apache_beam as beam
from apache_beam.transforms.enrichment import Enrichment

from schemas import keys
from schemas.events import Event, EventType
from schemas.features import FeatureConfig
from stores.feature_store import Write
from stores.redis_enrichment import RedisItemHandler
from transforms import observe
from transforms.observe import CONSUMERS, Keyed
from transforms.summaries import partial
from transforms.summaries.partial import Partial

LOOKUP = "lookup"  # events whose families need the item (context, embeddings): looked up once
OUTPUTS = (LOOKUP, "emotion", "bandit", "trending", "catalog")


class MergePartials(beam.CombineFn):
    """One CombineFn for every family: `partial.merge_all` dispatches on the summary kind.

    The accumulator is a list of partials folded in batches (`COMPACT_AT`), not one partial
    merged at every input: that copied the growing summary each time (quadratic per key).
    """

    COMPACT_AT = 256

    def create_accumulator(self) -> list[Partial]:
        return []

    def add_input(self, acc: list[Partial], p: Partial) -> list[Partial]:
        acc.append(p)
        return self.compact(acc) if len(acc) >= self.COMPACT_AT else acc

    def merge_accumulators(self, accs: Iterable[list[Partial]]) -> list[Partial]:
        out = [p for acc in accs for p in acc]
        return self.compact(out) if len(out) >= self.COMPACT_AT else out

    def compact(self, acc: list[Partial]) -> list[Partial]:
        return [partial.merge_all(acc)] if len(acc) > 1 else acc

    def extract_output(self, acc: list[Partial]) -> Partial | None:
        return partial.merge_all(acc) if acc else None


def to_write(key: str, p: Partial) -> Write:
    payload = (p.tau_ms, p.payload) if p.kind in ("decayed", "trending") else p.payload
    return Write(p.kind, key, p.digest.summary_id(p.kind, key), payload)


class Summarize(beam.PTransform):
    """observations → CombinePerKey → writes: the shape every family shares."""

    def __init__(self, observations: Callable[..., list[Keyed]]) -> None:
        super().__init__()
        self.observations = observations

    def expand(self, pcoll):
        return (
            pcoll
            | "Observe" >> beam.FlatMap(self.observations)
            | "Combine" >> beam.CombinePerKey(MergePartials())
            | "ToWrite" >> beam.MapTuple(to_write)
        )


class RouteEvents(beam.PTransform):
    """Sends each event to every consumer its type feeds (`observe.CONSUMERS`); returns a dict
    of PCollections by output name (`OUTPUTS`), each event at most once per output."""

    def expand(self, events):
        def route(event: Event):
            consumers = CONSUMERS[event.type]
            if "context" in consumers or "embeddings" in consumers:
                yield beam.pvalue.TaggedOutput(LOOKUP, event)
            for name in consumers:
                if name not in ("context", "embeddings"):
                    yield beam.pvalue.TaggedOutput(name, event)

        routed = events | "Route" >> beam.FlatMap(route).with_outputs(*OUTPUTS)
        return {name: routed[name] for name in OUTPUTS}


class LookupItems(beam.PTransform):
    """events → (event, ItemInfo) via Beam `Enrichment` against the item hashes in Redis."""

    def __init__(self, redis_url: str, model: str) -> None:
        super().__init__()
        self.redis_url = redis_url
        self.model = model

    def expand(self, events):
        model = self.model
        return (
            events
            | "Enrich" >> Enrichment(RedisItemHandler(self.redis_url, fields=observe.item_info_fields(model)))
            | "Decode" >> beam.ParDo(_DecodeItems(model))
        )


class _DecodeItems(beam.DoFn):
    """(event, item fields) → (event, ItemInfo), decoding each distinct stored item once, not per event."""

    MAX_CACHED = 20_000

    def __init__(self, model: str) -> None:
        self.model = model

    def setup(self) -> None:
        self.read = observe.item_info_fields(self.model)
        self.cache: dict[tuple[str | None, ...], observe.ItemInfo] = {}

    def process(self, pair):
        event, fields = pair
        key = tuple(fields.get(f) for f in self.read)  # all that item_info reads
        info = self.cache.get(key)
        if info is None:
            if len(self.cache) >= self.MAX_CACHED:
                self.cache.clear()
            info = self.cache[key] = observe.item_info(fields, self.model)
        yield event, info


class ContextAggregation(beam.PTransform):
    """Per-user windows by type and category, session state, last interactions."""

    def expand(self, enriched):
        return enriched | Summarize(lambda pair: observe.context_observations(*pair))


class EmotionFeatures(beam.PTransform):
    """Per-user and per-item decayed valence (review sentiment) and rating signal."""

    def __init__(self, config: FeatureConfig, scorer: str = "vader") -> None:
        super().__init__()
        self.config = config
        self.scorer = scorer

    def expand(self, events):
        config = self.config
        return (
            events
            | "Score" >> beam.ParDo(_ScoreSentiment(self.scorer))
            | Summarize(lambda pair: observe.emotion_observations(pair[0], pair[1], config))
        )


class _ScoreSentiment(beam.DoFn):
    def __init__(self, scorer: str) -> None:
        self.scorer_name = scorer
        self.scorer = None

    def setup(self) -> None:
        from transforms.sentiment import scorer_from_name

        self.scorer = scorer_from_name(self.scorer_name)

    def process(self, event: Event):
        valence = self.scorer.score(event.text) if event.type is EventType.REVIEW and event.text else None
        yield event, valence


class IncrementalEmbeddings(beam.PTransform):
    """Per-user collaborative embedding and content-space preference vector (decayed means)."""

    def __init__(self, model: str, config: FeatureConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def expand(self, enriched):
        model, config = self.model, self.config
        return enriched | Summarize(lambda pair: observe.embedding_observations(pair[0], pair[1], model, config))


class BanditUpdates(beam.PTransform):
    """Beta pseudo-counts per (segment, item) and the global row."""

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, events):
        config = self.config
        return events | Summarize(lambda e: observe.bandit_observations(e, config))


class Trending(beam.PTransform):
    """Forward-decayed interaction counts per segment."""

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, events):
        config = self.config
        return events | Summarize(lambda e: observe.trending_observations(e, config))


class Catalog(beam.PTransform):
    """`item` events → item hash upserts (last writer wins) carrying the content vector."""

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, events):
        config = self.config
        return events | "ToWrite" >> beam.Map(
            lambda e: Write("item", keys.item_attributes(e.item_id), "", (e.ts, e.event_id,
                                                                          observe.catalog_fields(e, config)))
        )


def _after(pcoll, signal):
    """`pcoll`, held back until `signal` (a singleton) is computed: a batch-only barrier."""
    return pcoll | "WaitFor" >> beam.Map(lambda x, _: x, beam.pvalue.AsSingleton(signal))


class ComputeFeatures(beam.PTransform):
    """Every feature family over routed events → one PCollection of writes.

    `wait_for`, when given (batch), is a singleton computed once the catalog writes were merged:
    item lookups wait for it, so items in the same log are visible to their interactions.
    """

    def __init__(self, redis_url: str, config: FeatureConfig, scorer: str = "vader", wait_for=None) -> None:
        super().__init__()
        self.redis_url = redis_url
        self.config = config
        self.scorer = scorer
        self.wait_for = wait_for

    def expand(self, routed):
        config, model = self.config, self.config.content_model
        lookup = routed[LOOKUP]
        if self.wait_for is not None:
            lookup = _after(lookup, self.wait_for)
        enriched = lookup | "LookupItems" >> LookupItems(self.redis_url, model)
        return (
            enriched
            | "ForContext" >> beam.Filter(lambda p: "context" in CONSUMERS[p[0].type])
            | "ContextAggregation" >> ContextAggregation(),
            routed["emotion"] | "EmotionFeatures" >> EmotionFeatures(config, self.scorer),
            enriched
            | "ForEmbeddings" >> beam.Filter(lambda p: "embeddings" in CONSUMERS[p[0].type])
            | "IncrementalEmbeddings" >> IncrementalEmbeddings(model, config),
            routed["bandit"] | "BanditUpdates" >> BanditUpdates(config),
            routed["trending"] | "Trending" >> Trending(config),
        ) | "AllWrites" >> beam.Flatten()
