"""An Ollama API server for tests, on stdlib http.server, following Ollama's docs/api.md.

    with OllamaEmulator() as emu:           # 127.0.0.1, free port, background thread
        emu.script("Hello there", delay_s=0.01)      # next generation request gets this
        emu.script(tool_calls=[{"name": "f", "arguments": {"x": 1}}])
        ... ollama.Client(host=emu.url).chat(...)
        assert emu.count("/api/chat") == 2
        emu.last_request("/api/chat")        # the parsed JSON body

Without a script, replies are deterministic words derived from the prompt, exactly
options.num_predict of them (default 8), one per NDJSON chunk. HTTP/1.1 keep-alive; streams
use chunked transfer encoding; a client that disconnects mid-stream is counted in
`emu.disconnects`. The endpoints live in ollama_routes.py (native API) and
ollama_openai_compat.py (Ollama's OpenAI compatibility); this module is state + transport.
"""
from __future__ import annotations

import collections
import json
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable

from tests.rig.ollama_replies import (
    DEFAULT_MODELS,
    EmulatedModel,
    ScriptedReply,
    default_reply,
    parse_keep_alive,
)
from tests.rig.ollama_routes import ROUTES


class ClientGone(Exception):
    """The client closed its connection while we were streaming."""


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any          # parsed JSON, or None when the body was empty or not JSON
    raw: bytes


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up between requests is normal here; report anything else."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class OllamaEmulator:
    """Shared state of one emulated Ollama: models, scripted replies, counters."""

    def __init__(self, models: Iterable[EmulatedModel] = DEFAULT_MODELS, host: str = "127.0.0.1"):
        self.models = {m.name: m for m in models}
        self.host = host
        self.request_counts: collections.Counter[str] = collections.Counter()
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0
        self.loaded: dict[str, float | None] = {}   # model name -> expiry (time.time()), None = forever
        self.stopping_s = 0.0      # how long a model unloaded by keep_alive 0 stays in /api/ps, expired
                                   # ("Stopping..."): Ollama answers the unload before its runner is gone
        self._replies: collections.deque[ScriptedReply] = collections.deque()
        self._connections: set[socket.socket] = set()     # open client connections, for kill()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> "OllamaEmulator":
        self._server = _Server((self.host, 0), _Handler)
        self._server.emulator = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="ollama-emulator",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def kill(self) -> None:
        """Stop as a crashed Ollama does: no new connections, and the open ones (a client's
        keep-alive pool) closed too, where `stop` lets their handler threads serve on."""
        self.stop()
        with self._lock:
            open_connections, self._connections = self._connections, set()
        for connection in open_connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> "OllamaEmulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "emulator not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # scripting
    def script(self, content: str = "", **fields: Any) -> ScriptedReply:
        """Queue a reply (see ScriptedReply for fields) for the next generation request."""
        reply = ScriptedReply(content=content, **fields)
        self.push_reply(reply)
        return reply

    def push_reply(self, *replies: ScriptedReply) -> None:
        with self._lock:
            self._replies.extend(replies)

    def next_reply(self, body: dict[str, Any]) -> ScriptedReply:
        with self._lock:
            if self._replies:
                return self._replies.popleft()
        return default_reply(body)

    # inspection
    def count(self, path: str) -> int:
        return self.request_counts[path]

    def last_request(self, path: str) -> Any:
        """The parsed body of the latest request to path (None if there was none)."""
        with self._lock:
            for request in reversed(self.requests):
                if request.path == path:
                    return request.body
        return None

    def reset(self) -> None:
        with self._lock:
            self.request_counts.clear()
            self.requests.clear()
            self._replies.clear()
            self.loaded.clear()
            self.stopping_s = 0.0
            self.disconnects = 0

    # model state
    def find_model(self, name: Any) -> EmulatedModel | None:
        if not isinstance(name, str):
            return None
        return self.models.get(name) or self.models.get(f"{name}:latest")

    def touch(self, model: EmulatedModel, keep_alive: Any) -> None:
        seconds = parse_keep_alive(keep_alive)
        with self._lock:
            if seconds == 0 and model.name in self.loaded:
                self.loaded[model.name] = time.time()          # expires now, as Ollama's expireRunner
            elif seconds != 0:
                self.loaded[model.name] = None if seconds is None else time.time() + seconds

    def running(self) -> list[tuple[EmulatedModel, float | None]]:
        now = time.time()
        with self._lock:
            return [(self.models[n], exp) for n, exp in self.loaded.items()      # a removed model is gone
                    if n in self.models and (exp is None or exp > now - self.stopping_s)]

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.request_counts[request.path] += 1
            self.requests.append(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ollama-emulator"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output clean
        pass

    @property
    def emu(self) -> OllamaEmulator:
        return self.server.emulator  # type: ignore[attr-defined]

    def setup(self) -> None:
        super().setup()
        with self.emu._lock:
            self.emu._connections.add(self.connection)

    def finish(self) -> None:
        with self.emu._lock:
            self.emu._connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        raw = self._read_body()
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            body = None
        self.emu._record(RecordedRequest(method, path, dict(self.headers.items()), body, raw))
        route = ROUTES.get((method, path))
        if route is None:
            allowed = any(p == path for _, p in ROUTES)
            status = 405 if allowed else 404
            return self.send_text(status, "405 method not allowed" if allowed else "404 page not found")
        if method == "POST" and not isinstance(body, dict):
            return self.send_json(400, {"error": _bad_json_message(raw)})
        try:
            route(self, body)
        except ClientGone:
            self.emu.disconnects += 1
            self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    # responses
    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send_full(status, json.dumps(obj).encode(), "application/json; charset=utf-8", headers)

    def send_text(self, status: int, text: str) -> None:
        self._send_full(status, text.encode(), "text/plain; charset=utf-8")

    def _send_full(self, status: int, data: bytes, content_type: str,
                   headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def send_chunk(self, data: bytes) -> None:
        """One HTTP chunk; raises ClientGone when the client has hung up."""
        if self._peer_closed():
            raise ClientGone()
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ClientGone() from exc

    def end_stream(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ClientGone() from exc

    def drop_connection(self) -> None:
        """Close the socket mid-response, as a crashing server would."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _peer_closed(self) -> bool:
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    # shared by the routes
    def model_or_error(self, body: dict[str, Any], key: str = "model") -> EmulatedModel | None:
        name = body.get(key) or body.get("name")
        if not name:
            self.send_json(400, {"error": "model is required"})
            return None
        model = self.emu.find_model(name)
        if model is None:
            self.send_json(404, {"error": f'model "{name}" not found, try pulling it first'})
        return model

    def stream_pieces(self, reply: ScriptedReply, pieces: list[str], make_chunk, encode) -> bool:
        """Send each piece as one chunk; return False if the script ended the stream early."""
        for index, piece in enumerate(pieces):
            if reply.error_after == index:
                self.send_chunk(encode({"error": reply.error}))
                self.end_stream()
                return False
            if reply.drop_after == index:
                self.drop_connection()
                return False
            if reply.delay_s:
                time.sleep(reply.delay_s)
            self.send_chunk(encode(make_chunk(piece)))
        if reply.error_after is not None and reply.error_after >= len(pieces):
            self.send_chunk(encode({"error": reply.error}))
            self.end_stream()
            return False
        if reply.drop_after is not None and reply.drop_after >= len(pieces):
            self.drop_connection()
            return False
        return True


def _bad_json_message(raw: bytes) -> str:
    if not raw.strip():
        return "missing request body"
    try:
        json.loads(raw)
    except ValueError as exc:
        return f"invalid character in request body: {exc}"
    return "request body must be a JSON object"
