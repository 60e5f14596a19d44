"""Three velollmd processes on one private redis-server, in front of one Ollama emulator that
counts backend calls: shared exact hits, single-flight across instances, one key limit for all
three, and Redis killed mid-traffic (no failed request) then back (sharing resumes)."""
import concurrent.futures
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.rig.net import free_port
from tests.rig.ollama_emulator import OllamaEmulator
from tests.rig.redis import RedisServer

MODEL = "llama3.2:latest"
FREE, TEAM, EMBEDDER, NATIVE, COUNTER = "sk-free", "sk-team", "sk-embedder", "sk-native", "sk-counter"


def config_text(port: int, emulator: OllamaEmulator, redis: RedisServer) -> str:
    return f"""
[server]
port = {port}
drain_timeout_s = 1
[cache]
path = ""
semantic = false
redis_url = "{redis.url}"
redis_timeout_ms = 300
redis_flight_wait_ms = 10000
[responses]
path = ""
[key_limits]
path = ""
[[backends]]
name = "ollama"
kind = "ollama"
url = "{emulator.url}"
models = ["llama3*", "nomic*"]
[[keys]]
name = "free"
key = "{FREE}"
[[keys]]
name = "team"
key = "{TEAM}"
rpm = 10
[[keys]]
name = "embedder"
key = "{EMBEDDER}"
rpm = 4
[[keys]]
name = "native"
key = "{NATIVE}"
rpm = 2
[[keys]]
name = "counter"
key = "{COUNTER}"
rpm = 3
"""


