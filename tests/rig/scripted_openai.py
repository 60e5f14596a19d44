"""A scripted OpenAI-compatible server over a real socket (stdlib, background thread): SGLang's,
TGI's or vLLM's GET routes as those servers answer them (the test gives the bodies), and a chat
completion that records the body it got and answers one short message.

    server = ScriptedServer({"/metrics": (200, VLLM_METRICS), "/version": (200, b'{"version": "0.12.0"}')})
    ... server.url ... server.bodies[-1] ...
    server.close()
"""
from __future__ import annotations

import json
import threading
from typing import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODELS = {"object": "list", "data": [{"id": "m", "object": "model"}]}
VLLM_METRICS = (b"# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
                b"# TYPE vllm:num_requests_running gauge\n"
                b'vllm:num_requests_running{model_name="m"} 0.0\n')
ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "yes"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


class ScriptedServer:
    """GET path -> (status, body bytes), anything else 404; POST /v1/chat/completions recorded
    in `bodies` (parsed JSON) and answered with ANSWER; another POST path is answered from
    `routes` under "POST <path>" (recorded too), or 404: (status, body bytes), or a function of
    the parsed body giving (status, the answer as JSON)."""

    def __init__(self, routes: dict[str, tuple[int, bytes] | Callable[[dict], tuple[int, object]]]):
        routes = {"/v1/models": (200, json.dumps(MODELS).encode()), **routes}
        self.hits: list[str] = []
        self.bodies: list[dict] = []
        hits, bodies = self.hits, self.bodies

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hits.append(self.path)
                self._answer(*routes.get(self.path, (404, b'{"detail":"Not Found"}')))

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                scripted = routes.get(f"POST {self.path}")
                if scripted is None and self.path != "/v1/chat/completions":
                    return self._answer(404, b'{"detail":"Not Found"}')
                bodies.append(json.loads(body))
                if callable(scripted):
                    status, answer = scripted(bodies[-1])
                    scripted = status, json.dumps(answer).encode()
                self._answer(*(scripted or (200, json.dumps(ANSWER).encode())))

            def _answer(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
