"""Shared pieces of the benchmark scripts: percentiles, real servers, the daemon as a process."""
from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.rig.llama import LlamaServer, make_tiny_model, tiny_gguf_tool  # noqa: E402
from tests.rig.net import free_port  # noqa: E402,F401  (the scripts import it from here)
from velollmd.ctl.bench.stats import percentile  # noqa: E402  (the one definition, as in velollmctl bench)

MODELS_DIR = Path.home() / ".cache" / "velollm" / "bench-models"


def model_file(shape: str, dtype: str) -> Path:
    """The shape's GGUF, written once (to a temporary name, then renamed: a server may map it)."""
    path = MODELS_DIR / f"{shape}-{dtype}.gguf"
    if not path.exists():
        MODELS_DIR.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        tiny_gguf_tool().build_tiny_gguf(partial, dtype=dtype, shape=shape)
        partial.rename(path)
    return path


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99),
            "mean": statistics.fmean(values)}


async def run_concurrently(num_requests: int, concurrency: int, one_request) -> list:
    """`one_request(i)` for i in 0..num_requests-1, `concurrency` at a time (workers taking
    the next index as each finishes); the results, in completion order."""
    queue = list(range(num_requests))
    results = []

    async def worker():
        while queue:
            results.append(await one_request(queue.pop()))
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU time of one thread of a process (default: its main thread, which runs
    velollmd's event loop), from /proc."""
    with open(f"/proc/{pid}/task/{tid or pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port}")


def tiny_model(directory: Path | None = None) -> Path:
    directory = directory or Path(tempfile.mkdtemp(prefix="velollm-bench-"))
    return make_tiny_model(directory / "tiny.gguf")


def start_llama_server(model: Path, parallel: int = 4, ctx_size: int = 4096, extra_args=(),
                       http_threads: int = 128, **kwargs) -> LlamaServer:
    """A llama-server with enough HTTP threads for 64 keep-alive clients: its default pool is
    small, and a keep-alive connection holds a thread until it idles out (5 s), which showed
    up as 10 s stalls of the *direct* path at concurrency 16. Scripts whose targets open more
    connections than that in turn (several proxies at 64 each) ask for more."""
    extra_args = ("--threads-http", str(http_threads), *extra_args)
    return LlamaServer(model, parallel=parallel, ctx_size=ctx_size, extra_args=extra_args, **kwargs).start()


def pinned_to(cpus: set[int] | None):
    """A Popen preexec_fn that pins the child, and every thread it will start, to `cpus`
    (None: no pin, the parent's set)."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (nginx's workers under its master), from /proc."""
    pids, todo = [], [pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as children:
                todo += [int(child) for child in children.read().split()]
        except OSError:
            pass
    return pids


class Daemon:
    """velollmd as its own process, configured by a TOML text; `cpus` pins it (None: no pin)."""

    def __init__(self, toml_body: str, cpus: set[int] | None = None, root: Path = ROOT, log_toml: str = "",
                 switch_interval: float | None = None):
        self.cpus = cpus
        self.root = root                     # a checkout: another one runs a before/after
        self.switch_interval = switch_interval   # sys.setswitchinterval in the daemon (None: as it sets)
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="velollmd-bench-"))
        self.config = self.dir / "velollm.toml"
        self.config.write_text(f"[server]\nport = {self.port}\n[log]\nlevel = \"warning\"\n{log_toml}{toml_body}")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Daemon:
        env = {**os.environ, "PYTHONPATH": str(self.root)}
        start = ["-m", "velollmd"]
        if self.switch_interval is not None:
            start = ["-c", f"import runpy, sys; sys.setswitchinterval({self.switch_interval}); "
                           "runpy.run_module('velollmd', run_name='__main__', alter_sys=True)"]
        self.proc = subprocess.Popen([sys.executable, *start, "--config", str(self.config)],
                                     env=env, stderr=open(self.dir / "daemon.log", "wb"),
                                     cwd=self.root,      # `-m` puts the cwd first on sys.path
                                     preexec_fn=pinned_to(self.cpus))
        wait_listening(self.port)
        time.sleep(0.3)                      # first health refresh of the backends
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def backend_toml(name: str, kind: str, url: str, models: str = '["*"]', extra: str = "") -> str:
    return f'[[backends]]\nname = "{name}"\nkind = "{kind}"\nurl = "{url}"\nmodels = {models}\n{extra}\n'
