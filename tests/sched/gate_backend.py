"""A real OpenAI-compatible HTTP backend of `num_slots` slots whose answers wait at a gate the
test opens.

Like llama-server, it runs `num_slots` requests at once and queues the others in arrival
order; a request whose client goes away is dropped (never run if it was queued, stopped if it
was running). Each chat
request is recorded (its last message's content) in `arrivals` when it takes a slot, then
waits until the test calls `open(n)`: `arrivals` is the order the backend ran them in.
"""
from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def client_left(sock: socket.socket) -> bool:
    """The peer closed its end (readable, and a peek reads nothing)."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""


class GateBackend:
    def __init__(self, num_slots: int = 1):
        self.arrivals: list[str] = []
        self.num_dropped = 0                # queued requests whose client left
        self._gate = threading.Semaphore(0)
        self._slots = threading.Condition()
        self._num_free = num_slots
        self._queue: deque[object] = deque()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send({"object": "list", "data": [{"id": "gate", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if not gate._take_slot(self.connection):
                    return
                try:
                    gate.arrivals.append(body["messages"][-1]["content"])
                    if not gate._pass_gate(self.connection):
                        return                  # the client left: stop, as llama-server does
                    self._send({"id": "x", "object": "chat.completion", "model": "gate", "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}]})
                finally:
                    gate._give_slot()

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

    def _take_slot(self, sock: socket.socket) -> bool:
        """Wait in arrival order for a free slot; False when the client left first."""
        ticket = object()
        with self._slots:
            self._queue.append(ticket)
            while not (self._num_free and self._queue[0] is ticket):
                self._slots.wait(0.01)
                if client_left(sock):
                    self._queue.remove(ticket)
                    self.num_dropped += 1
                    self._slots.notify_all()
                    return False
            self._queue.popleft()
            self._num_free -= 1
            return True

    def _pass_gate(self, sock: socket.socket) -> bool:
        """Wait for the test to open the gate; False when the client left first."""
        while not self._gate.acquire(timeout=0.01):
            if client_left(sock):
                return False
        return True

    def _give_slot(self) -> None:
        with self._slots:
            self._num_free += 1
            self._slots.notify_all()

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
