"""`velollmctl status` against the real daemon, a scripted daemon with cache/metrics, a closed port."""
from __future__ import annotations

import json

import httpx
import pytest

from tests.ctl.bench.helpers import run_ctl, run_ctl_process
from tests.ctl.bench.scripted_server import HANG, ScriptedServer
from tests.daemon_rig import RunningDaemon, engine_backend, llama_backend, make_tiny_model
from tests.rig.net import free_port
from velollmd.ctl.status import metrics_summary


def test_status_of_a_healthy_daemon(capsys, daemon, llama_server):
    rc, out, err = run_ctl(capsys, "status", "--url", daemon.url)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["velollmd", daemon.url] and lines[1].split() == ["status", "ok"]
    assert lines[2].split() == ["version", "0.1.0"]
    assert next(l for l in lines if l.startswith("cache ")).split()[1:3] == ["0", "entries,"]
    assert next(l for l in lines if l.startswith("queue ")).split()[1:3] == ["running", "0,"]
    assert any(l.split()[:2] == ["llama:", "0"] for l in lines)
    header = next(i for i, line in enumerate(lines) if line.startswith("backend "))
    assert lines[header].split() == ["backend", "kind", "healthy", "slots", "from", "limit", "models", "error"]
    assert lines[header + 1].split() == ["llama", "llamacpp", "yes", "4", "/props", "8", "tiny"]
    assert lines[header + 2].split()[:6] == ["ollama", "ollama", "yes", "-", "adaptive", "8"]


def test_status_json(capsys, daemon):
    rc, out, _ = run_ctl(capsys, "status", "--url", daemon.url + "/v1/", "--json")
    result = json.loads(out)
    assert rc == 0 and result["healthy"] is True and result["url"] == daemon.url
    assert [b["name"] for b in result["health"]["backends"]] == ["llama", "ollama"]
    assert result["cache"]["available"] and result["cache"]["data"]["entries"] == 0
    assert result["queue"]["available"] and result["queue"]["data"]["num_waiting"] == 0
    assert result["metrics"]["available"] and result["metrics"]["data"]["num_samples"] > 0


def test_unhealthy_backend_is_shown_but_the_daemon_is_up(capsys):
    dead = {"name": "dead", "kind": "llamacpp", "url": f"http://127.0.0.1:{free_port()}", "models": ["x*"]}
    with RunningDaemon({"backends": [dead]}) as daemon:
        rc, out, _ = run_ctl(capsys, "status", "--url", daemon.url)
    row = next(line for line in out.splitlines() if line.startswith("dead "))
    assert rc == 0 and row.split()[:3] == ["dead", "llamacpp", "no"] and "connect" in row


def test_draining_daemon_exits_1(capsys, llama_server):
    with RunningDaemon({"backends": [llama_backend(llama_server)]}) as daemon:
        daemon.app.draining = True
        rc, out, _ = run_ctl(capsys, "status", "--url", daemon.url)
    assert rc == 1 and out.splitlines()[1].split() == ["status", "draining"]


def test_cache_and_queue_metrics_when_the_daemon_has_them(capsys):
    health = {"status": "ok", "version": "9.9", "uptime_s": 3725.5, "backends": []}
    cache = {"exact": {"entries": 12, "hits": 7}, "hit_rate": 0.5}
    metrics = (b"# HELP x\nvelollm_queue_depth 3\nvelollm_http_requests_total{status=\"200\"} 41\n"
               b"velollm_http_requests_total{status=\"404\"} 1\n")
    routes = {"/health": (200, "application/json", json.dumps(health).encode()),
              "/v1/velollm/cache": (200, "application/json", json.dumps(cache).encode()),
              "/metrics": (200, "text/plain", metrics)}
    with ScriptedServer(routes) as server:
        rc, out, _ = run_ctl(capsys, "status", "--url", server.url)
    lines = [line.split() for line in out.splitlines()]
    assert rc == 0 and ["uptime", "1h", "02m", "05s"] in lines
    assert ["cache", "exact.entries", "12"] in lines and ["exact.hits", "7"] in lines and ["hit_rate", "0.5"] in lines
    assert ["metrics", "3", "samples"] in lines and ["velollm_http_requests_total", "42"] in lines
    assert ["queue", "not", "available", "(HTTP", "404)"] in lines
    assert ["backends", "none", "configured"] in lines


