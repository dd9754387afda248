"""`pulserank demo`: the whole loop on embedded defaults, in one command.

Data set → batch replay into Redis and the embedded vector store → `pulserank train` (a child
process: TFT must not share our exit) → promote → deploy → an origin and an edge on loopback
ports, and the local live mode as its own process (as deployed) → a user's top 10 asked of the
edge before and after their session shifts to a new intent, the shift sent as events through
the edge (edge → origin → Redis stream → live micro-batch → Redis), with the freshness measured
→ everything stopped. Progress is shown as numbered steps with their times; the train step
follows the child's stages (a progress bar on a terminal).

The clock is pinned: the replay and the deploy as of the log's end (T0), serving and live mode
an hour later (T1), so the user comes back for a new session; the shift's events fall between.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.datasets import FetchOptions, fetch
from pulserank.demo_story import (
    LogView,
    pick_intent,
    pick_user,
    read_log,
    share,
    shift_events,
    shift_items,
    unseen_of,
)
from schemas.clock import AS_OF_ENV, Clock, format_instant

STEPS = 9
HOUR_MS = 3_600_000
SHIFT_MAX = 9  # items of the new intent the session visits (at most; half the unseen ones on a small catalogue)
TOP_N = 10
CALIBRATION_USERS = 80  # more than the 64 pools each tier calibrates on
FRESHNESS_TIMEOUT_S = 60.0  # the design's target; ours is ≤ 2 s
TRAIN_STAGES = ("read + split", "preprocess (Beam + TFT)", "train", "export (ONNX + parity)", "evaluate", "publish")
_STAGE_DONE = re.compile(r"^\[(.+)\] done in ([\d.]+)s$")
_EPOCH = re.compile(r"^\s+(\w[\w ]*) epoch (\d+)/(\d+)")


class DemoError(ValueError):
    """A bad choice on the command line (--user, --intent, --registry), named."""


@dataclass
class Listing:
    """One answer as the demo shows it."""

    items: list[str]
    scores: list[float]
    explored: list[bool]
    explanations: list[str]
    reasons: list[list[tuple[str, float]]]
    source: str
    version: str
    ms: float


@dataclass
class DemoResult:
    user: str = ""
    intent: str = ""
    before: Listing | None = None
    after: Listing | None = None
    share_before: float = 0.0
    share_after: float = 0.0
    ranker_before: float = 0.0  # the share in the ranker's own order (no exploration)
    ranker_after: float = 0.0
    edge_before: float = 0.0  # the share in the edge's answer from its cache
    edge_after: float = 0.0
    freshness_s: float | None = None  # send → the last event in the origin's Redis features
    answered_s: float | None = None  # send → the after list answered
    events_sent: int = 0
    version: str = ""
    report: str | None = None
    live_log: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    live_pid: int | None = None
    steps: dict[str, float] = field(default_factory=dict)
    reconciles: bool = True


class Progress:
    """Numbered steps with their times; indented detail lines under each."""

    def __init__(self, total: int, out=None) -> None:
        self.total = total
        self.k = 0
        self._out = out
        self.times: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.k += 1
        print(f"[{self.k}/{self.total}] {title}", file=self.out, flush=True)
        t = time.perf_counter()
        yield
        self.times[title] = time.perf_counter() - t
        print(f"      ({self.times[title]:.1f}s; {self.elapsed():.0f}s so far)", file=self.out, flush=True)

    def note(self, text: str = "") -> None:
        for line in text.splitlines() or [""]:
            print(f"      {line}", file=self.out, flush=True)

    @property
    def out(self):
        return self._out or sys.stdout  # looked up per line: a progress bar redirects stdout while it runs

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


# -- the steps -----------------------------------------------------------------------------------


def _data(data: str, workdir: Path, cache_dir: Path, ui: Progress) -> list[Path]:
    data_dir = workdir / "data" / data
    manifest_path = data_dir / "manifest.json"
    if manifest_path.exists():
        ui.note(f"reusing {data_dir}")
        manifest = json.loads(manifest_path.read_text())
    else:
        ui.note(f"fetching into {data_dir}")
        manifest = fetch(data, data_dir, FetchOptions(cache_dir=cache_dir))
    for name, info in manifest["files"].items():
        ui.note(f"{name}: {info['events']:,} events")
    return [data_dir / name for name in manifest["files"]]


def _replay(logs: list[Path], workdir: Path, url: str, t0: int, ui: Progress) -> bool:
    from pipelines.replay import run as run_replay
    from pulserank.replay_report import run_with_progress

    argv = ["--input", ",".join(map(str, logs)), "--dead_letters", str(workdir / "dead-letters" / "replay"),
            "--redis_url", url, "--vector_store", f"embedded://{workdir / 'vectors'}", "--as_of", str(t0)]
    result = run_with_progress(lambda: run_replay(argv), [str(p) for p in logs], url)
    ui.note(result.summary())
    return result.reconciles


def _train(logs: list[Path], workdir: Path, registry: Path, ui: Progress, train_args: list[str]
           ) -> tuple[str, str | None]:
    """`pulserank train` as a child process, its stages followed; (version, report path)."""
    log_path = workdir / "logs" / "train.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pipelines.train", "--input", ",".join(map(str, logs)), "--registry", str(registry),
           "--workdir", str(workdir / "train"), "--report", str(workdir / "report"), "--holdout", "random",
           "--promote", "always", *train_args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "2"}
    ui.note(f"pulserank train {' '.join(cmd[3:])}")
    ui.note(f"(its full output: {log_path})")
    version = report = None
    bar = _TrainBar()
    with open(log_path, "w", encoding="utf-8") as log, bar:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
        try:
            for line in proc.stdout:
                log.write(line)
                line = line.rstrip("\n")
                if m := _STAGE_DONE.match(line):
                    bar.done(m.group(1))
                    ui.note(f"{m.group(1):<24} {float(m.group(2)):6.1f}s")
                elif m := _EPOCH.match(line):
                    bar.epoch(line.strip())
                    if m.group(2) == m.group(3) and not bar.shown:  # each model's last epoch
                        ui.note(f"  {line.strip()}")
                elif line.startswith("report: "):
                    report = line[len("report: "):].strip()
                elif m := re.match(r"^version (\S+) published", line):
                    version = m.group(1)
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if code != 0 or version is None:
        raise RuntimeError(f"pulserank train exited {code}; see {log_path}")
    return version, report


class _TrainBar:
    """A transient progress bar over the train stages on a terminal; nothing otherwise."""

    def __enter__(self) -> _TrainBar:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console()  # stdout: the step lines printed meanwhile go above the bar (rich redirects them)
        self.progress = None
        if console.is_terminal:
            self.progress = Progress(TextColumn("      train"), BarColumn(), TextColumn("{task.description}"),
                                     TimeElapsedColumn(), console=console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task(TRAIN_STAGES[0], total=len(TRAIN_STAGES))
        return self

    @property
    def shown(self) -> bool:
        return self.progress is not None

    def done(self, stage: str) -> None:
        if self.progress is not None:
            k = TRAIN_STAGES.index(stage) + 1 if stage in TRAIN_STAGES else 0
            following = TRAIN_STAGES[k] if k < len(TRAIN_STAGES) else ""
            self.progress.update(self.task, completed=k, description=following)

    def epoch(self, text: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=text)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


def _metrics_line(root: str, version: str) -> str:
    from models import registry

    metrics = registry.load_version(root, version).metadata.get("metrics") or {}
    shown = [f"{name} {m['ndcg@10']:.3f}" for name, m in metrics.items() if isinstance(m, dict) and "ndcg@10" in m]
    return "NDCG@10 on the held-out split: " + ", ".join(shown) if shown else "no offline metrics recorded"


class LiveChild:
    """`python -m pipelines.live` as its own process (as deployed), its output in a log file."""

    READY = "live: reading"

    def __init__(self, url: str, workdir: Path, t1: int) -> None:
        self.log_path = workdir / "logs" / "live.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pipelines.live", "--redis_url", url, "--lake", str(workdir / "lake"),
               "--vector_store", f"embedded://{workdir / 'vectors'}", "--as_of", str(t1), "--block_ms", "100",
               "--consumer", "demo"]
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "REDIS_URL": url, "PULSERANK_AS_OF": str(t1)}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                     env=env)
        self.ready = threading.Event()
        self.ready_line = ""
        self.batches = 0
        self._reader = threading.Thread(target=self._read, name="demo-live-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log_path, "w", encoding="utf-8") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                if line.startswith(self.READY):
                    self.ready_line = line.strip()
                    self.ready.set()
                elif line.startswith("batch "):
                    self.batches += 1

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            if self.proc.poll() is not None:
                raise RuntimeError(f"live mode exited {self.proc.returncode} before it was ready; see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"live mode not ready within {timeout:.0f}s; see {self.log_path}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()  # the process we started, by its pid
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


def _ask(stub, user: str, explain: bool = False, explore: bool = True) -> Listing:
    from schemas import personalization_pb2 as pb

    t = time.perf_counter()
    resp = stub.Personalize(pb.PersonalizeRequest(user_id=user, n=TOP_N, explain=explain,
                                                  disable_exploration=not explore), timeout=10)
    ms = (time.perf_counter() - t) * 1000
    return Listing([i.item_id for i in resp.items], [i.score for i in resp.items], [i.explored for i in resp.items],
                   [i.explanation for i in resp.items], [[(r.code, r.weight) for r in i.reasons] for i in resp.items],
                   pb.Source.Name(resp.source).removeprefix("SOURCE_").lower(), resp.model_version, ms)


def _tiers(ui: Progress, stub, user: str, view: LogView, intent: str, why: str) -> tuple[float, float]:
    """The same user asked with plain requests (no explanations): first the ranker's own order (no
    exploration), which on a cache miss the edge gets from the origin, caching the pool the
    origin drew from; then the same with exploration, which the edge answers from that cache.
    Returns the intent's share in each."""
    ranker = _ask(stub, user, explore=False)
    edge = _ask(stub, user)
    shares = share(ranker.items, view, intent), share(edge.items, view, intent)
    ui.note(f"the ranker's own order (no exploration), a plain request: the {ranker.source} answered in "
            f"{ranker.ms:.0f} ms ({why}); {intent} {shares[0]:.0%} of its top {TOP_N}")
    ui.note(f"the same plain request with exploration: the {edge.source} answered in {edge.ms:.1f} ms (the cached pool "
            f"re-ranked with the last 10 interactions, then the edge bandit); {intent} {shares[1]:.0%}")
    return shares


