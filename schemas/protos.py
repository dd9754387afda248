"""Generates the Python stubs of `schemas/personalization.proto` with the pinned grpcio-tools.

The stubs are committed beside the .proto so nothing needs protoc at install or run time; a
test regenerates them into a temporary directory and compares bytes, so an edit to the .proto
without regenerating fails CI. Regenerate in place with `python -m schemas.protos`.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO = Path("schemas/personalization.proto")  # relative to the include root: sets import paths
OUTPUTS = (
    Path("schemas/personalization_pb2.py"),
    Path("schemas/personalization_pb2.pyi"),
    Path("schemas/personalization_pb2_grpc.py"),
)


class ProtocError(RuntimeError):
    """protoc refused the .proto (its messages are on stderr)."""


def generate(out_dir: Path) -> list[Path]:
    """Runs protoc on the .proto and returns the three files written under `out_dir`.

    The include root is the repo root, so the files land in `out_dir/schemas/` and import as
    `from schemas import personalization_pb2`; `out_dir` = the repo root regenerates in place.
    """
    from grpc_tools import protoc  # imported here: only generation needs grpcio-tools

    out_dir = Path(out_dir).resolve()
    (out_dir / PROTO.parent).mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(REPO_ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise ProtocError(f"protoc failed on {PROTO}")
    return [out_dir / path for path in OUTPUTS]


def main() -> int:
    """Regenerates the committed stubs in place and lists them."""
    for path in generate(REPO_ROOT):
        print(path.relative_to(REPO_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
