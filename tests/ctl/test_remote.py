"""ctl/ reaches servers through velollmd.http.client only: Ollama's /api/show for `optimize
--ollama-model` against the Ollama emulator and a scripted server, errors as one line."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from tests.ctl.bench.helpers import run_ctl, run_ctl_process
from tests.ctl.bench.scripted_server import ScriptedServer
from tests.rig.llama import free_port
from velollmd.ctl import modelspec, remote

ROOT = Path(__file__).resolve().parents[2]
LLAMA_8B_SHOW = {
    "details": {"family": "llama", "parameter_size": "8.0B", "quantization_level": "Q4_K_M"},
    "model_info": {"general.architecture": "llama", "general.parameter_count": 8030261248,
                   "llama.block_count": 32, "llama.attention.head_count": 32,
                   "llama.attention.head_count_kv": 8, "llama.embedding_length": 4096,
                   "llama.context_length": 131072}}
# Modules that speak HTTP or open sockets themselves; urllib.parse only splits URLs.
NETWORK_MODULES = ("socket", "ssl", "http", "urllib.request", "urllib.error", "urllib3", "requests",
                   "httpx", "aiohttp")


def test_fetch_ollama_show_posts_the_model_name(ollama_emulator):
    show = modelspec.fetch_ollama_show(ollama_emulator.url + "/", "llama3.2:latest")
    assert show["details"]["quantization_level"] == "Q4_K_M" and show["model_info"]["general.architecture"] == "llama"
    assert ollama_emulator.last_request("/api/show") == {"model": "llama3.2:latest"}


def test_optimize_sizes_the_model_from_ollama_show(capsys):
    routes = {"/api/show": (200, "application/json", json.dumps(LLAMA_8B_SHOW).encode())}
    with ScriptedServer(routes) as server:
        rc, out, err = run_ctl(capsys, "optimize", "--ollama-model", "llama3.1:8b", "--ollama-url", server.url,
                               "--json")
    plan = json.loads(out)["plan"]
    assert rc == 0, err
    assert (plan["model"], plan["weights_mib"]) == ("llama3.1:8b", modelspec.weights_mib(8.030261248, "Q4_K_M"))


def test_unknown_ollama_model_is_one_line(capsys, ollama_emulator):
    rc, out, err = run_ctl(capsys, "optimize", "--ollama-model", "no-such:model", "--ollama-url", ollama_emulator.url)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err == (f"velollmctl optimize: cannot read the model: {ollama_emulator.url}/api/show answered "
                   f"HTTP 404: model \"no-such:model\" not found, try pulling it first\n")


def test_not_ollama_is_one_line(capsys):
    with ScriptedServer({"/api/show": (200, "text/html", b"<html>hello</html>")}) as server:
        rc, _, err = run_ctl(capsys, "optimize", "--ollama-model", "m", "--ollama-url", server.url)
    assert rc == 2 and err.count("\n") == 1 and "did not answer with a JSON object: is this Ollama?" in err


@pytest.mark.parametrize("show", [
    {"details": "x", "model_info": LLAMA_8B_SHOW["model_info"]},
    {"details": LLAMA_8B_SHOW["details"], "model_info": [1]},
    {"details": {"quantization_level": 5}, "model_info": LLAMA_8B_SHOW["model_info"]},
])
def test_an_api_show_answer_of_the_wrong_shape_is_one_line(capsys, show):
    with ScriptedServer({"/api/show": (200, "application/json", json.dumps(show).encode())}) as server:
        rc, out, err = run_ctl(capsys, "optimize", "--ollama-model", "m", "--ollama-url", server.url)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"velollmctl optimize: cannot read the model: {server.url}/api/show ")
    assert err.endswith("is this Ollama?\n")


def test_unreachable_ollama_is_one_clear_line():
    url = f"http://127.0.0.1:{free_port()}"
    result = run_ctl_process("optimize", "--ollama-model", "m", "--ollama-url", url)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"velollmctl optimize: cannot read the model: {url}: cannot connect to 127.0.0.1:")


def test_request_raises_server_error_for_a_closed_port():
    with pytest.raises(remote.ServerError, match="cannot connect"):
        remote.request(f"http://127.0.0.1:{free_port()}", "GET", "/", timeout_s=5.0)


@pytest.mark.parametrize("package", ["ctl", "hw"])
def test_no_http_library_or_socket_in(package):
    found = []
    for path in sorted((ROOT / "velollmd" / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) \
                and node.level == 0 else []
            found += [f"{path.relative_to(ROOT)}: {name}" for name in names
                      if any(name == m or name.startswith(m + ".") for m in NETWORK_MODULES)]
    assert found == []


def test_error_message_of_openai_and_ollama_bodies():
    assert remote.error_message(b'{"error": {"message": "bad model", "type": "x"}}') == "bad model"
    assert remote.error_message(b'{"error": "model not found"}') == "model not found"
    assert remote.error_message(b"<html>oops</html>") == "<html>oops</html>"
    assert remote.error_message(b"") == "(empty body)"
