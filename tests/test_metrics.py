import json
import socket
import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_rig import RunningDaemon, engine_backend, ollama_backend
from tests.rig.llama import make_tiny_model
from velollmd.metrics import MAX_MODEL_SERIES, OTHER_MODELS, Counter, Histogram, Metrics, sampled


def test_counter_and_histogram_render_prometheus_text():
    counter = Counter("x_total", "help")
    counter.inc(route="/a", status="200")
    counter.inc(2, route="/a", status="200")
    histogram = Histogram("lat_seconds", "help", buckets=(0.1, 1))
    histogram.observe(0.05)
    histogram.observe(0.5)
    histogram.observe(5)
    text = "\n".join(counter.render() + histogram.render())
    assert 'x_total{route="/a",status="200"} 3' in text
    assert 'lat_seconds_bucket{le="0.1"} 1' in text and 'lat_seconds_bucket{le="1"} 2' in text
    assert 'lat_seconds_bucket{le="+Inf"} 3' in text and "lat_seconds_count 3" in text


def test_label_values_are_escaped():
    counter = Counter("y_total", "help")
    counter.inc(model='a"b\\c')
    assert 'y_total{model="a\\"b\\\\c"} 1' in "\n".join(counter.render())


def test_a_label_value_with_a_line_feed_stays_on_its_sample_line():
    text = "\n".join(sampled("velollm_backend_healthy", "gauge", "help", [({"backend": "gpu box\nrack 2"}, 0)])) + "\n"
    families = {f.name: f for f in text_string_to_metric_families(text)}
    healthy = families["velollm_backend_healthy"].samples
    assert [(s.labels, s.value) for s in healthy] == [({"backend": "gpu box\nrack 2"}, 0)]
    assert 'velollm_backend_healthy{backend="gpu box\\nrack 2"} 0' in text.splitlines()


def test_daemon_exports_requests_cache_and_tokens(ollama_emulator):
    with RunningDaemon({"backends": [ollama_backend(ollama_emulator)]}) as daemon:
        body = {"model": "llama3.2:latest", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
        httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=30)
        httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=30)
        httpx.get(daemon.url + "/nope")
        text = httpx.get(daemon.url + "/metrics").text
    assert 'velollm_http_requests_total{route="/v1/chat/completions",status="200"} 2' in text
    assert 'velollm_http_requests_total{route="other",status="404"} 1' in text
    assert 'velollm_cache_lookups_total{result="hit-exact"} 1' in text
    assert 'velollm_cache_lookups_total{result="miss"} 1' in text
    assert 'velollm_tokens_total{kind="completion",model="llama3.2:latest"}' in text
    assert 'velollm_backend_healthy{backend="ollama"} 1' in text
    assert 'velollm_queue_admitted_total{backend="ollama"} 1' in text      # the hit took no slot
    assert 'velollm_queue_waiting{backend="ollama"} 0' in text
    assert 'velollm_queue_rejected_total{backend="ollama"} 0' in text
    assert 'velollm_backend_concurrency_limit{backend="ollama"} 8' in text   # adaptive: Ollama says no width
    assert 'velollm_routing_total{outcome="routed"} 1' in text
    assert "# TYPE velollm_failovers_total counter" in text and "velollm_failovers_total 0" in text


