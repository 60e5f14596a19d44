"""Browser pages calling the daemon (CORS), decided as Ollama decides it: local pages and
`[server] allowed_origins` get the Access-Control-* headers (and a
preflight without a key); a page from any other origin gets 403 before anything runs, so a
site the user visits cannot make the daemon generate. A real daemon before the Ollama
emulator; the last test drives a real headless Chromium."""
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.daemon_rig import ollama_backend
from tests.rig.chromium import BrowserUnavailable, Chromium

MODEL = "llama3.2:latest"
KEY = "sk-cors"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
LOCAL_PAGE = "http://localhost:5173"


def chat_calls(emulator) -> int:
    return emulator.count("/api/chat") + emulator.count("/v1/chat/completions")


def test_requests_without_an_origin_are_answered_as_before(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)]})
    answer = httpx.post(daemon.url + "/v1/chat/completions", json=CHAT)
    assert answer.status_code == 200
    assert not [name for name in answer.headers if name.startswith("access-control-")]


def test_a_local_page_gets_the_headers_on_answers_and_on_errors(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"server": {"api_keys": [KEY]}, "backends": [ollama_backend(ollama_emulator)]})
    answer = httpx.post(daemon.url + "/v1/chat/completions", json=CHAT,
                        headers={"origin": LOCAL_PAGE, "authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200 and answer.json()["object"] == "chat.completion"
    assert answer.headers["access-control-allow-origin"] == LOCAL_PAGE
    assert answer.headers["vary"] == "origin"
    assert "x-request-id" in answer.headers["access-control-expose-headers"]
    refused = httpx.post(daemon.url + "/v1/chat/completions", json=CHAT, headers={"origin": LOCAL_PAGE})
    assert refused.status_code == 401                      # the page can read why
    assert refused.headers["access-control-allow-origin"] == LOCAL_PAGE
    streamed = httpx.post(daemon.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                          headers={"origin": "http://127.0.0.1:3000", "authorization": f"Bearer {KEY}"})
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
    assert streamed.headers["access-control-allow-origin"] == "http://127.0.0.1:3000"


def test_a_local_page_gets_the_headers_on_a_request_the_http_server_refuses(daemon_factory, ollama_emulator):
    """A body over max_body_bytes is refused (413) before any route runs; the page must still
    be able to read that answer, not see an opaque network error."""
    daemon = daemon_factory({"server": {"max_body_bytes": 1024}, "backends": [ollama_backend(ollama_emulator)]})
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2048}]}
    refused = httpx.post(daemon.url + "/v1/chat/completions", json=big, headers={"origin": LOCAL_PAGE})
    assert refused.status_code == 413 and "too large" in refused.json()["error"]["message"]
    assert refused.headers["access-control-allow-origin"] == LOCAL_PAGE
    other = httpx.post(daemon.url + "/v1/chat/completions", json=big, headers={"origin": "https://evil.example"})
    assert other.status_code == 413 and "access-control-allow-origin" not in other.headers


def test_a_preflight_needs_no_key_and_names_the_methods_and_headers(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"server": {"api_keys": [KEY]}, "backends": [ollama_backend(ollama_emulator)]})
    asked = "authorization, content-type, x-stainless-os"
    answer = httpx.options(daemon.url + "/v1/chat/completions", headers={
        "origin": "vscode-webview://1a2b3c", "access-control-request-method": "POST",
        "access-control-request-headers": asked})
    assert answer.status_code == 204 and answer.content == b"" and "content-length" not in answer.headers
    assert answer.headers["access-control-allow-origin"] == "vscode-webview://1a2b3c"
    assert answer.headers["access-control-allow-headers"] == asked
    assert "POST" in answer.headers["access-control-allow-methods"].split(", ")
    assert int(answer.headers["access-control-max-age"]) > 0
    # an OPTIONS that is not a preflight is answered as without an Origin: what the route allows
    plain = httpx.options(daemon.url + "/v1/chat/completions", headers={
        "origin": LOCAL_PAGE, "authorization": f"Bearer {KEY}"})
    assert plain.status_code == 204 and plain.headers["allow"] == "OPTIONS, POST"
    assert plain.headers["access-control-allow-origin"] == LOCAL_PAGE