def test_closed_port_is_one_clear_line_and_exit_1():
    port = free_port()
    result = run_ctl_process("status", "--url", f"http://127.0.0.1:{port}")
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        result.stderr.strip()]                                         # one line
    assert result.stderr.startswith(f"velollmctl status: cannot reach velollmd at http://127.0.0.1:{port}")


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://127.0.0.1:8000", "http://[::1"])
def test_a_url_that_is_not_http_is_one_line_and_exit_2(url):
    result = run_ctl_process("status", "--url", url)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("velollmctl status: ")
    assert url in result.stderr


def test_not_velollmd_is_a_clear_error(capsys):
    with ScriptedServer({"/health": (200, "text/html", b"<html>hello</html>")}) as server:
        rc, out, err = run_ctl(capsys, "status", "--url", server.url)
    assert rc == 1 and out == "" and "did not answer with a JSON object" in err


def test_unreadable_metrics_read_as_not_available(capsys):
    health = {"status": "ok", "version": "9.9", "uptime_s": 1, "backends": []}
    routes = {"/health": (200, "application/json", json.dumps(health).encode()),
              "/metrics": (200, "text/plain", b"velollm_tokens_total not-a-number\n")}
    with ScriptedServer(routes) as server:
        rc, out, err = run_ctl(capsys, "status", "--url", server.url)
    assert rc == 0 and err == ""
    assert ["metrics", "not", "available", "(no", "answer)"] in [line.split() for line in out.splitlines()]


def test_metrics_totals_read_label_values_with_spaces_and_braces(capsys, daemon):
    body = {"model": "tiny model", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=60)
    assert answer.status_code == 200
    tokens = answer.json()["usage"]["total_tokens"]
    rc, out, err = run_ctl(capsys, "status", "--url", daemon.url)
    lines = [line.split() for line in out.splitlines()]
    assert rc == 0 and err == ""
    assert ["velollm_tokens_total", str(tokens)] in lines


def test_metrics_summary_takes_the_value_after_the_labels():
    text = ('velollm_tokens_total{kind="prompt",model="a b} c \\" d"} 7\n'
            'velollm_tokens_total{kind="completion",model="x"} 3 1700000000000\n')
    summary = metrics_summary(text.encode())
    assert summary == {"num_samples": 2, "totals": {"velollm_http_requests_total": 0.0, "velollm_tokens_total": 10.0,
                                                    "velollm_tool_call_repairs_total": 0.0,
                                                    "velollm_tool_call_loops_total": 0.0}}


def test_a_daemon_with_keys_takes_the_key_from_velollm_api_key_as_bench_does(capsys, monkeypatch):
    monkeypatch.delenv("VELOLLM_API_KEY", raising=False)
    with RunningDaemon({"server": {"api_keys": ["sk-status"]}}) as daemon:
        rc, out, _ = run_ctl(capsys, "status", "--url", daemon.url)
        without = [line.split() for line in out.splitlines()]
        monkeypatch.setenv("VELOLLM_API_KEY", "sk-status")
        rc_with, out_with, _ = run_ctl(capsys, "status", "--url", daemon.url)
    assert rc == 0 and ["queue", "not", "available", "(HTTP", "401:", "give", "a", "key", "with", "--api-key",
                        "or", "$VELOLLM_API_KEY)"] in without
    assert rc_with == 0 and "not available" not in out_with
    assert next(l for l in out_with.splitlines() if l.startswith("cache ")).split()[1:3] == ["0", "entries,"]