def test_cache_lookups_of_refused_requests_are_counted_as_the_cache_stats_count_them(ollama_emulator):
    """A lookup whose request the backend then refuses (a 502 here, a 429 or a 503 alike) is
    a miss in velollm_cache_lookups_total as in GET /v1/velollm/cache; the metric counted only
    answers, so the two disagreed and the dashboard's hit rate left refused requests out."""
    with RunningDaemon({"backends": [ollama_backend(ollama_emulator)]}) as daemon:
        ollama_emulator.script(status=500, error="boom")
        body = {"model": "llama3.2:latest", "temperature": 0, "messages": [{"role": "user", "content": "refused"}]}
        refused = httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=30)
        sampled = httpx.post(daemon.url + "/v1/chat/completions", timeout=30,
                             json={**body, "temperature": 1, "messages": [{"role": "user", "content": "sampled"}]})
        text = httpx.get(daemon.url + "/metrics").text
        stats = httpx.get(daemon.url + "/v1/velollm/cache").json()
    assert refused.status_code == 502 and sampled.status_code == 200
    assert stats["misses"] == 1 and stats["bypasses"] == 1
    assert 'velollm_cache_lookups_total{result="miss"} 1' in text.splitlines()
    assert 'velollm_cache_lookups_total{result="bypass"} 1' in text.splitlines()


def test_queue_stats_route(ollama_emulator):
    with RunningDaemon({"backends": [ollama_backend(ollama_emulator)]}) as daemon:
        body = {"model": "llama3.2:latest", "messages": [{"role": "user", "content": "hi"}]}
        httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=30)
        stats = httpx.get(daemon.url + "/v1/velollm/queue").json()
    assert stats["object"] == "queue.stats"
    assert stats["backends"]["ollama"]["num_admitted"] == 1 and stats["num_waiting"] == 0
    assert stats["backends"]["ollama"]["adaptive"] and stats["backends"]["ollama"]["concurrency_limit"] == 8


def test_sample_values_keep_every_digit():
    from velollmd.metrics import number, sampled
    assert number(12_345_678) == "12345678" and number(3.0) == "3" and number(0.25) == "0.25"
    assert number(float("inf")) == "+Inf" and number(float("nan")) == "NaN"
    assert sampled("velollm_x_total", "counter", "x", [({}, 1_234_567_891)])[-1] == "velollm_x_total 1234567891"


def test_labels_in_any_order_count_in_one_series():
    counter, histogram = Counter("c_total", "c"), Histogram("h_seconds", "h", buckets=(1, 2))
    counter.inc(kind="prompt", model="m")
    counter.inc(2, model="m", kind="prompt")
    histogram.observe(0.5, b="x", a="y")
    histogram.observe(3, a="y", b="x")
    histogram.observe(1.5)
    assert counter.values == {(("kind", "prompt"), ("model", "m")): 3.0}
    assert counter.get(model="m", kind="prompt") == 3.0
    assert histogram.series == {(("a", "y"), ("b", "x")): [1, 0, 3.5, 2], (): [0, 1, 1.5, 1]}
    assert 'h_seconds_bucket{a="y",b="x",le="+Inf"} 2' in histogram.render()


def test_usage_counts_tokens_in_the_series_tokens_inc_counts():
    from velollmd.metrics import Metrics
    metrics = Metrics()
    metrics.tokens.inc(5, model="m", kind="prompt")
    metrics.record_usage("m", {"prompt_tokens": 10, "completion_tokens": 16, "total_tokens": 26})
    metrics.record_usage("m", {"prompt_tokens": 1})             # no completion count: 0 more
    metrics.record_usage("m", None)
    metrics.record_usage("n", {"completion_tokens": 2})
    assert metrics.tokens.values == {(("kind", "prompt"), ("model", "m")): 16,
                                     (("kind", "completion"), ("model", "m")): 16,
                                     (("kind", "prompt"), ("model", "n")): 0,
                                     (("kind", "completion"), ("model", "n")): 2}
    assert 'velollm_tokens_total{kind="prompt",model="m"} 16' in metrics.tokens.render()


def test_model_names_past_the_limit_count_together_as_other():
    """A backend serving "*" answers any model name a client makes up; each name must not
    become a series of its own forever."""
    metrics = Metrics()
    for i in range(MAX_MODEL_SERIES + 50):
        metrics.record_usage(f"made-up-{i}", {"prompt_tokens": 1, "completion_tokens": 2})
    metrics.record_usage("made-up-0", {"prompt_tokens": 1})          # a known one keeps its series
    models = {dict(key)["model"] for key in metrics.tokens.values}
    assert len(models) == MAX_MODEL_SERIES + 1 and OTHER_MODELS in models
    assert metrics.tokens.get(kind="prompt", model=OTHER_MODELS) == 50
    assert metrics.tokens.get(kind="completion", model=OTHER_MODELS) == 100
    assert metrics.tokens.get(kind="prompt", model="made-up-0") == 2



