"""Every launch command in docs/runners.md builds its graph under its runner; the container files agree.

Nothing is submitted and nothing runs (no `run()`: Beam would start a job server or call Google
Cloud). Each `python -m pipelines.…` command of the doc, its `$VARIABLES` replaced by the values
below, builds its pipeline's graph; the portable proto the runner would receive (FlinkRunner: the
one `PortableRunner.get_proto_pipeline` makes, with the environment the flags name; Dataflow: the
SDK image of `--sdk_container_image`) must survive serialize → parse → `Pipeline.from_runner_api`.
tests/test_stream_graph.py covers the stream's options checks and runs it on a TestStream; this
file covers the doc's exact commands, replay and train too, and the images, the Flex Template and
the Flink configuration, statically (no image can be pulled or built here).
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from string import Template

import apache_beam as beam
import pytest
import yaml
from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners import pipeline_context
from apache_beam.runners.portability.portable_runner import PortableRunner
from apache_beam.testing import test_stream
from apache_beam.transforms import environments

from pipelines import replay, stream, train
from pipelines.options import FeatureOptions
from tests.test_stream_graph import KAFKA_SERVICE, _reachable

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "runners.md"
BEAM = beam.__version__
PY = f"{sys.version_info.major}.{sys.version_info.minor}"

# Test values for the doc's shell variables; a variable the doc uses and this table lacks fails.
VALUES = {
    "FLINK_MASTER": "flink-jobmanager:8081",
    "JOB_SERVER_JAR": f"/opt/beam/beam-runners-flink-1.20-job-server-{BEAM}.jar",
    "IMAGE": "registry.example.com/pulserank/beam-sdk:test",
    "REDIS_URL": "redis://redis.internal:6379/0",
    "VECTOR_STORE": "http://weaviate.internal:8080",
    "KAFKA_BROKERS": "kafka-1:9092,kafka-2:9092",
    "EXPANSION_SERVICE": KAFKA_SERVICE or "expansion-service.invalid:8097",
    "PROJECT": "pulserank-test",
    "REGION": "europe-west1",
    "BUCKET": "pulserank-test",
}
# Options of the Flink job server (FlinkPipelineOptions, snake_cased by its DescribePipelineOptions):
# unknown to Python's parser at graph-build time, accepted by the job server at submission.
FLINK_JOB_SERVER_FLAGS = {"--checkpointing_interval"}
KAFKA_REASON = ("Kafka's ReadFromKafka is a Java transform expanded at graph-build time: it needs an expansion "
                "service (set PULSERANK_KAFKA_EXPANSION_SERVICE to a jar path or host:port; its jar comes from "
                "Maven, which this machine cannot reach)")
KAFKA_READY = bool(KAFKA_SERVICE and (KAFKA_SERVICE.endswith(".jar") or _reachable(KAFKA_SERVICE)))


@dataclass(frozen=True)
class Launch:
    """One `python -m pipelines.<module> ...` command of the doc, variables substituted."""

    env: dict[str, str]
    module: str
    argv: list[str]

    def flag(self, name: str) -> str | None:
        for word in self.argv:
            if word.startswith(f"--{name}="):
                return word.split("=", 1)[1]
        return None

    @property
    def runner(self) -> str:
        return self.flag("runner") or ""

    @property
    def id(self) -> str:
        return "-".join(filter(None, [self.module, self.runner, self.flag("source")]))


def doc_launches() -> list[Launch]:
    launches = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if "python -m pipelines." not in line:
                continue
            words = shlex.split(Template(line).substitute(VALUES), comments=True)
            at = words.index("python")
            env = dict(w.split("=", 1) for w in words[:at])
            assert words[at + 1] == "-m", line
            launches.append(Launch(env, words[at + 2].removeprefix("pipelines."), words[at + 3:]))
    return launches


LAUNCHES = doc_launches()


def _flags_of(*classes) -> set[str]:
    parser = argparse.ArgumentParser(add_help=False)
    for cls in classes:
        cls._add_argparse_args(parser)
    return set(parser._option_string_actions)


@functools.cache
def beam_flags() -> frozenset[str]:
    """Every flag Beam's own option classes declare (the project's classes left out)."""
    captured: list[argparse.ArgumentParser] = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=captured.append)
    ours: set[str] = set()
    pending = list(PipelineOptions.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if not cls.__module__.startswith("apache_beam") and "_add_argparse_args" in vars(cls):
            ours |= _flags_of(cls)
    return frozenset(set(captured[0]._option_string_actions) - ours)


def accepted_flags(module: str) -> set[str]:
    own = {"replay": lambda: _flags_of(FeatureOptions, replay.ReplayOptions),
           "stream": lambda: _flags_of(FeatureOptions, stream.StreamOptions),
           "train": lambda: set(train.build_parser()._option_string_actions)}[module]()
    return beam_flags() | own


def test_the_doc_launches_every_pipeline_on_both_runners() -> None:
    assert sorted(launch.id for launch in LAUNCHES) == sorted([
        "replay-FlinkRunner", "stream-FlinkRunner-kafka", "train-FlinkRunner",
        "replay-DataflowRunner", "stream-DataflowRunner-pubsub", "train-DataflowRunner"])


@pytest.mark.parametrize("launch", LAUNCHES, ids=lambda launch: launch.id)
def test_every_flag_of_the_doc_is_accepted(launch: Launch) -> None:
    accepted = accepted_flags(launch.module)
    flags = {w.split("=", 1)[0] for w in launch.argv if w.startswith("--")}
    job_server = flags & FLINK_JOB_SERVER_FLAGS
    assert not job_server or launch.runner == "FlinkRunner", f"{job_server}: Flink job-server options"
    assert flags - accepted - job_server == set()
    if launch.runner == "FlinkRunner":
        assert launch.flag("flink_version") in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
        assert launch.flag("flink_job_server_jar") and launch.flag("flink_master")
        if "FLINK_CONF_DIR" in launch.env:
            assert (REPO / launch.env["FLINK_CONF_DIR"] / "flink-conf.yaml").is_file()
    else:
        assert launch.flag("sdk_container_image") == VALUES["IMAGE"]
        assert (REPO / launch.flag("setup_file")).resolve() == REPO / "setup.py"


# -- the graphs ---------------------------------------------------------------------------------

def _build(launch: Launch, tmp_path: Path) -> beam.Pipeline:
    argv = list(launch.argv)
    if launch.runner == "DataflowRunner":
        argv.append("--dry_run=True")  # else Beam checks the GCS buckets (network) while it builds the options
    if launch.module == "stream":
        return stream.pipeline(argv)
    if launch.module == "replay":
        options = PipelineOptions(argv)
        p = beam.Pipeline(options=options)
        replay.build(p, options.view_as(replay.ReplayOptions), launch.flag("redis_url"))
        return p
    import tensorflow_transform.beam as tft_beam

    args, beam_args = train.build_parser().parse_known_args(argv)
    p = beam.Pipeline(options=train.preprocess_options(beam_args))
    # TFT makes its temp dir while it builds, so the work dir is local here (gs:// in the doc).
    with tft_beam.Context(temp_dir=str(tmp_path / "tft-tmp")):
        train.build_preprocess(p, args.input.split(","), [("1", "50")], str(tmp_path))
    return p


def _submitted_proto(p: beam.Pipeline) -> beam_runner_api_pb2.Pipeline:
    """The proto the runner would receive (its environment included), built without submitting."""
    if isinstance(p.runner, PortableRunner):
        return PortableRunner.get_proto_pipeline(p, p.options)
    from apache_beam.runners.dataflow.internal import apiclient

    image = apiclient.get_container_image_from_options(p.options)
    return p.to_runner_api(default_environment=environments.DockerEnvironment.from_container_image(image))


def _expected_environment(launch: Launch) -> tuple[str, str]:
    kind = (launch.flag("environment_type") or "DOCKER").upper()
    if launch.runner == "DataflowRunner":
        return common_urns.environments.DOCKER.urn, launch.flag("sdk_container_image")
    urn = {"DOCKER": common_urns.environments.DOCKER.urn, "EXTERNAL": common_urns.environments.EXTERNAL.urn,
           "PROCESS": common_urns.environments.PROCESS.urn}[kind]
    return urn, launch.flag("environment_config")


def _environment_target(env: beam_runner_api_pb2.Environment) -> str:
    if env.urn == common_urns.environments.DOCKER.urn:
        return beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image
    if env.urn == common_urns.environments.EXTERNAL.urn:
        return beam_runner_api_pb2.ExternalPayload.FromString(env.payload).endpoint.url
    return beam_runner_api_pb2.ProcessPayload.FromString(env.payload).command


EXPECTED = {  # transform names each graph must carry
    "replay": {"Read", "ParseEvents", "DeadLetters", "RouteEvents", "Catalog", "WriteCatalog", "Features",
               "WriteFeatures"},
    "stream": {"Source", "StreamingFeatures/StreamingParse", "StreamingFeatures/EmitPanes",
               "StreamingFeatures/WriteFeatures", "DeadLetters"},
    "train": {"Read", "Parse", "Catalog", "HeldOut", "Examples", "RawFeatures", "AnalyzeAndTransform", "Encode",
              "WriteExamples", "WriteTransform", "WriteCatalog"},
}
SOURCES = {"pubsub": {"Source/ReadPubSub", "DeadLetters/WritePubSub"},
           "kafka": {"Source/ReadKafka", "DeadLetters/WriteKafka"}}


def _names(proto: beam_runner_api_pb2.Pipeline) -> set[str]:
    return {t.unique_name for t in proto.components.transforms.values()}


def _graph_params():
    for launch in LAUNCHES:
        marks = [pytest.mark.skipif(not KAFKA_READY, reason=KAFKA_REASON)] if launch.flag("source") == "kafka" else []
        yield pytest.param(launch, marks=marks, id=launch.id)


def _check_graph(launch: Launch, p: beam.Pipeline, expected: set[str]) -> None:
    """The submitted proto: transforms, environment, coders; then back into a Beam pipeline."""
    assert type(p.runner).__name__ == launch.runner
    proto = _submitted_proto(p)
    names = _names(proto)
    assert not {e for e in expected if not any(n == e or n.startswith(e + "/") for n in names)}

    # Every Python transform runs in the environment the flags name (Kafka's run in Java's).
    urn, target = _expected_environment(launch)
    python_envs = {t.environment_id for t in proto.components.transforms.values()
                   if t.environment_id and not re.match(r"(Source/ReadKafka|DeadLetters/WriteKafka)", t.unique_name)}
    assert python_envs
    for env_id in python_envs:
        env = proto.components.environments[env_id]
        assert (env.urn, _environment_target(env)) == (urn, target)

    # Each coder decodes from the proto alone, as a worker rebuilds it.
    context = pipeline_context.PipelineContext(proto.components)
    for coder_id in proto.components.coders:
        assert context.coders.get_by_id(coder_id) is not None
    if launch.module == "stream":  # state keyed by event id: a deterministic key coder on every runner
        dedupe = next(t for t in proto.components.transforms.values() if t.unique_name.endswith("/DeduplicateFn"))
        kv = proto.components.coders[proto.components.pcollections[next(iter(dedupe.inputs.values()))].coder_id]
        assert proto.components.coders[kv.component_coder_ids[0]].spec.urn == common_urns.coders.STRING_UTF8.urn
        assert common_urns.requirements.REQUIRES_STATEFUL_PROCESSING.urn in proto.requirements

    assert beam_runner_api_pb2.Pipeline.FromString(proto.SerializeToString()) == proto  # what goes on the wire
    # Flink receives the graph with its combiners lifted for the runner, which Python cannot rebuild: the
    # round trip back into a Beam pipeline starts from the graph before that step.
    graph = p.to_runner_api() if isinstance(p.runner, PortableRunner) else proto
    again = beam.Pipeline.from_runner_api(beam_runner_api_pb2.Pipeline.FromString(graph.SerializeToString()),
                                          p.runner, p.options).to_runner_api()
    assert _names(again) == _names(graph)
    assert len(again.components.pcollections) == len(graph.components.pcollections)
    assert ({c.spec.urn for c in again.components.coders.values()}
            == {c.spec.urn for c in graph.components.coders.values()})


@pytest.mark.parametrize("launch", _graph_params())
def test_the_doc_command_builds_its_graph_and_round_trips(launch: Launch, tmp_path: Path) -> None:
    _check_graph(launch, _build(launch, tmp_path),
                 EXPECTED[launch.module] | SOURCES.get(launch.flag("source"), set()))


def test_the_flink_stream_command_builds_after_its_source() -> None:
    """Without an expansion service, the doc's Flink stream command with a TestStream in Kafka's place
    (dead letters to the Redis stream): the same workers, Docker image and checkpointed state."""
    flink = next(launch for launch in LAUNCHES if launch.module == "stream" and launch.runner == "FlinkRunner")
    argv = [w for w in flink.argv if not w.startswith(("--source", "--kafka", "--expansion", "--dead_letter"))]
    assert (flink.flag("environment_type"), flink.flag("environment_config")) == ("DOCKER", VALUES["IMAGE"])
    source = test_stream.TestStream().add_elements([("test:0", 0, b"{}")]).advance_watermark_to_infinity()
    _check_graph(Launch(flink.env, "stream", argv), stream.pipeline(argv, source=source),
                 EXPECTED["stream"] | {"DeadLetters/Append"})


def test_pubsub_is_refused_on_flink_by_name() -> None:
    flink = next(launch for launch in LAUNCHES if launch.module == "stream" and launch.runner == "FlinkRunner")
    argv = [w for w in flink.argv if not w.startswith(("--source", "--kafka", "--expansion", "--dead_letter"))]
    with pytest.raises(ValueError, match=r"--source pubsub runs on DataflowRunner .* not FlinkRunner"):
        stream.pipeline([*argv, "--source=pubsub", "--subscription=projects/pulserank-test/subscriptions/events"])


# -- the container files, checked statically ----------------------------------------------------

def _dockerfile(path: Path) -> tuple[str, list[tuple[list[str], str]], dict[str, str], str]:
    """(FROM image, [(COPY sources, destination)], ENV, WORKDIR) of a plain Dockerfile."""
    base, copies, env, workdir = "", [], {}, "/"
    for line in path.read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "FROM":
            base = words[1]
        elif words[0] == "WORKDIR":
            workdir = words[1]
        elif words[0] == "COPY":
            copies.append((words[1:-1], words[-1]))
        elif words[0] == "ENV":
            key, value = words[1].split("=", 1)
            env[key] = value
    return base, copies, env, workdir


def _setup_packages() -> set[str]:
    """The top-level packages setup.py's find_packages(include=[...]) names."""
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "find_packages")
    include = next(k.value for k in call.keywords if k.arg == "include")
    return {ast.literal_eval(e).rstrip("*") for e in include.elts}


