"""How a real daemon (the in-process engine on the tiny GGUF) answers the method, the path
and the body's coding of a request before any API code runs: OPTIONS, 405 with its Allow
(RFC 9110 9.3.7, 15.5.6), a path with a trailing slash (served as the path without it, as
Ollama's gin redirects to it), a gzip body (decoded) or one in a coding it does not take (415)."""
import gzip
import json

import httpx
import pytest

from tests.daemon_rig import tiny_engine_daemon

MODEL = "tiny-route"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


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


@pytest.mark.parametrize("method,path,check", [
    ("GET", "/v1/models/", lambda body: MODEL in [m["id"] for m in body["data"]]),
    ("GET", "/api/tags/", lambda body: MODEL in [m["name"].partition(":")[0] for m in body["models"]]),
    ("GET", "/v1/models/tiny-route/", lambda body: body["id"] == MODEL),
    ("GET", "/health/", lambda body: body["status"] == "ok"),
    ("POST", "/v1/chat/completions/", lambda body: body["object"] == "chat.completion"),
    ("POST", "/api/chat/", lambda body: body["done"] is True),
])
def test_a_trailing_slash_is_served_as_the_path_without_it(daemon, method, path, check):
    body = {**CHAT, "stream": False} if method == "POST" else None
    answer = httpx.request(method, daemon.url + path, json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert check(answer.json())


@pytest.mark.parametrize("path", ["/v1/no-such-route/", "/v1//", "/api/tags//", "/v1/chat/"])
def test_paths_that_do_not_exist_stay_404_with_or_without_a_slash(daemon, path):
    answer = httpx.get(daemon.url + path)
    assert answer.status_code == 404


def test_a_gzip_request_body_is_served_and_an_unknown_coding_is_a_415_in_the_apis_shape(daemon):
    body = gzip.compress(json.dumps({**CHAT, "stream": False}).encode())
    answer = httpx.post(daemon.url + "/v1/chat/completions", content=body, timeout=60,
                        headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert answer.status_code == 200 and answer.json()["object"] == "chat.completion"
    refused = httpx.post(daemon.url + "/api/chat", content=body, headers={"content-encoding": "br"})
    assert refused.status_code == 415 and refused.headers["accept-encoding"] == "gzip, deflate"
    assert "'br' is not supported" in refused.json()["error"]            # Ollama's shape: a string
