"""The examples of README.md and docs/ run as written: each TOML block is a valid configuration,
each `curl` line and each Python block answers through a real daemon in front of the engine
(the demo model) and the real llama-server, with the model names the examples use mapped by
aliases as the docs tell users to map them. Only the daemon's address is replaced."""
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.daemon_rig import llama_backend
from velollmd.config import config_from_table

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
DOC_URL = "127.0.0.1:8000"


def blocks(language: str) -> list[tuple[str, str]]:
    """(file, text) of every fenced block of `language` in the docs."""
    return [(str(path.relative_to(ROOT)), match[1]) for path in DOCS
            for match in re.finditer(rf"```{language}\n(.*?)```", path.read_text(), re.S)]


def config_blocks() -> list[tuple[str, dict]]:
    """The velollmd configurations shown (Codex's own config.toml is not one)."""
    return [(name, tomllib.loads(text)) for name, text in blocks("toml") if "model_provider" not in text]


@pytest.mark.parametrize("name, table", config_blocks(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_toml_block_is_a_valid_configuration(name, table):
    if set(table) <= {"model", "alias"}:             # a line of an engine's [[backends]] table
        table = {"backends": [{"name": "engine", "kind": "engine", **table}]}
    assert config_from_table(table, name)


@pytest.fixture(scope="module")
def daemon(llama_server, tiny_model_path, tmp_path_factory):
    from tests.daemon_rig import RunningDaemon
    models = tmp_path_factory.mktemp("models")
    shutil.copy(tiny_model_path, models / "velollm-demo.gguf")      # what `make run` serves
    table = {"backends": [llama_backend(llama_server),
                          {"name": "engine", "kind": "engine", "models_dir": str(models), "ollama_store": False,
                           "models": ["velollm-*"]}],
             "aliases": {"llama3.2": "tiny", "qwen2.5-coder:7b": "tiny"}}
    with RunningDaemon(table) as running:
        yield running


def curl_lines() -> list[str]:
    return [line for _, text in blocks("sh") for line in text.splitlines()
            if line.startswith("curl ") and "localhost:8000" in line]


def test_the_docs_show_curl_and_python_examples():
    assert curl_lines() and len(blocks("python")) >= 4


@pytest.mark.parametrize("line", curl_lines())
def test_every_curl_example_answers(daemon, line):
    argv = [arg.replace("localhost:8000", f"127.0.0.1:{daemon.port}") for arg in shlex.split(line)]
    proc = subprocess.run([*argv, "--fail-with-body"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["choices"][0]["message"]["content"]


@pytest.mark.parametrize("name, code", blocks("python"), ids=lambda v: v if v.endswith(".md") else "")
def test_every_python_example_runs(daemon, name, code):
    assert DOC_URL in code, "a Python example that reaches no daemon"
    exec(compile(code.replace(DOC_URL, f"127.0.0.1:{daemon.port}"), name, "exec"), {})


def test_the_readme_lists_every_section_of_the_configuration():
    from velollmd.config import TABLE_NAMES
    listed = re.search(r"Sections: (.*?)\.\n", (ROOT / "README.md").read_text(), re.S)[1]
    assert sorted(re.findall(r"`(\[[^`]+\])`", listed)) == sorted(TABLE_NAMES.values())


def test_the_readme_layout_names_every_package_and_top_module():
    text = (ROOT / "README.md").read_text()
    layout = text[text.index("  velollmd/  __main__"):]
    layout = layout[:layout.index("```")]
    package = ROOT / "velollmd"
    names = {p.name + "/" for p in package.iterdir() if (p / "__init__.py").exists()}
    names |= {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    assert {name for name in names if not re.search(rf"(?<![\w/]){re.escape(name)}(?![\w/])", layout)} == set()
