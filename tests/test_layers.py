"""The package's architecture as rules: import-linter contracts (setup.cfg) and layout checks.

docs/architecture.md explains the layers; these tests keep the code to them.
"""
import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "velollmd"
TOP_LEVEL = {"__init__", "__main__", "daemon", "app", "config", "errors", "log", "systemd", "metrics", "looplag"}


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
               "--no-cache", "--config", str(root / "setup.cfg")]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120)


def copy_package(tmp_path: Path) -> Path:
    shutil.copytree(PACKAGE, tmp_path / "velollmd", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    return tmp_path


def test_every_import_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module,line,contract,expected", [
    ("wire/request.py", "from ..core import service", "imports point down",
     "velollmd.wire.request -> velollmd.core.service"),
    ("cache/keys.py", "import socket", "cache/ and toolcalls/ do no network or process I/O",
     "velollmd.cache is not allowed to import socket"),
])
def test_a_deliberate_violation_breaks_its_contract_by_name(tmp_path, module, line, contract, expected):
    """An upward import, and a socket in the pure cache: `lint-imports` fails naming both."""
    root = copy_package(tmp_path)
    with open(root / "velollmd" / module, "a") as f:
        f.write(f"\n{line}  # noqa: E402,F401  deliberately breaks a contract\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout
    assert expected in result.stdout


def test_top_level_holds_only_the_entry_and_cross_cutting_modules():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules == TOP_LEVEL


def _attribute_reads(folder: Path, name: str) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == name:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_scheduler_and_api_ask_capabilities_not_kinds():
    """sched/ and api/ never branch on a backend's kind (they ask can_tokenize, pins_slots,
    native_ollama, context_size(), ...)."""
    assert _attribute_reads(PACKAGE / "sched", "kind") == []
    assert _attribute_reads(PACKAGE / "api", "kind") == []
    assert _attribute_reads(PACKAGE / "core", "kind") == []


def test_routes_get_services_not_the_app():
    assert _attribute_reads(PACKAGE / "api", "app") == []
