"""A real OpenAI-compatible HTTP backend whose answers wait at a gate the test opens.

Each chat request is recorded (its last message's content) when it arrives, then waits
until the test calls `open(n)`; with `slots = 1` in the daemon's config, the arrival order
is the daemon's admission order.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class GateBackend:
    def __init__(self):
        self.arrivals: list[str] = []
        self._gate = threading.Semaphore(0)
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send({"object": "list", "data": [{"id": "gate", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                gate.arrivals.append(body["messages"][-1]["content"])
                gate._gate.acquire()
                self._send({"id": "x", "object": "chat.completion", "model": "gate", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]})

            def _send(self, obj):
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass                # the daemon gave up on this call (a client left): fine

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def open(self, num: int = 1) -> None:
        for _ in range(num):
            self._gate.release()

    def wait_arrivals(self, num: int, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.arrivals) < num and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.arrivals)

    def __enter__(self) -> GateBackend:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.open(1000)
        self.server.shutdown()
        self.server.server_close()