def _show(ui: Progress, title: str, listing: Listing, view: LogView, intent: str | None) -> None:
    ui.note(f"{title}: answered by the {listing.source} in {listing.ms:.0f} ms (model {listing.version})")
    ui.note(f"  {'#':>2}  {'item':<12} {'title':<34} {'categories':<28} {'score':>6}  explored")
    for k, item in enumerate(listing.items):
        cats = ", ".join(view.categories.get(item, ()))
        mark = "*" if intent and intent in view.categories.get(item, ()) else " "
        ui.note(f"  {k + 1:>2}{mark} {item:<12} {view.titles.get(item, '')[:34]:<34} {cats[:28]:<28} "
                f"{listing.scores[k]:6.3f}  {'yes' if listing.explored[k] else ''}")
    for k in range(min(3, len(listing.items))):
        if listing.explanations[k]:
            codes = ", ".join(f"{c} {w:.2f}" for c, w in listing.reasons[k][:3])
            ui.note(f"  why #{k + 1}: {listing.explanations[k]}" + (f"  [{codes}]" if codes else ""))


def _wait_fresh(store, user: str, events: list[dict], started: float) -> float | None:
    """Seconds from `started` until each of `events` (the last 10: what the store keeps) is among the
    user's stored last interactions, as (ts, type, item), polled every 5 ms; None after
    FRESHNESS_TIMEOUT_S."""
    wanted = {(e["ts"], e["type"], e["item_id"]) for e in events[-min(len(events), 10):]}
    while time.perf_counter() - started < FRESHNESS_TIMEOUT_S:
        if wanted <= {(r["ts"], r["type"], r["item_id"]) for r in store.user_features(user)["recent"]}:
            return time.perf_counter() - started
        time.sleep(0.005)
    return None