def _requirement_pin(name: str) -> str:
    line = next(ln for ln in (REPO / "requirements.txt").read_text().splitlines() if ln.startswith(name))
    return line.split("==")[1].split()[0]


def test_sdk_image_is_the_installed_beam_on_this_python() -> None:
    base, _, _, _ = _dockerfile(REPO / "Dockerfile")
    assert base == f"apache/beam_python{PY}_sdk:{BEAM}"
    assert _requirement_pin("apache-beam") == BEAM


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "deploy/flex-template/Dockerfile"])
def test_images_copy_what_exists_and_every_package_setup_installs(dockerfile: str) -> None:
    _, copies, _, workdir = _dockerfile(REPO / dockerfile)
    sources = [s for srcs, _ in copies for s in srcs]
    assert all((REPO / s).exists() for s in sources), sources
    copied_dirs = {s.rstrip("/") for srcs, dest in copies for s in srcs if (REPO / s).is_dir() and dest == s}
    assert _setup_packages() <= copied_dirs  # one COPY per folder: `COPY a/ b/ ./` would flatten them
    assert {"setup.py", "requirements.txt", "MANIFEST.in"} <= set(sources)
    assert workdir.startswith("/")


def test_flex_template_image_launches_the_stream_module() -> None:
    base, copies, env, workdir = _dockerfile(REPO / "deploy/flex-template/Dockerfile")
    major, minor = PY.split(".")
    assert base.split(":")[0] == f"gcr.io/dataflow-templates-base/python{major}{minor}-template-launcher-base"
    placed = {f"{workdir}/{dest}" if not dest.startswith("/") else dest: srcs[0] for srcs, dest in copies}
    assert placed[env["FLEX_TEMPLATE_PYTHON_PY_FILE"]] == "deploy/flex-template/main.py"
    assert env["FLEX_TEMPLATE_PYTHON_SETUP_FILE"] == f"{workdir}/setup.py"
    assert any("setup.py" in srcs and dest in ("./", ".", workdir) for srcs, dest in copies)

    # The launcher runs main.py as a script from a folder of its own: its flags reach pipelines.stream.
    run = subprocess.run([sys.executable, str(REPO / "deploy/flex-template/main.py"), "--redis_url=redis://r:6379/0"],
                         capture_output=True, text=True, timeout=120, cwd=REPO / "deploy/flex-template",
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "ignore"})
    assert run.returncode == 1
    assert "stream needs --source pubsub|kafka" in run.stderr


