"""A real llama.cpp `llama-server` for tests, on the tiny model from tools/make_tiny_gguf.py.

    binary = llama_server_binary()                    # builds once into ~/.cache/velollm
    model = make_tiny_model(tmp_dir / "tiny.gguf")
    with LlamaServer(model, parallel=2) as server:    # 127.0.0.1, free port, /health ok
        openai.OpenAI(base_url=server.url + "/v1", api_key="x")
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Sequence

from tests.rig.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_ALIAS = "tiny"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0


@functools.cache
def llama_server_binary() -> str:
    """Path of the cached llama-server binary (tools/llama-server builds it on first use)."""
    result = subprocess.run([str(REPO_ROOT / "tools" / "llama-server")], capture_output=True,
                            text=True, check=False)
    path = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    if result.returncode != 0 or not os.access(path, os.X_OK):
        raise RuntimeError(f"tools/llama-server failed (rc={result.returncode}): {result.stderr[-2000:]}")
    return path


@functools.cache
def tiny_gguf_tool() -> ModuleType:
    """tools/make_tiny_gguf.py as a module (tools/ is not a package)."""
    path = REPO_ROOT / "tools" / "make_tiny_gguf.py"
    spec = importlib.util.spec_from_file_location("make_tiny_gguf", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tiny_model(out_path: str | os.PathLike, seed: int = 0, dtype: str = "f16") -> Path:
    return tiny_gguf_tool().build_tiny_gguf(out_path, seed=seed, dtype=dtype)


def token_id(text: str) -> int:
    """Id of a token of the tiny vocab, e.g. token_id("<tool_call>")."""
    tokens, _, _ = tiny_gguf_tool().tiny_vocab()
    return tokens.index(text)


def force_tool_call_bias() -> dict[str, float]:
    """`logit_bias` for a chat request with `tools`: the tiny model makes exactly one real
    tool call, parsed by llama-server (finish_reason "tool_calls")."""
    return tiny_gguf_tool().force_tool_call_bias()


class LlamaServer:
    """One llama-server process on 127.0.0.1. start() waits until /health says ok."""

    def __init__(self, model_path: str | os.PathLike, *, parallel: int = 4, ctx_size: int = 4096,
                 alias: str = MODEL_ALIAS, extra_args: Sequence[str] = (), port: int | None = None,
                 binary: str | None = None):
        self.model_path = Path(model_path)
        self.parallel = parallel
        self.ctx_size = ctx_size
        self.alias = alias
        self.extra_args = list(extra_args)
        self.port = port or free_port()
        self.binary = binary or llama_server_binary()
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkstemp(prefix=f"llama-server-{self.port}-", suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [self.binary, "-m", str(self.model_path), "--host", "127.0.0.1",
                "--port", str(self.port), "--jinja", "--metrics", "--parallel", str(self.parallel),
                "-c", str(self.ctx_size), "--no-webui", "-a", self.alias, *self.extra_args]

    def start(self) -> "LlamaServer":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.health() == "ok":
                return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"llama-server not healthy after {timeout_s}s:\n{self.log_tail()}")

    def health(self) -> str | None:
        """The `status` of GET /health, or None when the server does not answer."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                return json.load(resp).get("status")
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would: no graceful shutdown."""
        if self.is_running():
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit within STOP_TIMEOUT_S."""
        if not self.is_running():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> "LlamaServer":
        """Stop (if running) and start again on the same port and model."""
        self.stop()
        return self.start()

    def log_tail(self, num_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-num_chars:]
        except OSError:
            return ""

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)