# -- the whole loop ------------------------------------------------------------------------------


@dataclass
class Tier:
    """What step 5 starts and step 9 stops: the live-mode child, the origin thread, the edge on its loop."""

    live: LiveChild | None = None
    origin: object = None  # serving.server.ServerThread
    edge: object = None  # serving.edge_server.RunningEdge
    channel: object = None  # the demo's gRPC channel to the edge

    def start(self, url: str, root: str, store_url: str, workdir: Path, t1: int, ui: Progress) -> None:
        from serving.config import ServeConfig
        from serving.edge_server import EdgeConfig, start_edge
        from serving.server import ServerThread

        self.live = LiveChild(url, workdir, t1)  # first: its imports and graph take the longest
        self.origin = ServerThread(ServeConfig(listen="127.0.0.1:0", registry=root, redis_url=url,
                                               vector_store=store_url, sync_full_every_s=5.0), Clock(t1))
        self.edge = self.origin.call(start_edge(EdgeConfig(origins=[self.origin.address], registry=root,
                                                           listen="127.0.0.1:0", origin_deadline_s=2.0),
                                                Clock(t1), seed=0))
        ui.note(f"origin 127.0.0.1:{self.origin.running.port}, edge 127.0.0.1:{self.edge.port} in front of it "
                f"(edge ranker {self.edge.edge.scorer.version})")
        self.live.wait_ready(180)
        ui.note(f"live mode, pid {self.live.proc.pid}: {self.live.ready_line.removeprefix('live: ')}")

    def calibrate(self, users: list[str], ui: Progress, timeout_s: float = 30.0) -> None:
        """Warm-up: each tier calibrates its n0 to the exploration share on the pools it explored
        (64 at least), so the lists below flag ~12 % of items explored rather than the defaults'
        share. Each user is asked of the edge twice: a miss (the origin explores, its pool is
        cached), then a hit (the edge explores that pool)."""
        from schemas import personalization_pb2 as pb

        stub = self.stub()
        for _ in range(2):
            for u in users:
                stub.Personalize(pb.PersonalizeRequest(user_id=u, n=TOP_N), timeout=10)
        origin, edge = self.origin.running.origin.models["production"], self.edge.edge
        deadline = time.monotonic() + timeout_s
        while (origin.calibration is None or edge.calibration is None) and time.monotonic() < deadline:
            time.sleep(0.1)
        done = [f"{name} n0 {p.n0:,.0f}" for name, p, cal in
                (("origin", origin, origin.calibration), ("edge", edge.exploration, edge.calibration)) if cal]
        ui.note(f"exploration calibrated to a {origin.calibrator.share:.0%} share on {len(users)} other users' "
                f"requests: " + (", ".join(done) or "not yet (the defaults stand)"))

    def stub(self):
        import grpc

        from schemas import personalization_pb2_grpc as pb_grpc

        if self.channel is None:
            self.channel = grpc.insecure_channel(f"127.0.0.1:{self.edge.port}")
        return pb_grpc.PersonalizationStub(self.channel)

    def stop(self, ui: Progress) -> None:
        """Each part that was started, in reverse order; the origin's event loop closed too."""
        from serving.edge_server import stop_edge

        if self.channel is not None:
            self.channel.close()
        if self.origin is not None:
            if self.edge is not None:
                self.origin.call(stop_edge(self.edge, grace_s=0.5))
            self.origin.stop()
            if not self.origin.thread.is_alive():
                self.origin.loop.close()  # and with it the loop's worker threads
        if self.live is not None:
            code = self.live.stop()
            ui.note(f"live mode stopped (exit {code}) after {self.live.batches} micro-batches; "
                    f"its log {self.live.log_path}")