def _metadata() -> dict:
    return json.loads((REPO / "deploy/flex-template/metadata.json").read_text())


def test_flex_template_parameters_are_flags_of_the_stream_pipeline() -> None:
    meta = _metadata()
    assert set(meta) <= {"name", "description", "parameters", "streaming", "supportsAtLeastOnce",
                         "supportsExactlyOnce", "defaultStreamingMode"}  # the API's TemplateMetadata
    params = meta["parameters"]
    names = [p["name"] for p in params]
    assert len(names) == len(set(names))
    for p in params:  # gcloud refuses a parameter without these
        assert p["name"] and p["label"] and p["helpText"], p
        assert set(p) <= {"name", "label", "helpText", "isOptional", "regexes", "paramType", "defaultValue"}
    assert {f"--{n}" for n in names} <= accepted_flags("stream")
    own = _flags_of(FeatureOptions, stream.StreamOptions) - {"--wait", "--as_of"}  # the launcher must not block
    assert own <= {f"--{n}" for n in names}, "a stream flag the template cannot pass"
    required = {p["name"] for p in params if not p.get("isOptional")}
    assert required == {"source", "redis_url"}  # what stream refuses to start without

    source = next(p for p in params if p["name"] == "source")
    assert all(re.fullmatch(source["regexes"][0], s) for s in stream.SOURCES)
    assert not re.fullmatch(source["regexes"][0], "kinesis")
    for p in params:
        for rx in p.get("regexes", []):
            re.compile(rx)


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud (the Cloud SDK) is not installed")
def test_gcloud_accepts_the_flex_template_metadata() -> None:
    run = subprocess.run(["gcloud", "dataflow", "flex-template", "build", "gs://pulserank-test/templates/stream.json",
                          "--image=registry.example.com/pulserank/stream-launcher:test", "--sdk-language=PYTHON",
                          f"--metadata-file={REPO / 'deploy/flex-template/metadata.json'}", "--print-only"],
                         capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "TERM": "dumb",
                                                                           "HOME": str(Path.home())})
    assert run.returncode == 0, run.stderr
    spec = yaml.safe_load(run.stdout)  # a YAML block scalar holding the JSON spec
    assert [p["name"] for p in json.loads(spec)["metadata"]["parameters"]] == [p["name"] for p in
                                                                                _metadata()["parameters"]]


