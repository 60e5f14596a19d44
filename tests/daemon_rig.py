"""Run the real daemon (App + HTTP server) in a background thread for end-to-end tests."""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from tests.rig.llama import make_tiny_model
from velollmd.config import config_from_table
from velollmd.daemon import build_app, serve


class RunningDaemon:
    def __init__(self, table: dict):
        self.config = test_config(table)
        self.app = build_app(self.config)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve(self.config, self.app, ready=self._on_ready, stop=self._stop)
        try:
            asyncio.run(main())
        except BaseException as exc:          # surfaced by start()
            self._error = exc
            self._ready.set()

    def _on_ready(self, server) -> None:
        self.port = server.port
        self._ready.set()

    def start(self) -> RunningDaemon:
        self._thread.start()
        if not self._ready.wait(30) or self._error:
            raise RuntimeError(f"daemon did not start: {self._error!r}")
        return self

    def call(self, coro_fn, timeout: float = 30):
        """Run `coro_fn()` on the daemon's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro_fn(), self._loop).result(timeout)

    def reload(self, table: dict) -> dict:
        """App.reload with the config `table` makes (what SIGHUP applies); returns its changes."""
        self.config = test_config(table)
        return self.call(lambda: self.app.reload(self.config))

    def stop(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(15)

    def __enter__(self) -> RunningDaemon:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def test_config(table: dict):
    """The config of `table` on a free port, with quick drains and no cache, response store
    or key limits snapshots."""
    table = {**table, "server": {"port": 0, "drain_timeout_s": 2, **table.get("server", {})},
             "cache": {"path": "", **table.get("cache", {})},
             "responses": {"path": "", **table.get("responses", {})},
             "key_limits": {"path": "", **table.get("key_limits", {})}}
    return config_from_table(table, "<test>")


def llama_backend(server, **extra) -> dict:
    return {"name": "llama", "kind": "llamacpp", "url": server.url, "models": ["tiny*"], **extra}


def ollama_backend(emulator, **extra) -> dict:
    return {"name": "ollama", "kind": "ollama", "url": emulator.url,
            "models": ["llama3*", "nomic*", "emu-*"], **extra}


def engine_backend(models_dir, **extra) -> dict:
    """The in-process engine serving every GGUF in `models_dir` (not Ollama's store)."""
    return {"name": "engine", "kind": "engine", "models_dir": str(models_dir), "ollama_store": False,
            "max_running": 2, "num_ctx": 512, **extra}


def llama_and_engine_daemon(server, models_dir, llama_model: str, *, table: dict | None = None,
                            **engine) -> RunningDaemon:
    """A daemon (not started) before the real llama-server (serving `llama_model`) and the
    engine (every GGUF in `models_dir`, `engine` its settings), the cache off; `table`: more
    of the config."""
    backends = [llama_backend(server, models=[llama_model]), engine_backend(models_dir, **engine)]
    return RunningDaemon({"backends": backends, "cache": {"enabled": False}, **(table or {})})


def tiny_engine_daemon(folder, model: str, **extra) -> RunningDaemon:
    """A daemon (not started) before the engine alone, serving the tiny model as `model`."""
    make_tiny_model(Path(folder) / f"{model}.gguf")
    return RunningDaemon({"backends": [engine_backend(folder, **extra)], "cache": {"enabled": False}})
