"""pytest fixtures for real parts: a llama-server on the tiny model, the Ollama emulator, and an
sd_notify socket.

Pull them into a conftest.py with `from tests.rig.fixtures import *  # noqa: F401,F403`.
"""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.rig.llama import LlamaServer, llama_server_binary, make_tiny_model
from tests.rig.ollama_emulator import OllamaEmulator

__all__ = ["llama_binary", "tiny_model_path", "llama_server", "llama_server_factory",
           "ollama_emulator", "notify"]


@pytest.fixture(scope="session")
def llama_binary() -> str:
    """Path of the real llama-server binary (built once into ~/.cache/velollm)."""
    return llama_server_binary()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GGUF (seed 0, F16), generated once per session."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny.gguf")


@pytest.fixture(scope="session")
def llama_server(llama_binary: str, tiny_model_path: Path) -> Iterator[LlamaServer]:
    """One llama-server shared by the whole session (parallel 4, -c 4096, alias "tiny").
    Do not kill or restart it: use llama_server_factory for that."""
    with LlamaServer(tiny_model_path, binary=llama_binary) as server:
        yield server


@pytest.fixture
def llama_server_factory(llama_binary: str, tiny_model_path: Path) -> Iterator[Callable[..., LlamaServer]]:
    """make(**kwargs) -> a started LlamaServer of its own (kwargs as LlamaServer: parallel,
    ctx_size, alias, extra_args, port, model_path); all are stopped at teardown."""
    servers: list[LlamaServer] = []

    def make(model_path: Path | None = None, **kwargs) -> LlamaServer:
        server = LlamaServer(model_path or tiny_model_path, binary=llama_binary, **kwargs)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.__exit__(None, None, None)


@pytest.fixture
def ollama_emulator() -> Iterator[OllamaEmulator]:
    """A fresh Ollama emulator (empty script, zero counters) on 127.0.0.1:<free port>."""
    with OllamaEmulator() as emulator:
        yield emulator


@pytest.fixture
def notify(tmp_path) -> Iterator[socket.socket]:
    """A real AF_UNIX datagram socket for a daemon's NOTIFY_SOCKET (sd_notify messages)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(20)
    yield sock
    sock.close()