def _seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)\s*(ms|s|min|h)?", str(value)).groups()
    return int(number) * {"ms": 0.001, "s": 1, "min": 60, "h": 3600, None: 0.001}[unit]


def test_flink_conf_selects_rocksdb_with_checkpoints_the_doc_agrees_with() -> None:
    conf = yaml.safe_load((REPO / "deploy/flink/flink-conf.yaml").read_text())
    assert all(not isinstance(v, (dict, list)) for v in conf.values())  # Flink 1.x's parser reads flat keys only
    assert conf["state.backend.type"] == "rocksdb"
    assert re.match(r"^[a-z0-9]+://", conf["state.checkpoints.dir"])  # shared storage, not a task manager's disk
    interval = _seconds(conf["execution.checkpointing.interval"])
    streaming = [launch for launch in LAUNCHES if launch.module == "stream" and launch.runner == "FlinkRunner"]
    assert streaming
    for launch in streaming:
        assert int(launch.flag("checkpointing_interval")) / 1000 == interval
        assert (REPO / launch.env["FLINK_CONF_DIR"]).resolve() == (REPO / "deploy/flink").resolve()


def test_the_doc_names_jars_of_the_installed_beam_and_a_supported_flink() -> None:
    text = DOC.read_text()
    jobs = re.findall(r"beam-runners-flink-(\d+\.\d+)-job-server-([\w.]+?)\.jar", text)
    io = re.findall(r"beam-sdks-java-io-expansion-service-([\w.]+?)\.jar", text)
    assert jobs and io
    assert {version for _, version in jobs} | set(io) == {BEAM}
    flink = {f for f, _ in jobs}
    assert flink <= set(FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS)
    assert {launch.flag("flink_version") for launch in LAUNCHES if launch.runner == "FlinkRunner"} == flink


