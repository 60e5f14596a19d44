"""Model grouping fed by Ollama's /api/ps: the emulator's loaded models reach the backend, and
admission lets an equally urgent request for a loaded model go before one that would make
Ollama swap models."""
import asyncio
from types import SimpleNamespace

from tests.aio import run
from tests.sched.test_admission import hold, request, settle
from velollmd.backends.ollama import OllamaBackend
from velollmd.config import BackendConfig, SchedulerConfig
from velollmd.sched.admission import Admission


def ollama(emulator) -> OllamaBackend:
    return OllamaBackend(BackendConfig(name="ollama", kind="ollama", url=emulator.url, models=["*"]))


def refreshed_loaded_models(backend: OllamaBackend):
    async def main():
        try:
            assert await backend.refresh()
            return backend.loaded_models
        finally:
            await backend.close()
    return run(main())


def test_loaded_models_come_from_api_ps_with_and_without_latest(ollama_emulator):
    assert refreshed_loaded_models(ollama(ollama_emulator)) == frozenset()
    ollama_emulator.touch(ollama_emulator.find_model("llama3.2:latest"), "5m")
    assert refreshed_loaded_models(ollama(ollama_emulator)) == {"llama3.2:latest", "llama3.2"}
    assert ollama_emulator.count("/api/ps") == 2


def test_an_ollama_without_api_ps_stays_healthy_with_loaded_models_unknown(ollama_emulator):
    backend = ollama(ollama_emulator)
    get_json = backend.get_json

    async def older_ollama(path):              # /api/ps answers 404, as on an Ollama without it
        return await get_json("/api/does-not-exist" if path == "/api/ps" else path)
    backend.get_json = older_ollama
    assert refreshed_loaded_models(backend) is None


def grouped_order(loaded_models) -> list[str]:
    """One slot, busy; then a request for model "a" and, later, one for model "b"."""
    async def main():
        admission = Admission(SchedulerConfig(backend_queue_per_slot=0))
        target = SimpleNamespace(name="o", num_slots=1, slots_source="config", context_size=lambda: 4096,
                                 loaded_models=loaded_models)
        started, release = [], asyncio.Event()
        tasks = [asyncio.ensure_future(hold(admission, target, request("busy"), started, release))]
        await settle()
        for rid, model in (("for-a", "a"), ("for-b", "b")):
            waiting = request(rid)
            waiting.model = model
            tasks.append(asyncio.ensure_future(hold(admission, target, waiting, started, release)))
            await settle()
        target.loaded_models = loaded_models
        release.set()
        await asyncio.gather(*tasks)
        return started
    return run(main())


def test_admission_prefers_the_model_ollama_has_loaded():
    assert grouped_order(frozenset({"b"})) == ["busy", "for-b", "for-a"]
    assert grouped_order(None) == ["busy", "for-a", "for-b"]