def test_engine_models_loaded_and_unavailable_are_shown_with_their_reasons(capsys, tmp_path):
    make_tiny_model(tmp_path / "tiny.gguf")
    (tmp_path / "broken.gguf").write_bytes(b"notagguf")
    with RunningDaemon({"backends": [engine_backend(tmp_path)], "cache": {"enabled": False}}) as daemon:
        answer = httpx.post(f"{daemon.url}/v1/chat/completions", timeout=60, json={
            "model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
        rc, out, _ = run_ctl(capsys, "status", "--url", daemon.url)
    lines = out.splitlines()
    assert answer.status_code == 200 and rc == 0
    assert "engine: loaded tiny" in lines
    broken = next(line for line in lines if line.startswith("engine: broken unavailable: "))
    assert str(tmp_path / "broken.gguf") in broken and "not a GGUF" in broken


@pytest.mark.parametrize("health", [
    {"status": "ok", "backends": 5},
    {"status": "ok", "backends": ["x"]},
    {"status": "ok", "backends": [{"name": "b", "engine": {"loaded": 5}}]},
    {"status": "ok", "backends": [{"name": "b", "engine": {"unavailable": ["m"]}}]},
    {"status": "ok", "backends": [{"name": "b", "models": 5}]},
    {"status": "ok", "uptime_s": 1e308 * 10},
])
def test_a_health_answer_of_the_wrong_shape_is_one_line_and_exit_1(capsys, health):
    with ScriptedServer({"/health": (200, "application/json", json.dumps(health).encode())}) as server:
        rc, out, err = run_ctl(capsys, "status", "--url", server.url)
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("velollmctl status: ") and "/health" in err


def test_cache_and_queue_answers_that_are_not_objects_read_as_not_available(capsys):
    health = {"status": "ok", "version": "9.9", "uptime_s": 1, "backends": []}
    routes = {"/health": (200, "application/json", json.dumps(health).encode()),
              "/v1/velollm/cache": (200, "application/json", b"[1, 2]"),
              "/v1/velollm/queue": (200, "application/json", b"\"busy\"")}
    with ScriptedServer(routes) as server:
        rc, out, err = run_ctl(capsys, "status", "--url", server.url)
    lines = [line.split() for line in out.splitlines()]
    assert rc == 0 and err == ""
    assert ["cache", "not", "available", "(no", "answer)"] in lines
    assert ["queue", "not", "available", "(no", "answer)"] in lines


def test_a_daemon_that_hangs_after_health_costs_one_timeout_not_one_per_get(capsys):
    """One deadline for the whole: the GET that hangs uses it up and the parts after it are not
    asked (each GET waited its own --timeout before: 4x the timeout on a hung daemon)."""
    health = {"status": "ok", "version": "9.9", "uptime_s": 1, "backends": []}
    routes = {"/health": (200, "application/json", json.dumps(health).encode()),
              "/v1/velollm/cache": HANG, "/v1/velollm/queue": HANG, "/metrics": HANG}
    with ScriptedServer(routes) as server:
        rc, out, err = run_ctl(capsys, "--timeout", "1", "status", "--url", server.url)
        paths = list(server.paths)
    lines = [line.split() for line in out.splitlines()]
    assert rc == 0 and err == "" and paths[0] == "/health"
    assert "/v1/velollm/queue" not in paths and "/metrics" not in paths
    assert ["queue", "skipped", "(--timeout", "reached)"] in lines
    assert ["metrics", "skipped", "(--timeout", "reached)"] in lines


def test_a_daemon_that_never_answers_health_is_one_line_and_one_get(capsys):
    """(Held before the deadline too: the guard is that the deadline keeps it so.)"""
    with ScriptedServer({"/health": HANG}) as server:
        rc, out, err = run_ctl(capsys, "--timeout", "0.5", "status", "--url", server.url)
        paths = list(server.paths)
    assert rc == 1 and out == "" and paths == ["/health"]
    assert err.count("\n") == 1 and err.startswith("velollmctl status: ") and "0.5 s" in err


def test_a_health_answer_with_no_status_says_so_in_one_line_and_exits_1(capsys):
    with ScriptedServer({"/health": (200, "application/json", b"{}")}) as server:
        rc, out, err = run_ctl(capsys, "status", "--url", server.url)
    lines = out.splitlines()
    assert rc == 1 and err == "" and "None" not in out
    assert [line for line in lines if line.startswith("status")] == ["status    no status (/health named none)"]
