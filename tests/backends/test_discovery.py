"""Width discovery over real sockets: SGLang, TGI and vLLM answers as those servers write them,
and a server that says nothing (adaptive)."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.aio import run
from velollmd.backends.openai import OpenAIBackend
from velollmd.config import BackendConfig

MODELS = {"object": "list", "data": [{"id": "m", "object": "model"}]}
VLLM_METRICS = (b"# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
                b"# TYPE vllm:num_requests_running gauge\n"
                b'vllm:num_requests_running{model_name="m"} 0.0\n')


class ScriptedServer:
    """GET path -> (status, body bytes); anything else 404."""

    def __init__(self, routes: dict[str, tuple[int, bytes]]):
        routes = {"/v1/models": (200, json.dumps(MODELS).encode()), **routes}
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hits.append(self.path)
                status, body = routes.get(self.path, (404, b'{"detail":"Not Found"}'))
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def discover(routes: dict, slots: int = 0) -> tuple[OpenAIBackend, ScriptedServer]:
    server = ScriptedServer(routes)
    backend = OpenAIBackend(BackendConfig(name="b", kind="openai", url=server.url, models=["*"], slots=slots))

    async def main():
        try:
            assert await backend.refresh()
            await backend.refresh()                  # asked once per start, not per check
        finally:
            await backend.close()
    try:
        run(main())
    finally:
        server.close()
    return backend, server


@pytest.mark.parametrize("path,body,server_name", [
    ("/get_server_info", {"model_path": "m", "max_running_requests": 48, "tp_size": 1}, "SGLang"),
    ("/info", {"model_id": "m", "max_concurrent_requests": 128, "max_best_of": 2}, "TGI"),
])
def test_a_server_that_states_its_width_is_taken_at_its_word(path, body, server_name):
    backend, server = discover({path: (200, json.dumps(body).encode())})
    width = body.get("max_running_requests") or body.get("max_concurrent_requests")
    assert (backend.num_slots, backend.slots_source, backend.server) == (width, path, server_name)
    assert backend.status()["slots"] == width and backend.status()["slots_source"] == path
    assert server.hits.count(path) == 1


def test_vllm_is_recognised_but_its_width_is_learnt():
    backend, _ = discover({"/metrics": (200, VLLM_METRICS)})
    assert backend.server == "vLLM" and backend.slots_source is None
    assert backend.status()["slots"] is None


@pytest.mark.parametrize("routes", [
    {},                                                        # LM Studio, LocalAI, ...: nothing
    {"/info": (200, b'{"max_concurrent_requests": "many"}')},  # wrong type
    {"/info": (200, b"not json")},
    {"/get_server_info": (200, b'{"max_running_requests": null}')},
    {"/metrics": (200, b"# other exporter\nup 1\n")},
])
def test_a_server_that_says_nothing_has_an_unknown_width(routes):
    backend, _ = discover(routes)
    assert backend.slots_source is None and backend.server == ""


def test_configured_slots_win_and_nothing_is_asked():
    backend, server = discover({"/info": (200, b'{"max_concurrent_requests": 128}')}, slots=4)
    assert (backend.num_slots, backend.slots_source) == (4, "config")
    assert "/info" not in server.hits


def test_a_server_that_went_away_is_asked_again_when_back():
    backend, _ = discover({"/info": (200, b'{"max_concurrent_requests": 16}')})
    backend.forget_server()
    assert backend.server is None and backend.slots_source is None and backend.num_slots == 1
