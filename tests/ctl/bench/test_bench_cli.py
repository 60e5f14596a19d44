"""`velollmctl bench` end to end: the real daemon, the real llama-server, the Ollama emulator."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from tests.ctl.bench.helpers import DISTRIBUTION_KEYS, bench_json, run_ctl, run_ctl_process
from tests.ctl.bench.scripted_server import ScriptedServer
from tests.rig.net import free_port

SVG = "{http://www.w3.org/2000/svg}"
ENTRY_KEYS = {"endpoint", "label", "api", "model", "profile", "concurrency", "requests", "errors",
              "error_messages", "cache_hits", "completion_tokens", "wall_s", "aggregate_tokens_per_second",
              "ttft_ms", "itl_ms", "tokens_per_second", "latency_ms"}


def assert_sane(entry: dict, num_requests: int, max_tokens: int) -> None:
    assert ENTRY_KEYS <= set(entry)
    assert entry["requests"] == num_requests and entry["errors"] == 0, entry["error_messages"]
    assert entry["completion_tokens"] == num_requests * max_tokens     # the tiny model: exactly max_tokens
    assert entry["aggregate_tokens_per_second"] > 0
    for name in ("ttft_ms", "itl_ms", "tokens_per_second", "latency_ms"):
        dist = entry[name]
        assert set(dist) == set(DISTRIBUTION_KEYS)
        assert dist["n"] > 0 and 0 <= dist["p50"] <= dist["p90"] <= dist["p99"], (name, dist)
    assert entry["tokens_per_second"]["p50"] > 0
    assert entry["ttft_ms"]["p50"] <= entry["latency_ms"]["p50"]
    assert entry["itl_ms"]["n"] == num_requests * (max_tokens - 1)


def test_bench_daemon_in_front_of_llama_server(capsys, tmp_path, daemon):
    rc, report, out, _ = bench_json(capsys, tmp_path, "--url", daemon.url, "--concurrency", "1,3",
                                    "--requests", 3, "--max-tokens", 6)
    assert rc == 0
    assert report["schema"] == "velollm.bench/1" and report["profile"] == "short"
    assert report["endpoints"] == [{"label": "A", "name": None, "endpoint": daemon.url, "api": "openai", "model": "tiny",
                                    "chars_per_token": None}]
    assert [(e["concurrency"], e["label"]) for e in report["aggregated"]] == [(1, "A"), (3, "A")]
    for entry in report["aggregated"] + report["runs"]:
        assert_sane(entry, 3, 6)
        assert entry["endpoint"] == daemon.url and entry["cache_hits"] == 0
    assert report["comparison"] == []
    assert "agg tok/s" in out and "B/A" not in out


def test_bench_ollama_native_api(capsys, tmp_path, ollama_emulator):
    rc, report, _, _ = bench_json(capsys, tmp_path, "--url", ollama_emulator.url, "--api", "ollama",
                                  "--model", "llama3.2:latest", "--concurrency", "2", "--requests", 4,
                                  "--max-tokens", 5, "--warmup", 0)
    assert rc == 0 and report["endpoints"][0]["api"] == "ollama"
    assert_sane(report["aggregated"][0], 4, 5)
    assert ollama_emulator.count("/api/chat") == 4
    sent = ollama_emulator.last_request("/api/chat")
    assert sent["stream"] is True and sent["options"]["num_predict"] == 5 and sent["model"] == "llama3.2:latest"


def test_auto_detects_ollama_when_v1_models_is_missing(capsys, tmp_path):
    tags = b'{"models":[{"name":"m1"}]}'
    with ScriptedServer({"/v1/models": (404, "text/plain", b"no"), "/api/tags": (200, "application/json", tags)}) as server:
        rc, report, _, _ = bench_json(capsys, tmp_path, "--url", server.url, "--concurrency", "1",
                                      "--requests", 1, "--warmup", 0)
    assert report["endpoints"][0]["api"] == "ollama" and report["endpoints"][0]["model"] == "m1"
    assert rc == 1 and report["aggregated"][0]["errors"] == 1      # the scripted server has no /api/chat
    assert report["aggregated"][0]["error_messages"] == ["HTTP 404: not found"]


def test_compare_llama_server_direct_vs_daemon(capsys, tmp_path, daemon, llama_server):
    svg = tmp_path / "chart.svg"
    rc, report, out, err = bench_json(capsys, tmp_path, "--url", llama_server.url, "--compare", daemon.url,
                                      "--name", "llama-server", "--compare-name", "velollmd",
                                      "--concurrency", "1,2", "--requests", 2, "--max-tokens", 4, "--svg", svg)
    assert rc == 0 and report["rounds"] == 2
    assert [(r["concurrency"], r["label"], r["round"]) for r in report["runs"]] == [
        (1, "A", 0), (1, "B", 0), (1, "A", 1), (1, "B", 1), (2, "A", 0), (2, "B", 0), (2, "A", 1), (2, "B", 1)]
    for entry in report["aggregated"]:
        assert_sane(entry, 4, 4)                                   # 2 requests x 2 rounds
    assert [row["concurrency"] for row in report["comparison"]] == [1, 2]
    for row in report["comparison"]:
        assert all(row[k] > 0 for k in ("throughput_ratio", "ttft_p50_ratio", "latency_p50_ratio"))
    assert "B/A ratios" in out and llama_server.url in out and daemon.url in out
    assert f"A = llama-server: {llama_server.url}" in out and f"B = velollmd: {daemon.url}" in out
    assert_chart(svg.read_text(), [llama_server.url, daemon.url], ["1", "2"])


def assert_chart(text: str, urls: list[str], levels: list[str]) -> None:
    root = ET.fromstring(text)
    panels = root.findall(f"{SVG}g[@class='panel']")
    assert len(panels) == 2
    for panel in panels:
        series = panel.findall(f"{SVG}polyline[@class='series']")
        assert [s.get("data-label") for s in series] == ["A", "B"][:len(urls)]
        assert all(len(s.get("points").split()) == len(levels) for s in series)
        assert [t.text for t in panel.findall(f"{SVG}text[@class='xtick']")] == levels
        assert len(panel.findall(f"{SVG}text[@class='ytick']")) >= 2
    legend = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "legend-label"]
    assert len(legend) == len(urls) and all(url in label for url, label in zip(urls, legend))


def test_progress_is_plain_lines_without_a_tty(capsys, tmp_path, ollama_emulator):
    rc, _, _, err = bench_json(capsys, tmp_path, "--url", ollama_emulator.url, "--api", "ollama",
                               "--concurrency", "1,2", "--requests", 2, "--max-tokens", 2)
    assert rc == 0 and "\r" not in err and "\x1b" not in err
    assert err.splitlines() == ["bench A c=1 round 1: 2 requests ...",
                                err.splitlines()[1], "bench A c=2 round 1: 2 requests ...", err.splitlines()[3]]
    assert err.splitlines()[1].startswith("bench A c=1 round 1: 2 done, 0 errors, ")
    assert err.splitlines()[3].endswith(" tok/s")


def test_long_context_fits_max_context(capsys, tmp_path, daemon):
    """The prompt is sized from a measured chars-per-token, so it fills but fits a 1024 slot."""
    rc, report, _, _ = bench_json(capsys, tmp_path, "--url", daemon.url, "--profile", "long-context",
                                  "--max-context", 1024, "--concurrency", "1", "--requests", 2, "--max-tokens", 4)
    assert rc == 0, report["aggregated"][0]["error_messages"]
    assert_sane(report["aggregated"][0], 2, 4)
    assert 1.0 < report["endpoints"][0]["chars_per_token"] < 8.0


def test_multi_turn_resends_the_growing_history(capsys, tmp_path, ollama_emulator):
    rc, report, _, _ = bench_json(capsys, tmp_path, "--url", ollama_emulator.url, "--api", "ollama",
                                  "--profile", "multi-turn", "--turns", 3, "--concurrency", "1",
                                  "--requests", 4, "--max-tokens", 3, "--warmup", 0)
    assert rc == 0
    lengths = [len(r.body["messages"]) for r in ollama_emulator.requests if r.path == "/api/chat"]
    assert lengths == [2, 4, 6, 2]          # system+user, +assistant+user, ..., then a new conversation
    third = [r.body for r in ollama_emulator.requests if r.path == "/api/chat"][2]
    assert [m["role"] for m in third["messages"]] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert third["messages"][2]["content"]                     # the real previous answer


def test_errors_are_counted_with_their_messages(capsys, tmp_path, ollama_emulator):
    rc, report, out, _ = bench_json(capsys, tmp_path, "--url", ollama_emulator.url, "--api", "ollama",
                                    "--model", "no-such-model", "--concurrency", "2", "--requests", 3)
    entry = report["aggregated"][0]
    assert rc == 1 and entry["errors"] == 3 and entry["ttft_ms"]["n"] == 0 and entry["ttft_ms"]["p50"] is None
    assert len(entry["error_messages"]) == 1 and entry["error_messages"][0].startswith("HTTP 404")
    assert "errors:" in out and "no-such-model" in out


def test_cache_hits_are_counted_from_the_header(capsys, tmp_path):
    with ScriptedServer(num_tokens=3, hit_every=2) as server:
        rc, report, _, _ = bench_json(capsys, tmp_path, "--url", server.url, "--concurrency", "1",
                                      "--requests", 6, "--warmup", 0, "--same-prompts")
    entry = report["aggregated"][0]
    assert rc == 0 and entry["cache_hits"] == 3 and entry["completion_tokens"] == 18


def test_unreachable_endpoint_is_one_clear_line():
    result = run_ctl_process("bench", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("velollmctl bench: ") and "cannot connect" in result.stderr


def test_bad_concurrency_is_a_usage_error(capsys):
    try:
        run_ctl(capsys, "bench", "--concurrency", "1,0")
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("argparse accepted --concurrency 1,0")


@pytest.mark.parametrize("args, option", [
    (["--timeout", "nan", "detect"], "--timeout"), (["--timeout", "inf", "detect"], "--timeout"),
    (["--timeout", "0", "status"], "--timeout"), (["--timeout", "-1", "detect"], "--timeout"),
    (["bench", "--request-timeout", "-1"], "--request-timeout"),
    (["bench", "--request-timeout", "nan"], "--request-timeout")])
def test_seconds_that_are_not_a_positive_number_are_a_usage_error(args, option):
    result = run_ctl_process(*args)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert f"argument {option}: must be a number of seconds above 0" in result.stderr.splitlines()[-1]
