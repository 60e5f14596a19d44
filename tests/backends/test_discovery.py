"""Width discovery over real sockets: SGLang, TGI and vLLM answers as those servers write them,
a server that says nothing (adaptive), and a vLLM's version (its GET /version)."""
import json

import pytest

from tests.aio import run
from tests.rig.scripted_openai import VLLM_METRICS, ScriptedServer
from velollmd.backends.openai import OpenAIBackend
from velollmd.config import MAX_SLOTS, BackendConfig


def discover(routes: dict, slots: int = 0) -> tuple[OpenAIBackend, ScriptedServer]:
    server = ScriptedServer(routes)
    backend = OpenAIBackend(BackendConfig(name="b", kind="openai", url=server.url, models=["*"], slots=slots))

    async def main():
        try:
            assert await backend.refresh()
            await backend.refresh()                  # asked once per start, not per check
        finally:
            await backend.close()
    try:
        run(main())
    finally:
        server.close()
    return backend, server


@pytest.mark.parametrize("path,body,server_name", [
    ("/get_server_info", {"model_path": "m", "max_running_requests": 48, "tp_size": 1}, "SGLang"),
    ("/info", {"model_id": "m", "max_concurrent_requests": 128, "max_best_of": 2}, "TGI"),
])
def test_a_server_that_states_its_width_is_taken_at_its_word(path, body, server_name):
    backend, server = discover({path: (200, json.dumps(body).encode())})
    width = body.get("max_running_requests") or body.get("max_concurrent_requests")
    assert (backend.num_slots, backend.slots_source, backend.server) == (width, path, server_name)
    assert backend.status()["slots"] == width and backend.status()["slots_source"] == path
    assert server.hits.count(path) == 1


@pytest.mark.parametrize("path, field", [("/info", "max_concurrent_requests"),
                                         ("/get_server_info", "max_running_requests")])
def test_a_width_past_the_most_slots_is_taken_as_the_most(path, field):
    """A server's word of 10**12 slots: a slot table that big hung the daemon at start."""
    backend, _ = discover({path: (200, json.dumps({field: 10**12}).encode())})
    assert (backend.num_slots, backend.slots_source) == (MAX_SLOTS, path)


def test_vllm_is_recognised_but_its_width_is_learnt():
    backend, _ = discover({"/metrics": (200, VLLM_METRICS)})
    assert backend.server == "vLLM" and backend.slots_source is None
    assert backend.status()["slots"] is None


@pytest.mark.parametrize("answer, version", [
    ((200, b'{"version": "0.12.0"}'), "0.12.0"),                      # vLLM's GET /version
    ((200, b'{"version": "0.10.2rc1.dev12+g1a2b3c"}'), "0.10.2rc1.dev12+g1a2b3c"),
    ((404, b'{"detail":"Not Found"}'), None),
    ((200, b'{"version": 12}'), None),
    ((200, b"not json"), None),
])
def test_a_vllms_version_is_asked_once_and_kept(answer, version):
    backend, server = discover({"/metrics": (200, VLLM_METRICS), "/version": answer})
    assert backend.server == "vLLM" and backend.server_version == version
    assert backend.status()["server_version"] == version and server.hits.count("/version") == 1


def test_only_a_vllm_is_asked_its_version():
    backend, server = discover({"/info": (200, b'{"max_concurrent_requests": 16}'),
                                "/version": (200, b'{"version": "2.4.0"}')})
    assert backend.server == "TGI" and backend.server_version is None and "/version" not in server.hits


@pytest.mark.parametrize("routes", [
    {},                                                        # LM Studio, LocalAI, ...: nothing
    {"/info": (200, b'{"max_concurrent_requests": "many"}')},  # wrong type
    {"/info": (200, b"not json")},
    {"/get_server_info": (200, b'{"max_running_requests": null}')},
    {"/metrics": (200, b"# other exporter\nup 1\n")},
])
def test_a_server_that_says_nothing_has_an_unknown_width(routes):
    backend, _ = discover(routes)
    assert backend.slots_source is None and backend.server == ""


def test_configured_slots_win_and_nothing_is_asked():
    backend, server = discover({"/info": (200, b'{"max_concurrent_requests": 128}')}, slots=4)
    assert (backend.num_slots, backend.slots_source) == (4, "config")
    assert "/info" not in server.hits and "/version" not in server.hits and backend.server_version is None


def test_a_server_that_went_away_is_asked_again_when_back():
    backend, _ = discover({"/info": (200, b'{"max_concurrent_requests": 16}')})
    backend.forget_server()
    assert backend.server is None and backend.slots_source is None and backend.num_slots == 1
    backend, _ = discover({"/metrics": (200, VLLM_METRICS), "/version": (200, b'{"version": "0.9.2"}')})
    backend.forget_server()
    assert backend.server is None and backend.server_version is None      # it may come back upgraded