def test_a_page_from_another_origin_is_refused_before_anything_runs(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)]})
    before = chat_calls(ollama_emulator)
    evil = {"origin": "https://evil.example", "content-type": "text/plain"}   # a "simple" request
    answer = httpx.post(daemon.url + "/v1/chat/completions", content=httpx.Request(
        "POST", "http://x", json=CHAT).content, headers=evil)
    assert answer.status_code == 403
    error = answer.json()["error"]
    assert error["code"] == "origin_not_allowed" and "allowed_origins" in error["message"]
    assert "access-control-allow-origin" not in answer.headers
    assert httpx.post(daemon.url + "/api/chat", json=CHAT, headers=evil).status_code == 403
    anthropic = httpx.post(daemon.url + "/v1/messages", headers={**evil, "anthropic-version": "2023-06-01"},
                           json={"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
    assert anthropic.status_code == 403 and anthropic.json()["error"]["type"] == "permission_error"
    preflight = httpx.options(daemon.url + "/v1/chat/completions", headers={
        "origin": "https://evil.example", "access-control-request-method": "POST"})
    assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
    assert httpx.get(daemon.url + "/health", headers={"origin": "null"}).status_code == 403
    assert chat_calls(ollama_emulator) == before


def test_allowed_origins_take_globs_and_star(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"server": {"allowed_origins": ["https://*.example.com", "chrome-extension://*"]},
                             "backends": [ollama_backend(ollama_emulator)]})

    def status(origin: str) -> int:
        return httpx.get(daemon.url + "/v1/models", headers={"origin": origin}).status_code
    assert status("https://chat.example.com") == 200
    assert status("HTTPS://Chat.Example.com") == 200
    assert status("chrome-extension://abcdefghijklmnop") == 200
    assert status("https://example.org") == 403
    assert status("http://chat.example.com") == 403            # the scheme is part of the origin
    daemon.reload({"server": {"allowed_origins": ["*"]}, "backends": [ollama_backend(ollama_emulator)]})
    assert status("https://example.org") == 200


def test_a_lan_address_is_not_local_even_when_it_is_the_daemons_own(daemon_factory, ollama_emulator):
    """A name made to resolve to the daemon (DNS rebinding) would be "its own origin" too."""
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)]})
    own = {"host": "192.168.1.5:8000", "origin": "http://192.168.1.5:8000"}
    assert httpx.get(daemon.url + "/v1/models", headers=own).status_code == 403
    daemon.reload({"server": {"allowed_origins": ["http://192.168.1.5:*"]}, "backends": [ollama_backend(ollama_emulator)]})
    assert httpx.get(daemon.url + "/v1/models", headers=own).status_code == 200


class _Page(BaseHTTPRequestHandler):
    """Serves one HTML page (the test's web app), from whatever address it was bound to."""
    html = b""

    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(self.html)))
        self.end_headers()
        self.wfile.write(self.html)

    def log_message(self, *args):
        pass


def serve_page(host: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, 0), _Page)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


FETCH_CHAT = """fetch(%r, {method: "POST", headers: {"content-type": "application/json",
    "authorization": "Bearer %s"}, body: JSON.stringify(%s)})
  .then(r => r.json()).then(j => j.object, e => "refused: " + e.name)"""


def test_a_real_browser_page_calls_the_daemon_from_a_local_origin_only(daemon_factory, ollama_emulator, tmp_path):
    try:
        browser = Chromium(tmp_path / "chromium-profile").start()
    except BrowserUnavailable as exc:
        pytest.skip(str(exc))
    daemon = daemon_factory({"server": {"api_keys": [KEY]}, "backends": [ollama_backend(ollama_emulator)]})
    _Page.html = b"<!doctype html><title>app</title>"
    local, other = serve_page("localhost"), serve_page("127.0.0.2")
    script = FETCH_CHAT % (daemon.url + "/v1/chat/completions", KEY, httpx.Request("POST", "http://x", json=CHAT)
                           .content.decode())
    try:
        page = browser.new_page()
        page.navigate(f"http://localhost:{local.server_address[1]}/")
        assert page.evaluate(script) == "chat.completion"     # preflighted (JSON, a key), then answered
        before = chat_calls(ollama_emulator)
        page.navigate(f"http://127.0.0.2:{other.server_address[1]}/")
        assert page.evaluate(script) == "refused: TypeError"
        assert chat_calls(ollama_emulator) == before
    finally:
        browser.close()
        local.shutdown()
        other.shutdown()
