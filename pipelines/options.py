"""Options every feature pipeline shares (replay, live, stream), declared once.

Beam parses every direct `PipelineOptions` subclass in one parser (`get_all_options`), so an
option declared by two subclasses, or a `required=True` one, breaks every other pipeline run in
the same process. Each entry point's options extend `FeatureOptions` instead and validate their
own required options when they run. They also name `PipelineOptions` as a direct base
(`class ReplayOptions(FeatureOptions, PipelineOptions)`), because `get_all_options` only parses
direct subclasses: without it Beam warns that their flags are unparseable and drops them.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from schemas.features import FeatureConfig


class FeatureOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--as_of", default=None, help="pin the clock (windows, pruning) to this instant")
        parser.add_argument("--redis_url", default=None, help="default: REDIS_URL, else an embedded server")
        parser.add_argument("--vector_store", default=None, help="embedded:///dir or http://weaviate:8080")
        parser.add_argument("--bandit_half_life_hours", type=float, default=None,
                            help="forward-decay the bandit counts (default: exact counts)")
        parser.add_argument("--scorer", default="vader", help="sentiment scorer for reviews")
        parser.add_argument("--registry", default=None,
                            help="model registry root (dir or gs://...): item content vectors once a model is promoted")


def feature_config(opts: FeatureOptions) -> FeatureConfig:
    hl = opts.bandit_half_life_hours
    return FeatureConfig(bandit_half_life_ms=hl * 3_600_000 if hl else None)
