"""Registry test tools: an object-store-like filesystem, the record seal, and a crash fork server.

`CopyDeleteFS` (`prtorn:///abs/dir`) stores in a local directory under a scheme the registry treats
as remote, and renames the way object stores do, copy then delete, with the worst case on top:
the copy is written in place piece by piece, so a crash mid-copy leaves a partial object at its
final name for readers to see.

`seal` computes a record's `sha256_of_body` from the format the registry documents, independently
of its code, so tests can forge records that seal.

`python -m tests.registry_fixtures` is a fork server (one fresh interpreter, so no threads of the
test process are forked): per request line {"fn", "args", "kill_at", "chunk"} it forks a child
that runs `models.registry.<fn>(*args)` with a step hook that reports every step and SIGKILLs the
child at step `kill_at` (-1: never); it answers {"signal", "exit", "steps", "error"}.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys

from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.localfilesystem import LocalFileSystem

from models import registry


class CopyDeleteFS(LocalFileSystem):
    PREFIX = "prtorn://"
    PIECES = 3

    @classmethod
    def scheme(cls) -> str:
        return "prtorn"

    def _local(self, path: str) -> str:
        return path[len(self.PREFIX):] if path.startswith(self.PREFIX) else path

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def create(self, path, *args, **kwargs):
        return super().create(self._local(path), *args, **kwargs)

    def open(self, path, *args, **kwargs):
        return super().open(self._local(path), *args, **kwargs)

    def exists(self, path):
        return super().exists(self._local(path))

    def delete(self, paths):
        return super().delete([self._local(p) for p in paths])

    def metadata(self, path):
        m = super().metadata(self._local(path))
        return FileMetadata(self.PREFIX + m.path, m.size_in_bytes, m.last_updated_in_seconds)

    def _list(self, dir_or_prefix):
        for m in super()._list(self._local(dir_or_prefix)):
            yield FileMetadata(self.PREFIX + m.path, m.size_in_bytes, m.last_updated_in_seconds)

    def rename(self, sources, destinations):
        for src, dst in zip(sources, destinations, strict=True):
            with open(self._local(src), "rb") as f:
                data = f.read()
            cut = max(1, -(-len(data) // self.PIECES))
            with open(self._local(dst), "wb") as f:  # in place: readers may see a prefix
                for lo in range(0, len(data), cut):
                    f.write(data[lo:lo + cut])
                    f.flush()
                    registry._step(f"copy to {os.path.basename(dst)}: {lo + cut} of {len(data)} bytes")
            os.remove(self._local(src))
            registry._step(f"copy to {os.path.basename(dst)}: source deleted")


def seal(body: dict) -> dict:
    body = {k: v for k, v in body.items() if k != "sha256_of_body"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return {**body, "sha256_of_body": hashlib.sha256(canonical).hexdigest()}


def _child(request: dict, report: int) -> None:
    steps = 0

    def hook(label: str) -> None:
        nonlocal steps
        os.write(report, (json.dumps(label) + "\n").encode())
        if steps == request["kill_at"]:
            os.kill(os.getpid(), signal.SIGKILL)
        steps += 1

    registry._CHUNK = request["chunk"]
    registry._on_step = hook
    try:
        getattr(registry, request["fn"])(*request["args"])
    except Exception as exc:
        os.write(report, (json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n").encode())
        os._exit(3)
    os._exit(0)


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _child(request, w)
        os.close(w)
        with os.fdopen(r) as f:
            lines = [json.loads(x) for x in f]
        _, status = os.waitpid(pid, 0)
        errors = [x["error"] for x in lines if isinstance(x, dict)]
        answer = {"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                  "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                  "steps": [x for x in lines if isinstance(x, str)], "error": errors[0] if errors else None}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve()