def _to_proto(e: dict):
    from schemas import personalization_pb2 as pb

    ctx = e["context"]
    return pb.Event(event_id=e["event_id"], ts_ms=e["ts"], user_id=e["user_id"], type=e["type"], item_id=e["item_id"],
                    context=pb.Context(surface=ctx["surface"], device=ctx["device"],
                                       extra={"session_id": ctx["session_id"]}),
                    **({"value": e["value"]} if "value" in e else {}))


def _story(stub, store, view: LogView, t1: int, user: str | None, intent: str | None, ui: Progress,
           res: DemoResult) -> None:
    """Steps 6-8: before, the shift (with its freshness), after."""
    from schemas import personalization_pb2 as pb

    with ui.step("before: a user's top 10, asked of the edge with explanations (a request the edge forwards to "
                 "the origin)"):
        res.user = user or pick_user(view)
        mine = set(view.positives.get(res.user, ()))
        top = view.category_counts(mine).most_common(3)
        ui.note(f"user {res.user}: {len(mine)} items in the log, mostly " + ", ".join(f"{c} ({n})" for c, n in top)
                + " (a clear taste and a short history: serving blends the whole history with the current "
                  "session, which weighs n/(n + 5) for n session positives)")
        res.before = _ask(stub, res.user, explain=True)
        res.intent = intent or pick_intent(view, res.user, res.before.items)
        res.share_before = share(res.before.items, view, res.intent)
        _show(ui, "before", res.before, view, res.intent)
        res.ranker_before, res.edge_before = _tiers(ui, stub, res.user, view, res.intent,
                                                    "a miss; the pool it drew from is now cached at the edge")

    k = min(SHIFT_MAX, unseen_of(view, res.user, res.intent) // 2)
    with ui.step(f"the session shifts to {res.intent}: {k + 1} events sent to the edge (→ origin → Redis stream → "
                 f"live micro-batch → Redis)"):
        items = shift_items(view, res.user, res.intent, k, exclude=res.before.items)
        events = shift_events(res.user, items, t1 - 10 * 60_000, f"demo-{res.user}-shift")
        res.events_sent = len(events)
        ui.note("; ".join(f"{e['type']} {view.titles.get(e['item_id'], e['item_id'])}" for e in events))
        store.user_features(res.user)  # warm the reader, so the first poll measures the pipeline only
        sent = time.perf_counter()
        accepted = stub.RecordEvents(pb.RecordEventsRequest(events=[_to_proto(e) for e in events]), timeout=10).accepted
        res.freshness_s = _wait_fresh(store, res.user, events, sent)
        if res.freshness_s is None:
            ui.note(f"{accepted} accepted, but not all reached the features within {FRESHNESS_TIMEOUT_S:.0f}s")
        else:
            ui.note(f"{accepted} accepted; freshness: all {len(events)} in the user's features in Redis "
                    f"{res.freshness_s:.2f}s after the send (design target ≤ 60 s)")

    with ui.step("after: the same user's top 10, asked of the edge again"):
        res.after = _ask(stub, res.user, explain=True)
        res.answered_s = time.perf_counter() - sent
        res.share_after = share(res.after.items, view, res.intent)
        _show(ui, "after", res.after, view, res.intent)
        res.ranker_after, res.edge_after = _tiers(ui, stub, res.user, view, res.intent,
                                                  "a miss: the purchase dropped the user's cached lists")
        ui.note(f"share of {res.intent} (* above) in the top {TOP_N}: {res.share_before:.0%} before → "
                f"{res.share_after:.0%} after ({(res.share_after - res.share_before) * 100:+.0f} points); the after "
                f"list answered {res.answered_s:.2f}s after the events were sent")


def demo(data: str, workdir: Path, cache_dir: Path, registry: str | None = None, user: str | None = None,
         intent: str | None = None, train_args: list[str] | None = None, out=None) -> DemoResult:
    """Runs every step; whatever it started is stopped before it returns or raises."""
    from pipelines.deploy import deploy
    from stores.feature_store import FeatureStore
    from stores.redis_client import describe, get_redis, redis_url

    workdir = workdir.resolve()
    # an open origin on loopback is what the demo means: not worth a warning on its screen
    serve_log = logging.getLogger("pulserank.serve")
    level = serve_log.level
    serve_log.setLevel(logging.ERROR)
    pinned = os.environ.get(AS_OF_ENV)  # the replay pins this process's clock; put it back after
    ui = Progress(STEPS, out)
    res = DemoResult()
    try:
        with ui.step(f"data set: {data}"):
            logs = _data(data, workdir, cache_dir, ui)
            view = read_log(logs)
            _check_choices(view, user, intent)
            t0 = view.end_ms + 1
            t1 = t0 + HOUR_MS
        url = redis_url()
        with ui.step(f"replay into Redis ({describe()}) and the embedded vector store, as of the log's end "
                     f"{format_instant(t0)}"):
            res.reconciles = _replay(logs, workdir, url, t0, ui)
        if registry:
            root = registry
            with ui.step(f"model: the registry {registry} given, not retrained"):
                res.version = _production(registry)
                ui.note(f"production version {res.version}")
                ui.note(_metrics_line(registry, res.version))
        else:
            root = str(workdir / "registry")
            with ui.step("train and promote (pulserank train: Beam + TFT, towers, ranker, edge ranker → ONNX)"):
                res.version, res.report = _train(logs, workdir, Path(root), ui, list(train_args or []))
                ui.note(f"version {res.version} published to {root} and promoted to production")
                ui.note(_metrics_line(root, res.version))
                if res.report:
                    ui.note(f"evaluation report: {res.report} (plots beside it)")
        store_url = f"embedded://{workdir / 'vectors'}"
        with ui.step("deploy: item and user embeddings into the vector store, item features and bandit posteriors "
                     "into Redis"):
            captured = io.StringIO()
            done = deploy(root, res.version, [str(p) for p in logs], url, store_url, clock=Clock(t0), out=captured)
            (workdir / "logs").mkdir(parents=True, exist_ok=True)
            (workdir / "logs" / "deploy.log").write_text(captured.getvalue())
            ui.note(f"{done.items:,} items, {done.users_embedded:,} users embedded, {done.bandit_fields:,} bandit "
                    f"posteriors ({workdir / 'logs' / 'deploy.log'})")

        tier = Tier()
        client = get_redis(url)
        try:
            with ui.step(f"start the origin and an edge (gRPC on loopback) and the local live mode, the clock "
                         f"pinned an hour later, {format_instant(t1)}"):
                tier.start(url, root, store_url, workdir, t1, ui)
                story_user = user or pick_user(view)
                tier.calibrate([u for u in sorted(view.positives) if u != story_user][:CALIBRATION_USERS], ui)
            res.ports = {"origin": tier.origin.running.port, "edge": tier.edge.port}
            res.live_pid, res.live_log = tier.live.proc.pid, str(tier.live.log_path)
            _story(tier.stub(), FeatureStore(client, Clock(t1)), view, t1, user, intent, ui, res)
        finally:
            with ui.step("shut down: edge, origin, live mode"):
                tier.stop(ui)
                client.close()
    finally:
        serve_log.setLevel(level)
        if pinned is None:
            os.environ.pop(AS_OF_ENV, None)
        else:
            os.environ[AS_OF_ENV] = pinned
    res.steps = dict(ui.times)
    return res


def _check_choices(view: LogView, user: str | None, intent: str | None) -> None:
    """--user and --intent refused by name before anything runs, not after the training."""
    if user is not None and user not in view.positives:
        raise DemoError(f"--user {user!r}: no positive interaction of this user in the log")
    known = sorted({c for cats in view.categories.values() for c in cats})
    if intent is not None and intent not in known:
        raise DemoError(f"--intent {intent!r}: not a category of the catalogue (known: {', '.join(known)})")


def _production(root: str) -> str:
    from models import registry as reg

    alias = reg.read_alias(root)
    if alias is None:
        raise DemoError(f"--registry {root}: no version was ever promoted to production")
    return alias.version


def run_demo(data: str, workdir: Path, cache_dir: Path, registry: str | None = None, user: str | None = None,
             intent: str | None = None, train_args: list[str] | None = None) -> int:
    """`pulserank demo`: the loop, then where its outputs are and the figures that matter."""
    started = time.perf_counter()
    res = demo(data, workdir, cache_dir, registry, user, intent, train_args)
    logs = Path(res.live_log).parent
    if res.report:
        print(f"evaluation report: {res.report}; plots: " + ", ".join(
            sorted(p.name for p in Path(res.report).parent.glob("*.png"))))
    print(f"logs: {logs} (train, deploy, live); the live events' data lake: {Path(workdir).resolve() / 'lake'}")
    fresh = f"{res.freshness_s:.2f}s" if res.freshness_s is not None else "not measured (timed out)"
    print(f"done in {time.perf_counter() - started:.0f}s: {res.user}'s share of {res.intent} {res.share_before:.0%} → "
          f"{res.share_after:.0%}, freshness {fresh}; nothing left running (the embedded Redis stops as the command "
          f"exits)")
    return 0 if res.reconciles and res.freshness_s is not None else 1
