"""Full retraining: event log → Beam + TFT → towers, ranker, edge ranker → ONNX → registry.

    python -m pipelines.train --input 'logs/*.jsonl' --registry models/ [--holdout random] [Beam options]

Stages (each timed and printed): read + split, preprocess (a Beam pipeline: point-in-time
examples and TFT's AnalyzeAndTransformDataset over them), train, export (SavedModel → ONNX with
the TFT layer inside, parity-checked against TensorFlow on rows no model trained on), evaluate
(on the held-out split, beside MostPop and ItemKNN, with a report), publish (a new registry
version; promoted when asked to, or only if better) and, with `--deploy`, the deploy stage
(`pipelines/deploy.py`) for the promoted version. With `--holdout none` every interaction
trains (a production refresh); then there is no offline evaluation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from models import registry
from models.examples import CATEGORIES_LEN, CONTEXT, HISTORY_LEN, RECENT_LEN, SERVING_HISTORY_LEN
from schemas.content_contract import MODALITIES, MODEL_FILE, ContentContract, catalog_inputs
from schemas.events import Event, parse_event
from stores import files as fs

if TYPE_CHECKING:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

DEFAULT_CONTENT_DIM = 512
DEFAULT_MODALITY_DIM = 64


@dataclass
class Stages:
    """Times each stage and prints it: the issue asks for every stage's time."""

    times: dict[str, float] = field(default_factory=dict)
    out: object = sys.stdout

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        print(f"[{name}] ...", file=self.out, flush=True)
        started = time.perf_counter()
        yield
        self.times[name] = time.perf_counter() - started
        print(f"[{name}] done in {self.times[name]:.1f}s", file=self.out, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pulserank train", description=__doc__.splitlines()[0],
                                epilog="Unknown flags go to the Beam preprocessing pipeline as options.")
    p.add_argument("--input", required=True, help="event-log JSONL glob(s), comma-separated (the data lake too)")
    p.add_argument("--registry", required=True, help="model registry root: a directory or gs://...")
    p.add_argument("--workdir", default=None, help="scratch space for TFT outputs (default: a temp dir)")
    p.add_argument("--holdout", choices=["random", "temporal", "none"], default="random",
                   help="evaluation split held out of training (default: per-user random 25%%)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--version", default=None, help="registry version name (default: time + data fingerprint)")
    p.add_argument("--promote", choices=["never", "always", "if-better"], default="never",
                   help="move the production alias to the new version (if-better: only when its NDCG@10 beats "
                        "the baselines and the current production version)")
    p.add_argument("--deploy", action="store_true",
                   help="after a promotion, run the deploy stage (vectors, item features, user embeddings, bandit)")
    p.add_argument("--redis-url", default=None, help="for --deploy (default: REDIS_URL, else an embedded server)")
    p.add_argument("--vector-store", default=None, help="for --deploy: embedded:///dir or http://weaviate:8080")
    p.add_argument("--content-dim", type=int, default=DEFAULT_CONTENT_DIM, help="content vector size (64-1024)")
    p.add_argument("--modality-dim", type=int, default=DEFAULT_MODALITY_DIM,
                   help="width of a precomputed modality no item carries (others: their common length)")
    p.add_argument("--hashed-dim", type=int, default=1024, help="hashed text/category features per item")
    p.add_argument("--embedding-dim", type=int, default=128)
    p.add_argument("--tower-epochs", type=int, default=40)
    p.add_argument("--ranker-epochs", type=int, default=3)
    p.add_argument("--report", default=None, help="evaluation report folder (default: <workdir>/report)")
    return p


@dataclass
class Prepared:
    """What the preprocessing stage leaves in the work dir."""

    transform_dir: str
    examples_glob: str
    catalog_path: str


