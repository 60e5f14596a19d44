"""A small real HTTP server (stdlib, background thread) with scripted routes, for what the
daemon does not serve yet: the `x-velollm-cache` header, /v1/velollm/cache, /metrics.

    with ScriptedServer({"/metrics": (200, "text/plain", b"...")}) as server: server.url
POST /v1/chat/completions streams `num_tokens` one-word SSE chunks plus a usage chunk; the
response carries `x-velollm-cache: hit-exact` on every `hit_every`-th request (1-based).
A route scripted as HANG is read and never answered (a hung daemon) until the server stops;
`paths` lists the GETs received, in order.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HANG = None                                    # a route's script: read the request, never answer


class ScriptedServer:
    def __init__(self, routes: dict[str, tuple[int, str, bytes] | None] | None = None,
                 num_tokens: int = 4, hit_every: int = 0):
        self.routes = {"/v1/models": (200, "application/json", b'{"data":[{"id":"scripted"}]}'),
                       **(routes or {})}
        self.num_tokens = num_tokens
        self.hit_every = hit_every
        self.num_chats = 0
        self.paths: list[str] = []
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.scripted = self  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ScriptedServer:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        scripted = self.server.scripted
        scripted.paths.append(self.path)
        script = scripted.routes.get(self.path, (404, "text/plain", b"not found"))
        if script is HANG:
            scripted.stopped.wait()
            return
        status, content_type, body = script
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path != "/v1/chat/completions":
            return self.do_GET()
        scripted = self.server.scripted
        with scripted._lock:
            scripted.num_chats += 1
            hit = scripted.hit_every and scripted.num_chats % scripted.hit_every == 0
        events = [{"choices": [{"index": 0, "delta": {"content": f" w{i}"}}]} for i in range(scripted.num_tokens)]
        events.append({"choices": [], "usage": {"completion_tokens": scripted.num_tokens, "prompt_tokens": 3}})
        body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-velollm-cache", "hit-exact" if hit else "miss")
        self.end_headers()
        self.wfile.write(body)
