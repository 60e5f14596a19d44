"""Request ids, the access log and the timing metrics, through the real daemon and the Ollama
emulator: every answer carries `x-request-id` (2xx, 4xx/5xx, errors before routing and in the
HTTP layer, streams), error bodies name it, log lines about the request carry it, one JSON
access-log line per request, and /metrics read by Prometheus's own text parser."""
import io
import json
import logging
import re
import socket
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_rig import ollama_backend
from velollmd.log import MAX_REQUEST_ID_CHARS, JSONFormatter, request_id_from

MODEL = "llama3.2:latest"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")
KEY = "sk-test-ids"


@pytest.fixture
def log_lines():
    """The daemon's log lines (JSON, as the daemon writes them) while a test runs: read()."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("velollmd")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(old_level)


@pytest.fixture
def keyed_daemon(daemon_factory, ollama_emulator):
    return daemon_factory({"server": {"api_keys": [KEY]}, "backends": [ollama_backend(ollama_emulator)]})


def call(daemon, method: str, path: str, request_id: str | None = None, key: str | None = KEY, **kwargs):
    headers = {"x-request-id": request_id} if request_id is not None else {}
    if key:
        headers["authorization"] = f"Bearer {key}"
    return httpx.request(method, daemon.url + path, headers=headers, timeout=30, **kwargs)


@pytest.mark.parametrize("method,path,body,key,status", [
    ("GET", "/health", None, None, 200),
    ("POST", "/v1/chat/completions", CHAT, KEY, 200),
    ("POST", "/v1/chat/completions", CHAT, None, 401),            # refused before routing
    ("POST", "/v1/chat/completions", {"model": MODEL}, KEY, 400),
    ("POST", "/v1/chat/completions", {**CHAT, "model": "nope"}, KEY, 404),
    ("GET", "/v1/chat/completions", None, KEY, 405),
    ("GET", "/no/such/route", None, KEY, 404),
])
def test_the_given_id_comes_back_on_every_answer_and_in_error_bodies(keyed_daemon, method, path, body, key,
                                                                     status):
    response = call(keyed_daemon, method, path, "client-id.42", key=key, json=body)
    assert response.status_code == status
    assert response.headers["x-request-id"] == "client-id.42"
    if status >= 400:
        error = response.json()["error"]
        assert error["request_id"] == "client-id.42"
        assert {"message", "type", "param", "code"} <= set(error)        # still the OpenAI shape


def test_a_generated_id_is_in_the_header_and_the_error_body(keyed_daemon):
    first = call(keyed_daemon, "GET", "/no/such/route")
    second = call(keyed_daemon, "GET", "/no/such/route")
    assert GENERATED_ID.match(first.headers["x-request-id"])
    assert first.json()["error"]["request_id"] == first.headers["x-request-id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize("given,expected", [
    ("abc-DEF_1.2:3@x+y=z/w", "abc-DEF_1.2:3@x+y=z/w"),
    ("a b<c>\"d'", "abcd"),
    ("x" * 500, "x" * MAX_REQUEST_ID_CHARS),
])
def test_bad_ids_are_sanitised(keyed_daemon, given, expected):
    response = call(keyed_daemon, "GET", "/health", given)
    assert response.headers["x-request-id"] == expected


@pytest.mark.parametrize("given", ["", "<>", " ", "\"';"])
def test_ids_with_nothing_usable_are_replaced(given):
    assert GENERATED_ID.match(request_id_from(given))
    assert GENERATED_ID.match(request_id_from(None))


def test_a_stream_carries_the_id_and_a_midstream_error_names_it(keyed_daemon, ollama_emulator):
    ollama_emulator.script("one two three", error_after=1)
    headers = {"x-request-id": "stream-7", "authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", keyed_daemon.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                      headers=headers, timeout=30) as response:
        assert response.status_code == 200 and response.headers["x-request-id"] == "stream-7"
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    error = json.loads(events[-1])["error"]
    assert error["request_id"] == "stream-7"
    metrics = httpx.get(keyed_daemon.url + "/metrics", headers=headers).text
    assert 'velollm_backend_errors_total{backend="ollama",kind="backend_error"} 1' in metrics


def test_ollama_errors_carry_the_id_beside_error(keyed_daemon):
    response = call(keyed_daemon, "POST", "/api/chat", "olla-1", json={**CHAT, "model": "nope"})
    assert response.status_code == 404 and response.headers["x-request-id"] == "olla-1"
    assert set(response.json()) == {"error", "request_id"} and response.json()["request_id"] == "olla-1"


def test_anthropic_errors_carry_the_id_at_the_top_as_anthropic_does(keyed_daemon):
    body = {"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    response = call(keyed_daemon, "POST", "/v1/messages", "anth-1", json=body)
    assert response.status_code == 404 and response.headers["x-request-id"] == "anth-1"
    assert response.json() == {"type": "error", "request_id": "anth-1",
                               "error": {"type": "not_found_error", "message": response.json()["error"]["message"]}}


def test_http_layer_errors_carry_the_id(keyed_daemon):
    """413 is answered by the HTTP server itself, before any handler: the id is there too."""
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nx-request-id: big-1\r\n"
            b"Content-Length: 999999999\r\n\r\n")
    with socket.create_connection(("127.0.0.1", keyed_daemon.port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b"\r\nx-request-id: big-1\r\n" in answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["request_id"] == "big-1"


def test_one_access_log_line_per_request_with_its_fields(keyed_daemon, log_lines):
    body = {**CHAT, "temperature": 0}                                      # cacheable
    call(keyed_daemon, "POST", "/v1/chat/completions", "acc-1", json=body)
    call(keyed_daemon, "POST", "/v1/chat/completions", "acc-2", json=body)          # an exact cache hit
    call(keyed_daemon, "GET", "/nope", "acc-3")
    access = access_lines(log_lines, 3)
    assert [line["request_id"] for line in access] == ["acc-1", "acc-2", "acc-3"]
    miss, hit, missing = access
    assert miss["status"] == 200 and miss["method"] == "POST" and miss["path"] == "/v1/chat/completions"
    assert miss["model"] == MODEL and miss["backend"] == "ollama" and miss["cache"] == "miss"
    assert miss["prompt_tokens"] > 0 and miss["completion_tokens"] > 0
    assert miss["key"].startswith("sha256:") and KEY[3:] not in json.dumps(access)
    assert miss["upstream_s"] > 0 and miss["total_s"] >= miss["upstream_s"] + miss["queue_wait_s"]
    assert 0 <= miss["overhead_s"] <= miss["total_s"] and 0 < miss["first_byte_s"] <= miss["total_s"]
    assert hit["cache"] == "hit-exact" and hit["upstream_s"] is None
    assert missing["status"] == 404 and missing["backend"] is None
    assert [record["request_id"] for record in keyed_daemon.app.access_log.recent()] == ["acc-1", "acc-2", "acc-3"]


def test_the_access_line_names_the_model_of_memo_hits_embeddings_and_refusals(daemon_factory, ollama_emulator,
                                                                              log_lines):
    limited = {"name": "ci", "key": KEY, "rpm": 3, "models": ["llama3*", "nomic*"]}
    daemon = daemon_factory({"keys": [limited], "backends": [ollama_backend(ollama_emulator)]})
    body = {**CHAT, "temperature": 0}
    call(daemon, "POST", "/v1/chat/completions", "m-miss", json=body)
    hit = call(daemon, "POST", "/v1/chat/completions", "m-hit", json=body)             # the raw-bytes memo
    embedding = call(daemon, "POST", "/v1/embeddings", "m-embed", json={"model": "nomic-embed-text", "input": "x"})
    refused = call(daemon, "POST", "/v1/chat/completions", "m-429", json=body)
    hidden = call(daemon, "POST", "/v1/chat/completions", "m-404", json={**CHAT, "model": "emu-other"})
    assert [hit.headers["x-velollm-cache"], embedding.status_code, refused.status_code, hidden.status_code] == \
        ["hit-exact", 200, 429, 404]
    models = {line["request_id"]: line["model"] for line in access_lines(log_lines, 5)}
    assert models == {"m-miss": MODEL, "m-hit": MODEL, "m-embed": "nomic-embed-text", "m-429": MODEL,
                      "m-404": "emu-other"}


def test_log_lines_about_a_request_carry_its_id(keyed_daemon, ollama_emulator, log_lines):
    ollama_emulator.script(status=500, error="model crashed")
    response = call(keyed_daemon, "POST", "/v1/chat/completions", "fail-9", json=CHAT)
    assert response.status_code == 502 and response.json()["error"]["request_id"] == "fail-9"
    [warning] = [line for line in log_lines() if line["msg"] == "backend request failed"]
    assert warning["request_id"] == "fail-9" and warning["backend"] == "ollama"


def test_a_stream_the_backend_breaks_after_its_first_bytes_is_logged_with_its_id(keyed_daemon, ollama_emulator,
                                                                               log_lines):
    """The client got a 200 and an error event; the access line says 200, so this warning is
    what tells the operator which request broke and on which backend (it said nothing)."""
    ollama_emulator.script("one two three four five", drop_after=2)
    response = call(keyed_daemon, "POST", "/v1/chat/completions", "broke-7", json={**CHAT, "stream": True})
    assert response.status_code == 200 and '"error"' in response.text
    [warning] = [line for line in log_lines() if line["msg"] == "backend stream broke"]
    assert warning["request_id"] == "broke-7" and warning["backend"] == "ollama" and warning["error"]


def test_access_log_off_writes_no_line(daemon_factory, ollama_emulator, log_lines):
    daemon = daemon_factory({"log": {"access": False}, "backends": [ollama_backend(ollama_emulator)]})
    response = httpx.get(daemon.url + "/health", headers={"x-request-id": "quiet"})
    assert response.headers["x-request-id"] == "quiet"
    assert not [line for line in log_lines() if line["logger"] == "velollmd.access"]
    assert daemon.app.access_log.recent() == []


def access_lines(log_lines, num_lines: int) -> list[dict]:
    """The access-log lines once there are `num_lines` (each is written just after its answer
    went out, on the daemon's thread, so the client may read the answer first)."""
    for _ in range(500):
        lines = [line for line in log_lines() if line["logger"] == "velollmd.access"]
        if len(lines) >= num_lines:
            return lines
        time.sleep(0.01)
    raise AssertionError(f"expected {num_lines} access-log lines, got {lines}")


def families(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def p50_bound(family, **labels) -> float:
    """The upper bound of the bucket holding the median observation."""
    buckets = [(float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")
               and all(s.labels.get(k) == v for k, v in labels.items())]
    total = buckets[-1][1]
    return next(bound for bound, cumulative in buckets if cumulative >= total / 2)


def test_overhead_stays_below_upstream_on_a_backend_that_sleeps_50ms(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"cache": {"enabled": False}, "backends": [ollama_backend(ollama_emulator)]})
    num_requests = 8
    for i in range(num_requests):
        ollama_emulator.script("hello", delay_s=0.05)
        stream = i % 2 == 1
        if stream:
            with httpx.stream("POST", daemon.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                              timeout=30) as response:
                response.read()
        else:
            response = httpx.post(daemon.url + "/v1/chat/completions", json=CHAT, timeout=30)
        assert response.status_code == 200
    metrics = families(httpx.get(daemon.url + "/metrics").text)
    upstream, overhead = metrics["velollm_upstream_seconds"], metrics["velollm_overhead_seconds"]
    ttft, queue_wait = metrics["velollm_time_to_first_token_seconds"], metrics["velollm_queue_wait_seconds"]
    count = {s.name: s.value for f in (upstream, overhead, ttft, queue_wait) for s in f.samples
             if s.name.endswith("_count")}
    assert count == {"velollm_upstream_seconds_count": num_requests,
                     "velollm_overhead_seconds_count": num_requests,
                     "velollm_time_to_first_token_seconds_count": num_requests / 2,
                     "velollm_queue_wait_seconds_count": num_requests}
    assert p50_bound(upstream, backend="ollama") >= 0.05               # the backend sleeps 50 ms
    assert p50_bound(overhead) < p50_bound(upstream, backend="ollama")
    assert metrics["velollm_backend_errors"].type == "counter"


@pytest.mark.parametrize("stream", [True, False])
def test_a_request_the_client_leaves_counts_its_backend_time_as_upstream(keyed_daemon, ollama_emulator,
                                                                         log_lines, stream):
    """A 499 has its access line and its count, whether the client left before the answer (it
    had neither) or during a stream; the time the backend spent on it is upstream_s, not the
    daemon's overhead_s (the whole time was reported as overhead, upstream_s null)."""
    ollama_emulator.script("one two three four five six seven eight", delay_s=0.1)
    body = json.dumps({**CHAT, "stream": stream}).encode()
    with socket.create_connection(("127.0.0.1", keyed_daemon.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"authorization: Bearer %s\r\nx-request-id: gone-1\r\ncontent-length: %d\r\n\r\n%s"
                     % (KEY.encode(), len(body), body))
        if stream:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")     # the head and a first chunk
        time.sleep(0.3)
    line, = access_lines(log_lines, 1)
    assert line["request_id"] == "gone-1" and line["status"] == 499 and line["backend"] == "ollama"
    assert line["upstream_s"] >= 0.2 and line["overhead_s"] < line["upstream_s"]
    status = "200" if stream else "499"                # the status of the head sent, if one was
    metrics = call(keyed_daemon, "GET", "/metrics").text
    assert f'velollm_http_requests_total{{route="/v1/chat/completions",status="{status}"}} 1' in metrics
