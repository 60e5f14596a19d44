"""How a real daemon (the in-process engine on the tiny GGUF) answers the method and the path
of a request before any API code runs: OPTIONS, 405 with its Allow (RFC 9110 9.3.7, 15.5.6)."""
import httpx
import pytest

from tests.daemon_rig import tiny_engine_daemon

MODEL = "tiny-route"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with tiny_engine_daemon(tmp_path_factory.mktemp("engine-models"), MODEL) as running:
        yield running


def allowed(answer: httpx.Response) -> list[str]:
    return [method.strip() for method in answer.headers["allow"].split(",")]


@pytest.mark.parametrize("path,methods", [
    ("/v1/chat/completions", ["OPTIONS", "POST"]),
    ("/v1/models", ["GET", "HEAD", "OPTIONS"]),
    ("/v1/models/tiny-route", ["GET", "HEAD", "OPTIONS"]),
    ("/v1/velollm/cache", ["DELETE", "GET", "HEAD", "OPTIONS"]),
    ("/api/tags", ["GET", "HEAD", "OPTIONS"]),
])
def test_options_without_an_origin_is_a_204_naming_the_routes_methods(daemon, path, methods):
    answer = httpx.options(daemon.url + path)
    assert answer.status_code == 204 and answer.content == b""
    assert sorted(allowed(answer)) == methods


def test_options_on_an_unknown_path_is_a_404(daemon):
    assert httpx.options(daemon.url + "/v1/no-such-route").status_code == 404


@pytest.mark.parametrize("method,path,methods", [
    ("GET", "/v1/chat/completions", ["OPTIONS", "POST"]),
    ("PUT", "/v1/models", ["GET", "HEAD", "OPTIONS"]),
    ("DELETE", "/api/chat", ["OPTIONS", "POST"]),
    ("PATCH", "/v1/velollm/cache", ["DELETE", "GET", "HEAD", "OPTIONS"]),
])
def test_a_405_carries_an_allow_with_head_and_options(daemon, method, path, methods):
    answer = httpx.request(method, daemon.url + path)
    assert answer.status_code == 405
    assert sorted(allowed(answer)) == methods
    error = answer.json()["error"]                       # Ollama's shape on /api/, OpenAI's elsewhere
    assert (error if path.startswith("/api/") else error["message"]) == f"method {method} not allowed for {path}"
