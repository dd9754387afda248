"""A loopback OpenAI-compatible chat server standing in for the external LLM gateway.

It speaks the real protocol (POST /v1/chat/completions, JSON in, `choices[0].message.content`
out) in a background thread, so the reasoner's real httpx client, timeouts and parsing are what
the tests exercise. Modes: `normal` answers after `delay_s` with a sentence echoing the prompt's
user message (so tests can see the user's context reached the model), `slow` sleeps `slow_s`
first, `error` answers HTTP 500, `garbage` answers 200 with a body that is not JSON. Every call
is counted and its body and headers kept.

Benchmarks run it as its own process (`python -m tests.llm_server --mode normal`, which prints its
base URL), so its threads do not share the measured event loop's interpreter lock.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("normal", "slow", "error", "garbage")


class LlmServer:
    def __init__(self, mode: str = "normal", delay_s: float = 0.0, slow_s: float = 1.0) -> None:
        self.mode = mode
        self.delay_s = delay_s
        self.slow_s = slow_s
        self.requests: list[dict] = []  # each call's JSON body
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="llm-server",
                                        daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.requests)

    def start(self) -> LlmServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving (idempotent); later calls find the port closed."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()

    def _record(self, body: dict, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)

    def _reply(self, body: dict) -> tuple[int, bytes]:
        """(status, body) for one call in the current mode."""
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if self.mode == "error":
            return 500, json.dumps({"error": {"message": "internal error", "type": "server_error"}}).encode()
        if self.mode == "garbage":
            return 200, b"<html>upstream hiccup</html>"
        time.sleep(self.slow_s if self.mode == "slow" else self.delay_s)
        user = next((m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"), "")
        echo = " ".join(user.split())[:240]
        answer = {
            "id": "chatcmpl-loopback",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"You might enjoy this. [{echo}]"}}],
            "usage": {"prompt_tokens": (n := len(user.split())), "completion_tokens": 8, "total_tokens": n + 8},
        }
        return 200, json.dumps(answer).encode()


def _handler(server: LlmServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real gateways and httpx's pool expect
        # Headers and body in one buffered write with Nagle off: else delayed ACKs add ~40 ms a reply.
        wbufsize = -1
        disable_nagle_algorithm = True

        def do_POST(self) -> None:  # http.server calls it by this name
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, b'{"error": {"message": "not found"}}')
            try:
                body = json.loads(raw)
            except ValueError:
                return self._send(400, b'{"error": {"message": "body is not JSON"}}')
            server._record(body, dict(self.headers.items()))
            status, payload = server._reply(body)
            self._send(status, payload)

        def _send(self, status: int, payload: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (its deadline passed)
                pass

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    return Handler


@contextmanager
def running(mode: str = "normal", delay_s: float = 0.0, slow_s: float = 1.0) -> Iterator[LlmServer]:
    """A started server, stopped on exit."""
    server = LlmServer(mode, delay_s, slow_s).start()
    try:
        yield server
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the loopback LLM gateway until killed; prints its base URL.")
    parser.add_argument("--mode", choices=MODES, default="normal")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="answer time in normal mode")
    parser.add_argument("--slow-ms", type=float, default=1000.0, help="answer time in slow mode")
    args = parser.parse_args()
    server = LlmServer(args.mode, args.delay_ms / 1000, args.slow_ms / 1000)
    print(server.base_url, flush=True)
    server._httpd.serve_forever(0.05)


if __name__ == "__main__":
    main()