def preprocess_options(beam_args: list[str]) -> PipelineOptions:
    """Beam options for the preprocessing pipeline (FnApiRunner unless a runner is named)."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    options = PipelineOptions(beam_args)
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "FnApiRunner"  # not Prism: it downloads a binary
    return options


def build_preprocess(p: beam.Pipeline, globs: list[str], held_out: list[tuple[str, str]], workdir: str) -> Prepared:
    """The Beam + TFT graph on `p`, built but not run, so a runner's graph can be checked without data.

    Call inside `tft_beam.Context(temp_dir=...)`: TFT traces `preprocessing_fn` while building.
    """
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata

    from models.preprocess import preprocessing_fn, raw_feature_spec
    from transforms.parse import ParseEvents, ReadEventLines
    from transforms.training import CatalogRows, PointInTimeExamples

    spec = raw_feature_spec()
    metadata = dataset_metadata.DatasetMetadata.from_feature_spec(spec)
    out = Prepared(fs.join(workdir, "transform"), fs.join(workdir, "examples-*.tfrecord"),
                   fs.join(workdir, "catalog.jsonl"))
    events = (p | "Read" >> ReadEventLines(globs) | "Parse" >> ParseEvents())["events"]
    catalog = events | "Catalog" >> CatalogRows()
    held = p | "HeldOut" >> beam.Create(held_out)
    raw = (events
           | "Examples" >> PointInTimeExamples(catalog, held)
           | "RawFeatures" >> beam.Map(lambda row: {k: row[k] for k in spec}))
    (transformed, transformed_meta), transform_fn = (
        (raw, metadata) | "AnalyzeAndTransform" >> tft_beam.AnalyzeAndTransformDataset(preprocessing_fn))
    coder = tft.coders.ExampleProtoCoder(transformed_meta.schema)
    (transformed
     | "Encode" >> beam.Map(coder.encode)
     | "WriteExamples" >> beam.io.WriteToTFRecord(fs.join(workdir, "examples"), file_name_suffix=".tfrecord"))
    _ = transform_fn | "WriteTransform" >> tft_beam.WriteTransformFn(out.transform_dir)
    (catalog
     | "CatalogJson" >> beam.Map(lambda kv: json.dumps(kv[1].to_dict(), sort_keys=True))
     | "WriteCatalog" >> beam.io.WriteToText(out.catalog_path, shard_name_template=""))
    return out


def preprocess(globs: list[str], held_out: list[tuple[str, str]], workdir: str, beam_args: list[str]) -> Prepared:
    """The Beam + TFT step: point-in-time examples, analysed and transformed; the latest catalog rows."""
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam

    with (beam.Pipeline(options=preprocess_options(beam_args)) as p,
          tft_beam.Context(temp_dir=fs.join(workdir, "tft-tmp"))):
        return build_preprocess(p, globs, held_out, workdir)


def load_examples(prepared: Prepared, tft_output):
    import tensorflow as tf

    from models.trainer import Examples

    files = tf.io.gfile.glob(prepared.examples_glob)
    spec = tft_output.transformed_feature_spec()
    ds = tf.data.TFRecordDataset(files).batch(8192).map(lambda x: tf.io.parse_example(x, spec))
    cols: dict[str, list[np.ndarray]] = {k: [] for k in spec}
    for batch in ds:
        for k, v in batch.items():
            cols[k].append(v.numpy())
    arrays = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in cols.items()}
    return Examples(arrays["user"].astype(np.int64), arrays["history"].astype(np.int64),
                    arrays["item"].astype(np.int64), arrays["categories"].astype(np.int64),
                    arrays["context"].astype(np.float32), arrays["label"].astype(np.float32))


def _vocabulary(tft_output, name: str) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in tft_output.vocabulary_by_name(name)]


def read_catalog(path: str) -> dict[str, Event]:
    """The catalogue the preprocessing wrote (under `--workdir`, local or `gs://…`)."""
    with fs.open_read(path) as f:
        events = [parse_event(line) for line in f if line.strip()]
    return {e.item_id: e for e in events}


def item_table(tft_output, catalog: dict[str, Event], contract: ContentContract):
    """Vocabulary order (row 0 = unknown): content inputs and category indices per item."""
    from models.preprocess import CATEGORIES, ITEMS
    from models.trainer import ItemTable

    ids = _vocabulary(tft_output, ITEMS)
    category_index = {c: i + 1 for i, c in enumerate(_vocabulary(tft_output, CATEGORIES))}
    feed = catalog_inputs(["", *ids], catalog, contract)  # row 0: the unknown item, all missing
    rows = [(i + 1, catalog[item]) for i, item in enumerate(ids) if item in catalog]
    categories = np.zeros((len(ids) + 1, CATEGORIES_LEN), np.int64)
    for r, e in rows:
        cats = [category_index.get(c, 0) for c in (e.attributes.categories if e.attributes else ())][:CATEGORIES_LEN]
        categories[r, : len(cats)] = cats
    return ItemTable(ids, feed, categories)


def modality_dims(catalog: dict[str, Event], default: int) -> dict[str, int]:
    """Each modality's most common vector length in the catalogue (`default` when none carries it)."""
    dims = {}
    for m in MODALITIES:
        lengths = Counter(len(e.attributes.vectors[m]) for e in catalog.values()
                          if e.attributes is not None and m in e.attributes.vectors)
        dims[m] = lengths.most_common(1)[0][0] if lengths else default
    return dims