def test_the_package_the_images_install_carries_the_files_it_reads_at_run_time(tmp_path: Path) -> None:
    """Workers install an sdist (--setup_file) or `pip install .`: Lua scripts and protos must ship."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "requirements.txt"):
        shutil.copy(REPO / name, src / name)
    data = set()
    for package in _setup_packages():
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        data |= {p.relative_to(src).as_posix() for p in (src / package).rglob("*")
                 if p.is_file() and p.suffix != ".py"}
    assert any(d.endswith(".lua") for d in data)
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "sdist")], cwd=src, check=True,
                   capture_output=True)
    (sdist,) = (tmp_path / "sdist").glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert data <= in_sdist
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "wheel"), str(sdist)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    assert data <= set(zipfile.ZipFile(wheel).namelist())


@pytest.mark.parametrize("module", ["replay", "stream"])
def test_as_of_reaches_cluster_workers_inside_the_merges(module: str, redis_url: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`--as_of` pins the Redis merges' clock on the workers: it travels in the pickled DoFn of the
    submitted graph, since the launcher's environment (PULSERANK_AS_OF) stays on the launcher."""
    from apache_beam.internal import pickler

    from schemas.clock import AS_OF_ENV, parse_instant

    launch = next(la for la in LAUNCHES if la.module == module and la.flag("source") != "kafka")  # no expansion
    as_of = "2021-06-01T12:00:00Z"
    p = _build(Launch(launch.env, module, [*launch.argv, f"--as_of={as_of}"]), tmp_path)
    monkeypatch.delenv(AS_OF_ENV, raising=False)  # what a worker sees
    merges = [t for t in _submitted_proto(p).components.transforms.values()
              if t.unique_name.endswith("WriteFeatures/Apply")]
    assert merges
    for transform in merges:
        payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
        dofn = pickler.loads(payload.do_fn.payload)[0]
        dofn.redis_url, dofn.vector_url = redis_url, None  # the doc's servers are not reachable here
        dofn.setup()
        try:
            assert dofn.store.clock.pinned_ms == parse_instant(as_of)
        finally:
            dofn.client.close()