def test_requests_sent_ahead_into_the_engine_are_not_refused_and_a_429_is_counted_once(tmp_path):
    """The daemon runs max_running x (1 + backend_queue_per_slot) requests on the engine (one
    on its slot, two sent ahead into its own queue) and queues max_queue more: the engine
    never refuses one the daemon admitted (its own queue counted toward max_queue, a burst
    was a 429 with nothing in the daemon's queue); the one past them is the daemon's 429,
    counted once under the engine's name."""
    make_tiny_model(tmp_path / "tiny-engine.gguf")
    table = {"backends": [engine_backend(tmp_path, max_running=1)], "cache": {"enabled": False},
             "scheduler": {"max_queue": 1, "backend_queue_per_slot": 2, "prefix_routing": False}}
    body = {"model": "tiny-engine", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    with RunningDaemon(table) as daemon:
        assert httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=60).status_code == 200
        engine, = daemon.app.registry.backends
        runner = engine.loaded["tiny-engine"].runner
        with runner._model_lock:            # the engine's step waits: one runs, two queue there
            held = [send_chat(daemon.port, {**body, "stream": True})]
            wait_until(lambda: len(runner.scheduler.running) == 1)         # the worker took it in
            held += [send_chat(daemon.port, {**body, "stream": True}) for _ in range(2)]
            wait_until(lambda: len(runner.scheduler.waiting) == 2)
            held.append(send_chat(daemon.port, body))                     # waits in the daemon's queue
            wait_until(lambda: daemon.app.service.stats()["backends"]["engine"]["num_waiting"] == 1)
            refused = httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=60)
        statuses = [status_of(sock) for sock in held]
        stats = daemon.app.service.stats()["backends"]["engine"]
        text = httpx.get(daemon.url + "/metrics", timeout=30).text
    assert statuses == [200, 200, 200, 200]
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
    assert stats["num_rejected"] == 1
    assert 'velollm_queue_rejected_total{backend="engine"} 1' in text.splitlines()


def test_a_503_from_the_engines_own_queue_timeout_is_counted_as_timed_out(tmp_path):
    """A request the daemon sent ahead into the engine's queue that waits there past
    queue_timeout_s is a 503 queue_timeout from the engine: counted in
    velollm_queue_timed_out_total under the engine's name, as the daemon's queue counts its own."""
    make_tiny_model(tmp_path / "tiny-engine.gguf")
    table = {"backends": [engine_backend(tmp_path, max_running=1)], "cache": {"enabled": False},
             "scheduler": {"queue_timeout_s": 0.3, "backend_queue_per_slot": 1, "prefix_routing": False}}
    body = {"model": "tiny-engine", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    with RunningDaemon(table) as daemon:
        assert httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=60).status_code == 200
        engine, = daemon.app.registry.backends
        runner = engine.loaded["tiny-engine"].runner
        late = {}
        with runner._model_lock:            # the engine's step waits: one runs, one queues there
            running = send_chat(daemon.port, {**body, "stream": True})
            wait_until(lambda: len(runner.scheduler.running) == 1)
            waiter = threading.Thread(target=lambda: late.setdefault("reply", httpx.post(
                daemon.url + "/v1/chat/completions", json=body, timeout=60)))
            waiter.start()
            wait_until(lambda: len(runner.scheduler.waiting) == 1)
            time.sleep(0.5)                 # past queue_timeout_s, waiting in the engine's queue
        waiter.join(60)
        running.close()
        stats = daemon.app.service.stats()["backends"]["engine"]
        text = httpx.get(daemon.url + "/metrics", timeout=30).text
    assert late["reply"].status_code == 503 and late["reply"].json()["error"]["code"] == "queue_timeout"
    assert stats["num_timed_out"] == 1
    assert 'velollm_queue_timed_out_total{backend="engine"} 1' in text.splitlines()

