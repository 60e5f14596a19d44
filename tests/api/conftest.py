import pytest

from tests.daemon_rig import RunningDaemon, llama_backend, ollama_backend
from tests.rig.ollama_emulator import OllamaEmulator


@pytest.fixture
def daemon_factory():
    """make(table) -> a started RunningDaemon; stopped at teardown."""
    daemons = []

    def make(table: dict) -> RunningDaemon:
        daemon = RunningDaemon(table).start()
        daemons.append(daemon)
        return daemon
    yield make
    for daemon in daemons:
        daemon.stop()


@pytest.fixture
def daemon(daemon_factory, llama_server, ollama_emulator):
    """The daemon in front of the real llama-server ("tiny") and the Ollama emulator (llama3.2...)."""
    return daemon_factory({"backends": [llama_backend(llama_server), ollama_backend(ollama_emulator)]})


@pytest.fixture(scope="module")
def llama_daemon(llama_server):
    """velollmd before the real llama-server ("tiny") and the Ollama emulator (llama3.2...), one per
    module (test_props has its own, with an alias)."""
    with OllamaEmulator() as emulator, RunningDaemon({"backends": [
            llama_backend(llama_server), ollama_backend(emulator)], "cache": {"enabled": False}}) as daemon:
        yield daemon
