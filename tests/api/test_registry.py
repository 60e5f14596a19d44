"""Registry.candidates: glob matches remembered, catalogue listings followed as they change."""
import asyncio
import threading

import pytest

from velollmd.api import admin
from velollmd.backends.base import HEALTH_TIMEOUT_S, ModelInfo
from velollmd.backends.registry import Registry
from velollmd.config import config_from_table
from velollmd.errors import NotFound, Unavailable


def registry() -> Registry:
    config = config_from_table({"backends": [
        {"name": "a", "kind": "openai", "url": "http://127.0.0.1:9", "models": ["*"]},
        {"name": "b", "kind": "ollama", "url": "http://127.0.0.1:9", "models": ["llama*", "qwen*"]}]})
    reg = Registry(config.backends)
    for backend in reg.backends:
        backend.healthy = True
    return reg


def names(backends) -> list[str]:
    return [b.name for b in backends]


def test_listed_backends_go_first_and_follow_each_catalogue_refresh():
    reg = registry()
    a, b = reg.backends
    assert names(reg.candidates("llama3.2")) == ["a", "b"]          # by glob, config order
    b.models = [ModelInfo("llama3.2:latest", "b")]                   # a refresh: a new list
    assert names(reg.candidates("llama3.2")) == ["b"]               # the untagged name counts
    assert names(reg.candidates("llama3.2:latest")) == ["b"]
    a.models = [ModelInfo("llama3.2", "a")]
    assert names(reg.candidates("llama3.2")) == ["a", "b"]
    b.models = []
    assert names(reg.candidates("llama3.2")) == ["a"]
    assert names(reg.candidates("mistral")) == ["a"]                # only a's glob matches


def test_health_is_read_on_every_call_and_unknown_models_are_404():
    reg = registry()
    a, b = reg.backends
    assert names(reg.candidates("qwen3")) == ["a", "b"]
    a.healthy = False
    assert names(reg.candidates("qwen3")) == ["b"]
    b.healthy = False
    with pytest.raises(Unavailable):
        reg.candidates("qwen3")
    only_b = Registry([b.config])
    with pytest.raises(NotFound):
        only_b.candidates("mistral")
    with pytest.raises(NotFound):                                  # asked twice: remembered
        only_b.candidates("mistral")


def test_the_catalogue_lists_a_model_under_the_backend_its_globs_route_it_to():
    """b lists tiny but its globs send tiny to a: listed under a (it was listed as b's, and a
    request for it went to a), or not at all when no glob routes it."""
    reg = registry()
    a, b = reg.backends
    b.models = [ModelInfo("tiny:latest", "b"), ModelInfo("llama3.2:latest", "b")]
    assert [(m.id, m.backend) for m in reg.catalogue()] == [("llama3.2:latest", "b")]
    a.models = [ModelInfo("tiny:latest", "a")]
    assert sorted((m.id, m.backend) for m in reg.catalogue()) == [("llama3.2:latest", "b"), ("tiny:latest", "a")]
    only_globbed = Registry([config_from_table({"backends": [
        {"name": "c", "kind": "ollama", "url": "http://127.0.0.1:9", "models": ["llama3.2"]}]}).backends[0]])
    c = only_globbed.backends[0]
    c.healthy, c.models = True, [ModelInfo("llama3.2:latest", "c"), ModelInfo("qwen3:latest", "c")]
    assert [m.id for m in only_globbed.catalogue()] == ["llama3.2:latest"]      # a name and its :latest
    assert names(only_globbed.candidates("llama3.2:latest")) == names(only_globbed.candidates("llama3.2")) == ["c"]


def test_a_name_without_a_tag_is_its_latest_not_any_tag():
    """As Ollama reads names: `llama3.2` is llama3.2:latest, never llama3.2:1b. A backend that
    lists only llama3.2:1b was taken for one that has `llama3.2` and got the request (Ollama
    answers it 404) while another backend held llama3.2:latest."""
    reg = registry()
    a, b = reg.backends
    a.models = [ModelInfo("llama3.2:1b", "a")]
    b.models = [ModelInfo("llama3.2:latest", "b")]
    assert names(reg.candidates("llama3.2")) == ["b"]
    assert names(reg.candidates("llama3.2:1b")) == ["a"]
    assert reg.find_model("llama3.2").backend == "b"
    a.models = [ModelInfo("tiny", "a")]                              # an untagged listing
    assert names(reg.candidates("tiny:latest")) == ["a"]
    assert reg.find_model("tiny:latest").backend == "a"


async def tasks_made_by_freshen(reg: Registry) -> list[str]:
    """What each task that `reg.freshen()` starts runs, counted by the loop's task factory."""
    made = []

    def counting(loop, coro, **kwargs):
        made.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **kwargs)
    loop = asyncio.get_running_loop()
    loop.set_task_factory(counting)
    try:
        await reg.freshen()
    finally:
        loop.set_task_factory(None)
    return made


def test_a_listing_starts_work_only_for_the_backends_with_something_to_check(tmp_path):
    """Every listing freshens the catalogues first; a server's follows its health loop, so
    it gets no task (there were one per backend per listing), the engine's file check does."""
    servers = registry()
    engine_config = config_from_table({"backends": [
        {"name": "e", "kind": "engine", "models_dir": str(tmp_path), "ollama_store": False}]}).backends[0]
    mixed = Registry([*(b.config for b in servers.backends), engine_config])

    async def scenario():
        await mixed.backends[-1].refresh()
        try:
            return await tasks_made_by_freshen(servers), await tasks_made_by_freshen(mixed)
        finally:
            await mixed.close()
    for_servers, for_mixed = asyncio.run(scenario())
    assert for_servers == []
    assert for_mixed == ["EngineBackend.freshen", "EngineBackend._check_after"]


def test_a_freshen_stuck_on_the_disk_returns_at_its_deadline_and_the_check_goes_on(tmp_path, monkeypatch):
    """/health freshens with a short deadline (HEALTH_FRESHEN_S): a scan blocked on a disk that
    does not answer leaves the answer to the last scan's state, and finishes on its own."""
    config = config_from_table({"backends": [
        {"name": "e", "kind": "engine", "models_dir": str(tmp_path), "ollama_store": False}]}).backends[0]
    reg = Registry([config])
    engine = reg.backends[0]
    disk = threading.Event()
    scans = []

    def stuck_scan():
        disk.wait(30)
        scans.append("done")
        return ()

    async def scenario():
        await engine.refresh()
        monkeypatch.setattr(engine, "_sources_now", stuck_scan)
        try:
            await reg.freshen(0.05)
            returned_before_the_disk_answered = not scans
            disk.set()
            await reg.freshen()                         # the stuck check ends, and one after it runs
            return returned_before_the_disk_answered
        finally:
            disk.set()
            await reg.close()
    assert asyncio.run(scenario()) and "done" in scans               # returned first; the check ended later
    assert admin.HEALTH_FRESHEN_S < HEALTH_TIMEOUT_S