def test_tokens_of_an_alias_count_under_the_served_model_however_answered(ollama_emulator):
    """Whole answers, streams and native Ollama answers asked for by an alias count their
    tokens in one series, the served model's (streams were counted under the alias)."""
    table = {"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False},
             "aliases": {"fast": "llama3.2:latest"}}
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    with RunningDaemon(table) as daemon:
        for extra in ({}, {"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}):
            assert httpx.post(daemon.url + "/v1/chat/completions", json={**body, **extra}, timeout=30).status_code == 200
        assert httpx.post(daemon.url + "/api/chat", json={**body, "stream": False}, timeout=30).status_code == 200
        text = httpx.get(daemon.url + "/metrics", timeout=30).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    models = {sample.labels["model"] for sample in families["velollm_tokens"].samples}
    assert models == {"llama3.2:latest"}

def send_chat(port: int, body: dict) -> socket.socket:
    """A chat request sent over a raw socket, its answer left unread."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n%s" % (len(payload), payload))
    return sock


def status_of(sock: socket.socket) -> int:
    """The status of the answer to a request sent by send_chat (the socket is closed)."""
    with sock:
        return int(sock.makefile("rb").readline().split()[1])


def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "never came true"
        time.sleep(0.01)


def test_metric_names_follow_prometheus_conventions(ollama_emulator):
    """Every family a daemon exports: snake_case under velollm_, a counter's samples end in
    _total, a time in _seconds (base units, no _ms), a size in _bytes, a fraction in _ratio."""
    with RunningDaemon({"backends": [ollama_backend(ollama_emulator)]}) as daemon:
        body = {"model": "llama3.2:latest", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=30).status_code == 200
        text = httpx.get(daemon.url + "/metrics").text
    helps = dict(line[len("# HELP "):].split(" ", 1) for line in text.splitlines() if line.startswith("# HELP "))
    families = list(text_string_to_metric_families(text))
    assert len(families) == len(helps) > 20
    for family in families:
        exposed = family.name + "_total" if family.type == "counter" else family.name
        help_text = helps[exposed].lower()
        assert family.name.startswith("velollm_") and family.name == family.name.lower(), family.name
        assert not family.name.endswith(("_ms", "_s", "_milliseconds", "_percent")), family.name
        assert all(s.name.endswith("_total") for s in family.samples) or family.type != "counter", family.name
        if help_text.startswith(("time", "how late")) or "seconds" in help_text:
            assert family.name.endswith("_seconds"), family.name
        if help_text.startswith("fraction"):
            assert family.name.endswith("_ratio"), family.name
        if help_text.startswith("bytes"):
            assert family.name.endswith("_bytes"), family.name


def test_token_series_stop_at_max_model_series_made_up_names_share_one():
    """A llama-server behind models = ["*"] answers any model name a client makes up: past
    MAX_MODEL_SERIES names, their tokens go to model="(other)", not to a series each."""
    metrics = Metrics()
    for i in range(MAX_MODEL_SERIES + 50):
        metrics.record_usage(f"made-up-{i}", {"prompt_tokens": 2, "completion_tokens": 1})
    [tokens] = [f for f in text_string_to_metric_families(metrics.render()) if f.name == "velollm_tokens"]
    models = {s.labels["model"] for s in tokens.samples}
    assert len(models) == MAX_MODEL_SERIES + 1 and OTHER_MODELS in models
    other = {s.labels["kind"]: s.value for s in tokens.samples if s.labels["model"] == OTHER_MODELS}
    assert other == {"prompt": 100.0, "completion": 50.0}
