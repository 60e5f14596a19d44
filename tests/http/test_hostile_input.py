"""Hostile input beyond the body, over raw sockets: header values with control bytes, floods of
headers, hostile `x-velollm-*` values, model names with path and glob characters, and the
cache-admin route from a non-loopback address without keys. Never a 500; the daemon keeps
serving."""
import json
import socket

import psutil
import pytest

from tests.daemon_rig import RunningDaemon
from tests.rig.fault_backend import MODEL, FaultBackend

CHAT = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()   # sampled: not cached


@pytest.fixture(scope="module")
def backend():
    with FaultBackend() as running:
        yield running


CACHED = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 0}).encode()


def daemon_table(backend: FaultBackend, **server) -> dict:
    return {"backends": [{"name": "f", "kind": "openai", "url": backend.url, "models": ["fault-*"]}],
            "server": server}


@pytest.fixture(scope="module")
def daemon(backend):
    with RunningDaemon(daemon_table(backend)) as running:
        yield running


def exchange(port: int, head: list[str], body: bytes = b"", host: str = "127.0.0.1") -> tuple[int, bytes]:
    """Send raw bytes (the head as given, UTF-8), read one response: (status, body)."""
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0 and b"content-length:" in data[:head_end].lower():
                length = int(data[:head_end].lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(data) >= head_end + 4 + length:
                    break
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def post(path: str, body: bytes, *headers: str) -> list[str]:
    return [f"POST {path} HTTP/1.1", "host: x", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close", *headers]


def chat_status(daemon: RunningDaemon, *headers: str) -> int:
    return exchange(daemon.port, post("/v1/chat/completions", CHAT, *headers), CHAT)[0]


@pytest.mark.parametrize("value", ["1\x01", "\x00", "1\x7f", "bypass\x0b", "a\x1bb", "x\x08"])
@pytest.mark.parametrize("name", ["x-velollm-priority", "x-velollm-cache", "authorization", "x-custom"])
def test_header_values_with_control_bytes_are_a_400(daemon, name, value):
    assert chat_status(daemon, f"{name}: {value}") == 400
    assert chat_status(daemon) == 200


@pytest.mark.parametrize("value,status", [
    ("9999", 400), ("-1", 400), ("\u0661", 400), ("", 400), ("1.5", 400), ("0x1", 400), ("1" * 10_000, 400),
    ("3", 200), ("3 ", 200),                      # optional whitespace around a value is not part of it
])
def test_hostile_priorities_are_a_400_naming_the_header(daemon, value, status):
    code, body = exchange(daemon.port, post("/v1/chat/completions", CHAT, f"x-velollm-priority: {value}"), CHAT)
    assert code == status
    if status == 400:
        assert json.loads(body)["error"]["param"] == "x-velollm-priority"


@pytest.mark.parametrize("value", ["12", "high", "-1"])
def test_a_bad_priority_is_a_400_on_a_cache_hit_too(daemon, value):
    """The same request was a 400 on a miss and a 200 once its answer was cached."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": f"p {value}"}],
                       "temperature": 0}).encode()
    assert exchange(daemon.port, post("/v1/chat/completions", body), body)[0] == 200      # cached now
    code, reply = exchange(daemon.port, post("/v1/chat/completions", body, f"x-velollm-priority: {value}"), body)
    assert code == 400 and json.loads(reply)["error"]["param"] == "x-velollm-priority"


@pytest.mark.parametrize("value", ["bypass" * 1000, "\xff\xfe", "refresh", "BYPASS, bypass", "*"])
def test_other_x_velollm_values_are_served_or_refused_never_a_500(daemon, value):
    assert chat_status(daemon, f"x-velollm-cache: {value}") in (200, 400)
    assert chat_status(daemon, f"x-velollm-tool-repair: {value}", f"x-velollm-backend: {value}") in (200, 400)


@pytest.mark.parametrize("num_headers,status", [(90, 200), (101, 431), (3000, 431), (20_000, 431)])
def test_floods_of_headers_are_served_or_431(daemon, num_headers, status):
    assert chat_status(daemon, *(f"x-h{i}: v" for i in range(num_headers))) == status
    assert chat_status(daemon) == 200


def error_shape(body: bytes) -> str:
    """Which API's error shape `body` has: Ollama's, Anthropic's or OpenAI's."""
    value = json.loads(body)
    if isinstance(value.get("error"), str):
        return "ollama"
    return "anthropic" if value.get("type") == "error" else "openai"


@pytest.mark.parametrize("path,shape", [("/api/chat", "ollama"), ("/v1/messages", "anthropic"),
                                        ("/v1/chat/completions", "openai")])
@pytest.mark.parametrize("status,head", [
    (431, lambda path: [f"POST {path} HTTP/1.1", "host: x", "x-big: " + "a" * 20_000]),
    (431, lambda path: [f"POST {path} HTTP/1.1", "host: x", *(f"x-h{i}: v" for i in range(101))]),
    (414, lambda path: [f"POST {path}?q={'a' * 9000} HTTP/1.1", "host: x"]),
], ids=["huge-field", "many-fields", "long-target"])
def test_heads_refused_for_their_size_get_their_routes_error_shape(daemon, path, shape, status, head):
    code, body = exchange(daemon.port, head(path))
    assert (code, error_shape(body)) == (status, shape)


@pytest.mark.parametrize("model,status", [
    ("*", 404), ("?", 404), ("[a-z]*", 404), ("../../etc/passwd", 404), ("%2e%2e%2f", 404),
    ("\\\\server\\share", 404), ("/etc/passwd", 404),
    ("fault-model\x00", 400), ("fault\r\nmodel", 400), ("x" * 5000, 400),
])
def test_model_names_with_path_glob_and_control_characters(daemon, backend, model, status):
    """A request's model name is a name, never a pattern or a path: glob characters match no
    configured backend by themselves, and control characters or huge names are refused."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "prompt": "hi"}).encode()
    before = backend.num_generations
    for path in ("/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate", "/api/show"):
        assert exchange(daemon.port, post(path, body), body)[0] == status, path
    target = model.replace("\x00", "%00").replace("\r\n", "%0D%0A").replace("?", "%3F")   # a raw ? starts the query
    assert exchange(daemon.port, [f"GET /v1/models/{target} HTTP/1.1", "host: x", "connection: close"])[0] == 404
    assert backend.num_generations == before                # nothing reached the backend


def non_loopback_address() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


@pytest.mark.parametrize("keys", [(), ("sk-admin",)], ids=["no-keys", "keys"])
def test_cache_flush_from_a_non_loopback_address_needs_a_key(backend, keys):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    # no keys on 0.0.0.0 needs allow_open (the exposure rule); cache admin stays loopback-only even then
    open_server = {} if keys else {"allow_open": True}
    with RunningDaemon(daemon_table(backend, host="0.0.0.0", api_keys=list(keys), **open_server)) as daemon:
        auth = [f"authorization: Bearer {keys[0]}"] if keys else []
        cached = [*post("/v1/chat/completions", CACHED), *auth]
        assert exchange(daemon.port, cached, CACHED)[0] == 200                    # one entry cached
        flush = ["DELETE /v1/velollm/cache HTTP/1.1", "host: x", "connection: close"]
        status, body = exchange(daemon.port, flush, host=address)
        assert status == 401 and "error" in json.loads(body)
        stats = ["GET /v1/velollm/cache HTTP/1.1", "host: x", "connection: close", *auth]
        assert json.loads(exchange(daemon.port, stats)[1])["entries"] == 1       # still there
        status, body = exchange(daemon.port, flush + auth, host=address if keys else "127.0.0.1")
        assert status == 200 and json.loads(body)["deleted"] == 1