class Instance:
    def __init__(self, tmp_path, name, emulator, redis):
        self.port = free_port()
        path = tmp_path / f"{name}.toml"
        path.write_text(config_text(self.port, emulator, redis))
        self.proc = subprocess.Popen([sys.executable, "-m", "velollmd", "--config", str(path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if get_json(self.url("/health"))[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("velollmd did not become ready")

    def chat(self, text: str, key: str = FREE) -> tuple[int, dict, dict]:
        body = json.dumps({"model": MODEL, "temperature": 0, "messages": [{"role": "user", "content": text}]}).encode()
        request = urllib.request.Request(self.url("/v1/chat/completions"), data=body, method="POST",
                                         headers={"authorization": f"Bearer {key}",
                                                  "content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, dict(r.headers), json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), json.loads(e.read())

    def post(self, path: str, body: dict, key: str) -> int:
        request = urllib.request.Request(self.url(path), data=json.dumps(body).encode(), method="POST",
                                         headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def metric(self, name: str) -> float:
        request = urllib.request.Request(self.url("/metrics"), headers={"authorization": f"Bearer {FREE}"})
        with urllib.request.urlopen(request, timeout=10) as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, json.loads(r.read())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cluster")
    with OllamaEmulator() as emulator, RedisServer() as redis:
        instances = [Instance(tmp_path, name, emulator, redis) for name in "abc"]
        try:
            for instance in instances:
                instance.wait_ready()
            yield emulator, redis, instances
        finally:
            for instance in instances:
                instance.stop()


def test_an_answer_computed_on_a_is_an_exact_hit_on_b_and_c(cluster):
    emulator, _, (a, b, c) = cluster
    emulator.reset()
    status, headers, first = a.chat("shared exact one")
    assert status == 200 and headers["x-velollm-cache"] == "miss"
    for other in (b, c):
        status, headers, body = other.chat("shared exact one")
        assert status == 200 and headers["x-velollm-cache"] == "hit-exact"
        assert body["choices"][0]["message"] == first["choices"][0]["message"]
    assert emulator.count("/api/chat") == 1
    assert b.chat("shared exact one")[1]["x-velollm-cache"] == "hit-exact"     # now local on b too


def test_thirty_identical_concurrent_requests_over_three_make_one_backend_call(cluster):
    emulator, _, instances = cluster
    emulator.reset()
    emulator.script("one computed answer for everyone", delay_s=0.05)
    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        results = list(pool.map(lambda i: instances[i % 3].chat("thirty at once"), range(30)))
    assert [status for status, _, _ in results] == [200] * 30
    assert {body["choices"][0]["message"]["content"] for _, _, body in results} == {
        "one computed answer for everyone"}
    assert emulator.count("/api/chat") == 1


def test_a_key_limited_to_ten_per_minute_gets_ten_across_the_three(cluster):
    _, _, instances = cluster
    statuses = [instances[i % 3].chat(f"limited {i}", key=TEAM)[0] for i in range(30)]
    assert statuses.count(200) == 10 and statuses.count(429) == 20
    assert statuses[:10] == [200] * 10
    status, headers, body = instances[1].chat("limited again", key=TEAM)
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded" and int(headers["retry-after"]) >= 1


def test_embeddings_count_against_the_shared_key_limit(cluster):
    """/v1/embeddings, /api/embed and /api/embeddings are requests of the key as chat is: a key
    limited to 4 per minute gets 4 across the three, not 4 on each."""
    _, _, instances = cluster
    routes = [("/v1/embeddings", {"input": "hello"}), ("/api/embed", {"input": "hello"}),
              ("/api/embeddings", {"prompt": "hello"})]
    statuses = [instances[i % 3].post(routes[i % 3][0], {"model": "nomic-embed-text:latest", **routes[i % 3][1]},
                                      EMBEDDER) for i in range(9)]
    assert statuses == [200] * 4 + [429] * 5


def test_ollama_native_requests_passed_through_count_against_the_shared_key_limit(cluster):
    _, _, instances = cluster
    body = {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "native"}]}
    assert [instances[i % 3].post("/api/chat", body, NATIVE) for i in range(4)] == [200, 200, 429, 429]


def test_token_counts_count_against_the_shared_key_limit(cluster):
    """/v1/messages/count_tokens and /v1/responses/input_tokens are requests of the key as
    chat is: a key limited to 3 per minute gets 3 across the three instances."""
    _, _, instances = cluster
    routes = [("/v1/messages/count_tokens", {"messages": [{"role": "user", "content": "count me"}]}),
              ("/v1/responses/input_tokens", {"input": "count me"})]
    statuses = [instances[i % 3].post(routes[i % 2][0], {"model": MODEL, **routes[i % 2][1]}, COUNTER)
                for i in range(6)]
    assert statuses == [200] * 3 + [429] * 3


def test_redis_killed_mid_traffic_then_back(cluster):
    emulator, redis, (a, b, c) = cluster
    for instance in (a, b, c):
        assert instance.chat("warm local hit")[0] == 200          # cached on a (and shared to b, c)
    errors_before = sum(i.metric("velollm_cache_redis_errors_total") for i in (a, b, c))
    results = []
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        def traffic(n):
            out = []
            for j in range(8):
                out.append(((a, b, c)[(n + j) % 3].chat("warm local hit" if j % 2 else f"fresh {n}-{j}")))
            return out
        futures = [pool.submit(traffic, n) for n in range(6)]
        time.sleep(0.05)
        redis.kill()
        for future in futures:
            results += future.result()
    assert [status for status, _, _ in results] == [200] * len(results)
    assert any(h["x-velollm-cache"] == "hit-exact" for s, h, _ in results)      # local hits go on
    for instance in (a, b, c):                                    # requests while Redis is down
        status, headers, _ = instance.chat("warm local hit")
        assert status == 200 and headers["x-velollm-cache"] == "hit-exact"
        assert instance.chat("while redis is down")[0] == 200
    assert sum(i.metric("velollm_cache_redis_errors_total") for i in (a, b, c)) > errors_before
    health = get_json(a.url("/health"))[1]
    assert health["status"] == "ok" and health["redis"]["errors"] > 0 and health["redis"]["last_error"]

    redis.start()                                                 # same port, empty: no restart of velollmd
    deadline = time.monotonic() + 20
    while True:                                                   # each instance reconnects by itself
        status, headers, _ = a.chat(f"after redis is back {time.monotonic()}")
        assert status == 200
        probe = f"shared again {time.monotonic()}"
        a.chat(probe)
        if b.chat(probe)[1]["x-velollm-cache"] == "hit-exact":
            break
        assert time.monotonic() < deadline, "sharing did not resume"
        time.sleep(0.2)
    assert get_json(b.url("/health"))[1]["redis"]["status"] == "ok"


def test_a_flush_on_one_instance_flushes_the_shared_entries_for_all(cluster):
    emulator, _, (a, b, c) = cluster
    text = "Flush me everywhere."
    assert a.chat(text)[0] == 200 and b.chat(text)[1]["x-velollm-cache"] == "hit-exact"
    calls = emulator.count("/api/chat")
    request = urllib.request.Request(a.url("/v1/velollm/cache"), method="DELETE",
                                     headers={"authorization": f"Bearer {FREE}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        flushed = json.loads(r.read())
    assert flushed["shared_deleted"] >= 1
    status, headers, _ = c.chat(text)                   # c never had it locally: only Redis could answer
    assert status == 200 and headers["x-velollm-cache"] == "miss"
    assert emulator.count("/api/chat") == calls + 1