def data_fingerprint(globs: list[str], split_fingerprint: str | None) -> str:
    from models.interactions import expand_globs

    h = hashlib.sha256()
    for path in sorted(expand_globs(globs)):
        h.update(path.rsplit("/", 1)[-1].encode())
        with fs.open_read(path) as f:  # the stored bytes (a .gz stays compressed), local or remote
            while chunk := f.read(1 << 20):
                h.update(chunk)
    h.update((split_fingerprint or "").encode())
    return h.hexdigest()


def run(argv: list[str] | None = None) -> int:
    args, beam_args = build_parser().parse_known_args(argv)
    globs = [g for g in args.input.split(",") if g]
    stages = Stages()
    check_shared_paths(args, beam_args)
    workdir = args.workdir or tempfile.mkdtemp(prefix="pulserank-train-")
    fs.makedirs(workdir)
    result = train(args, globs, beam_args, workdir, stages)
    total = sum(stages.times.values())
    print("stage times: " + ", ".join(f"{k} {v:.1f}s" for k, v in stages.times.items()) + f"; total {total:.1f}s")
    print(f"version {result['version']} published to {args.registry}"
          + (" and promoted to production" if result.get("promoted") else ""))
    return 0


def check_shared_paths(args: argparse.Namespace, beam_args: list[str]) -> None:
    """On Dataflow the workers read `--input` and write `--workdir`, and cannot see this machine's
    disk: refuse local paths there before anything runs (Flink may share a mounted volume)."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    runner = PipelineOptions(beam_args).view_as(StandardOptions).runner or ""
    if "dataflow" not in runner.lower():
        return
    local = [f"--input {g}" for g in args.input.split(",") if g and fs.is_local(g)]
    if args.workdir is None or fs.is_local(args.workdir):
        local.append(f"--workdir {args.workdir or '(default: a local temp dir)'}")
    if local:
        raise SystemExit(f"pulserank train: with {runner}, the workers cannot read this machine's disk; "
                         f"give gs:// paths for: {'; '.join(local)}")


def train(args: argparse.Namespace, globs: list[str], beam_args: list[str], workdir: str, stages: Stages) -> dict:
    from models.interactions import read_interactions
    from models.splits import make_split

    with stages("read + split"):
        interactions = read_interactions(globs)
        split = None if args.holdout == "none" else make_split(interactions, args.holdout, seed=args.seed)
        held_out = []
        if split is not None:
            test = split.test.tocoo()
            ids_u, ids_i = split.train_data.user_ids, split.train_data.item_ids
            held_out = [(ids_u[u], ids_i[i]) for u, i in zip(test.row.tolist(), test.col.tolist(), strict=True)]
        print(f"  {interactions.stats.summary()}")
        print(f"  {len(held_out):,} (user, item) pairs held out ({args.holdout})")
    with stages("preprocess (Beam + TFT)"):
        prepared = preprocess(globs, held_out, workdir, beam_args)
    with stages("train"):
        trained = fit(prepared, args)
    with stages("export (ONNX + parity)"):
        onnx_dir = fs.join(workdir, "onnx")  # tf2onnx and onnxruntime need local files
        local_onnx = onnx_dir if fs.is_local(onnx_dir) else tempfile.mkdtemp(prefix="pulserank-onnx-")
        files, parity = export(trained, local_onnx)
        if local_onnx != onnx_dir:
            fs.upload_dir(local_onnx, onnx_dir)
    metrics: dict = {}
    report_dir = args.report or fs.join(workdir, "report")
    if split is not None:
        with stages("evaluate"):
            local_report = report_dir if fs.is_local(report_dir) else tempfile.mkdtemp(prefix="pulserank-report-")
            metrics = evaluate_version(files, trained, split, local_report, stages, args)
            if local_report != report_dir:
                fs.upload_dir(local_report, report_dir)
                print(f"  report copied to {report_dir}")
    with stages("publish"):
        fingerprint = data_fingerprint(globs, split.fingerprint() if split is not None else None)
        version = args.version or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + fingerprint[:8]
        metadata = {
            "data_fingerprint": fingerprint,
            "inputs": globs,
            "holdout": {"kind": args.holdout, "seed": args.seed} if split is not None else None,
            "split_fingerprint": split.fingerprint() if split is not None else None,
            "metrics": metrics,
            "parity_max_abs_diff": parity,
            "content_contract": trained.contract.to_metadata(),
            "feature_spec": trained.feature_spec,
            "training": {"losses": trained.losses, "stage_seconds": dict(stages.times),
                         "modality_weights": trained.modality_weights,
                         "ranker_correction": trained.ranker_correction},
        }
        registry.publish(args.registry, version, files, metadata)
        promoted = False
        if args.promote == "always" or (args.promote == "if-better"
                                        and better_than_production(args.registry, version, metrics)):
            registry.promote(args.registry, version)
            promoted = True
    if promoted and args.deploy:
        from pipelines.deploy import deploy

        with stages("deploy"):
            print(deploy(args.registry, version, globs, args.redis_url, args.vector_store).summary())
    return {"version": version, "promoted": promoted, "metrics": metrics}


def better_than_production(root: str, version: str, metrics: dict) -> bool:
    """The promotion gate of `pulserank evaluate` (baselines, canary, production version)."""
    if "model" not in metrics:
        print("  not promoted: no offline metrics (trained with --holdout none)")
        return False
    from pipelines.evaluate import promotion_decision

    ok, why = promotion_decision(root, version, metrics)
    print(f"  {why}")
    return ok


@dataclass
class Trained:
    contract: ContentContract
    feature_spec: dict
    modules: dict  # file name → tf.Module with .signature()
    parity_feeds: dict  # file name → feed of held-out rows
    losses: dict
    modality_weights: dict
    ranker_correction: dict  # the correction's weight and the NDCG@10 it was chosen by


def fit(prepared: Prepared, args: argparse.Namespace) -> Trained:
    import tensorflow_transform as tft

    from models import blend, exported
    from models.content_tower import build_content_tower, mean_modality_weights
    from models.preprocess import CATEGORIES, USERS
    from models.towers import TowerConfig
    from models.trainer import (
        TrainConfig,
        content_vectors,
        item_embeddings,
        ranker_probability,
        train_edge_ranker,
        train_ranker,
        train_towers,
        user_embeddings,
    )

    tft_output = tft.TFTransformOutput(prepared.transform_dir)
    data = load_examples(prepared, tft_output)
    catalog = read_catalog(prepared.catalog_path)
    contract = ContentContract(args.hashed_dim, modality_dims(catalog, args.modality_dim), args.content_dim)
    items = item_table(tft_output, catalog, contract)
    n_users = len(_vocabulary(tft_output, USERS))
    n_categories = len(_vocabulary(tft_output, CATEGORIES))
    rng = np.random.default_rng(args.seed)
    validation = rng.random(len(data)) < 0.02  # rows no model trains on: parity and sanity checks
    train_rows, valid_rows = np.flatnonzero(~validation), np.flatnonzero(validation)
    fit_data, valid = data.take(train_rows), data.take(valid_rows)
    print(f"  {len(data):,} examples ({int((data.label > 0).sum()):,} positive), {items.size:,} items, "
          f"{n_users:,} users, {n_categories:,} categories; {len(valid):,} validation rows")
    config = TrainConfig(towers=TowerConfig(embedding_dim=args.embedding_dim), tower_epochs=args.tower_epochs,
                         ranker_epochs=args.ranker_epochs, seed=args.seed)
    content_tower = build_content_tower(contract)
    user_tower, item_tower, tower_losses = train_towers(fit_data, items, content_tower, n_users, config)
    content = content_vectors(content_tower, items.content_feed)
    user_vecs = user_embeddings(user_tower, fit_data)
    held = blend.holdout(fit_data, items.size, SERVING_HISTORY_LEN, seed=args.seed)
    ranker_rows = np.flatnonzero(~held.rows)  # the held-out pairs judge the ranker: it never sees them
    ranker, ranker_losses, ranker_data = train_ranker(fit_data.take(ranker_rows), items, content,
                                                      user_vecs[ranker_rows], item_tower, config, n_categories)
    weight, blend_ndcg = blend.choose_residual_weight(held, user_tower, item_embeddings(item_tower, content), ranker,
                                                      items, content)
    blend.set_residual_weight(ranker, weight)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in blend_ndcg.items())
    print(f"  ranker correction weight {weight:g}, chosen on {held.held.nnz:,} held-out pairs of "
          f"{len(held.users):,} users (NDCG@10 {shown})")
    rows, item_idx, labels = ranker_data
    rows = ranker_rows[rows]  # back to fit_data rows
    ranker_data = (rows, item_idx, labels)
    origin = ranker_probability(ranker, user_vecs[rows], item_idx, items, content, fit_data.context[rows])
    edge, edge_losses = train_edge_ranker(fit_data, ranker_data, origin, items.size, RECENT_LEN, config)
    present = {k: v[1:] for k, v in items.content_feed.items()}
    weights = mean_modality_weights(content_tower, present) if items.size else {}
    weights = {k: None if v != v else v for k, v in weights.items()}  # NaN: no item carries it
    shown = ", ".join(f"{k} {v:.3f}" for k, v in weights.items() if v is not None)
    print(f"  mean pooling weight per modality: {shown}")

    layer = tft_output.transform_features_layer()
    modules = {
        MODEL_FILE: exported.ContentTowerModule(content_tower, contract),
        exported.USER_TOWER: exported.UserTowerModule(layer, user_tower),
        exported.ITEM_TOWER: exported.ItemTowerModule(layer, item_tower, contract.output_dim),
        exported.RANKER: exported.RankerModule(layer, ranker, user_vecs.shape[1], contract.output_dim),
        exported.EDGE_RANKER: exported.EdgeRankerModule(layer, edge),
    }
    feeds = parity_feeds(valid, items, tft_output, contract, user_vecs.shape[1])
    spec = {"history_len": HISTORY_LEN, "serving_history_len": SERVING_HISTORY_LEN,
            "categories_len": CATEGORIES_LEN, "recent_len": RECENT_LEN,
            "context": list(CONTEXT), "embedding_dim": int(user_vecs.shape[1]), "content_dim": contract.output_dim,
            "items": items.size, "users": n_users, "categories": n_categories}
    return Trained(contract, spec, modules, feeds, {"towers": tower_losses, "ranker": ranker_losses,
                                                    "edge_ranker": edge_losses}, weights,
                   {"weight": weight, "ndcg@10": blend_ndcg})


def parity_feeds(valid, items, tft_output, contract: ContentContract, embedding_dim: int) -> dict:
    """Raw-input feeds built from validation rows (ids back to strings) for every exported model."""
    from models import exported
    from models.preprocess import CATEGORIES, USERS

    users = ["<unknown>"] + _vocabulary(tft_output, USERS)
    item_ids = np.array([""] + items.ids, dtype=object)
    cats = np.array([""] + _vocabulary(tft_output, CATEGORIES), dtype=object)
    n = min(len(valid), 256)
    v = valid.take(np.arange(n))
    rng = np.random.default_rng(0)
    raw_context = np.stack([(v.history > 0).sum(1), rng.uniform(0, 24, n), rng.integers(0, 7, n)], 1)
    raw_context = raw_context.astype(np.float32)
    history = item_ids[v.history]
    item = item_ids[v.item]
    feed_content = {k: a[v.item] for k, a in items.content_feed.items()}
    content = rng.normal(size=(n, contract.output_dim)).astype(np.float32)
    user_embedding = rng.normal(size=(n, embedding_dim)).astype(np.float32)
    return {
        MODEL_FILE: feed_content,
        # twice the training width: the user tower reads histories of any length
        exported.USER_TOWER: {"user_id": np.array([users[u] for u in v.user], dtype=object),
                              "history": np.concatenate([history, np.roll(history, 1, axis=0)], axis=1),
                              "context": raw_context},
        exported.ITEM_TOWER: {"item_id": item, "content": content},
        exported.RANKER: {"user_embedding": user_embedding, "item_id": item, "item_categories": cats[v.categories],
                          "content": content, "context": raw_context},
        exported.EDGE_RANKER: {"recent": history[:, :RECENT_LEN], "item_id": item,
                               "origin_score": rng.uniform(size=(n, 1)).astype(np.float32)},
    }


def export(trained: Trained, out_dir: str) -> tuple[dict[str, str], dict[str, float]]:
    """Every model to ONNX; parity with TensorFlow on held-out rows (≤ 1e-4, else the export fails)."""
    from models import exported
    from models.export import export_onnx, parity

    files, diffs = {}, {}
    for name, module in trained.modules.items():
        path = export_onnx(module, module.signature(), os.path.join(out_dir, name))
        diffs[name] = parity(path, module, trained.parity_feeds[name])
        size = os.path.getsize(path)
        print(f"  {name}: {size / 1e6:.2f} MB, parity max |ONNX − TF| = {diffs[name]:.2e}")
        if diffs[name] > 1e-4:
            raise RuntimeError(f"{name}: ONNX differs from TensorFlow by {diffs[name]:.2e} (> 1e-4)")
        if name == exported.EDGE_RANKER and size > exported.EDGE_MAX_BYTES:
            raise RuntimeError(f"{name}: {size:,} bytes exceeds the edge budget of {exported.EDGE_MAX_BYTES:,}")
        files[name] = str(path)
    return files, diffs


def evaluate_version(files: dict[str, str], trained: Trained, split, report_dir: str, stages: Stages,
                     args: argparse.Namespace) -> dict:
    from models.onnx_recommender import OnnxRecommender
    from pipelines.evaluate import evaluate_and_report

    scorers = {"model": OnnxRecommender(files, trained.contract),  # retrieval + ranker, as served
               "retrieval-only": OnnxRecommender(files, trained.contract, use_ranker=False)}
    return evaluate_and_report(split, scorers, report_dir, training_curves=trained.losses,
                               timings=dict(stages.times))


def main(argv: list[str] | None = None) -> int:
    return run(argv)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # TFT segfaults at interpreter teardown (FIELD-NOTES)
