# The Beam SDK worker image: Beam's own Python 3.11 harness (its /opt/apache/beam/boot entrypoint is
# kept) with Pulserank and its pinned runtime requirements installed. Flink runs it with
# --environment_type=DOCKER (or as an EXTERNAL worker pool: `docker run IMAGE --worker_pool`);
# Dataflow with --sdk_container_image. See docs/runners.md.
#
#   docker build -t "$IMAGE" . && docker push "$IMAGE"
#
# The tag must equal the apache-beam pin in requirements.txt and the Python version the pipelines
# are launched with: the launcher pickles the pipeline and these workers unpickle it
# (tests/test_runner_graphs.py checks both).
FROM apache/beam_python3.11_sdk:2.77.0

WORKDIR /opt/pulserank
COPY requirements.txt setup.py pyproject.toml MANIFEST.in ./
COPY pulserank/ pulserank/
COPY pipelines/ pipelines/
COPY transforms/ transforms/
COPY serving/ serving/
COPY models/ models/
COPY schemas/ schemas/
COPY stores/ stores/

# setup.py's install_requires is requirements.txt without the test tools, `==` pins included.
# No `pip check`: the base image carries packages of its own that Pulserank neither uses nor pins.
RUN pip install --no-cache-dir .
