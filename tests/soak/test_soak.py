"""The soak in small: the same cases as `make soak` (benchmarks/soak.py), with counts that take
seconds. A real daemon process in front of the scripted fast backend (and the real llama-server
for the mix): no unexpected status, fds and asyncio tasks back to where they were, slow
connections closed, a 413 for a huge body, a 502 / error event for an endless answer."""
import asyncio

import pytest

from tests.daemon_process import DaemonProcess
from tests.daemon_rig import llama_backend
from tests.rig.scripted_backend import ScriptedBackend
from tests.soak import driver

SERVER = "header_timeout_s = 2\nmax_body_bytes = 1048576\n"
DAEMON = '[log]\naccess = false\n[cache]\npath = ""\n[responses]\npath = ""\n[key_limits]\npath = ""\n[scheduler]\nmax_queue = 1024\n'


@pytest.fixture(scope="module")
def scripted_daemon(tmp_path_factory):
    with ScriptedBackend() as backend:
        with DaemonProcess(DAEMON + backend.toml(), tmp_path_factory.mktemp("soak"), SERVER) as daemon:
            yield daemon


def no_leaks(result: driver.CaseResult) -> None:
    assert not result.unexpected, result.unexpected
    assert result.leaked_tasks <= 0 and result.leaked_fds <= 0, result.row()


def test_mixed_load_leaves_nothing_behind(scripted_daemon):
    result = asyncio.run(driver.mixed_load(scripted_daemon.url, 400, 32, warmup=100))
    assert result.requests == 400 and len(result.latencies) == 320
    no_leaks(result)


def test_slowloris_connections_are_closed_at_their_deadline(scripted_daemon):
    result = asyncio.run(driver.slowloris(scripted_daemon.url, 40, 100, 8, header_timeout_s=2))
    no_leaks(result)


def test_huge_request_body_is_refused_while_streaming(scripted_daemon):
    result = asyncio.run(driver.huge_body(scripted_daemon.url, 64 * driver.MIB))
    no_leaks(result)
    assert result.rss_end - result.rss_start < 32 * driver.MIB, result.row()


def test_endless_backend_answers_end_cleanly(scripted_daemon):
    result = asyncio.run(driver.endless_backend(scripted_daemon.url, stream_mib=1))
    no_leaks(result)


def test_mixed_load_against_the_real_llama_server(tmp_path, llama_server):
    backend = llama_backend(llama_server)
    toml = DAEMON + (f'[[backends]]\nname = "llama"\nkind = "llamacpp"\nurl = "{backend["url"]}"\n'
                     f'models = ["tiny*"]\n')
    with DaemonProcess(toml, tmp_path, SERVER) as daemon:
        result = asyncio.run(driver.mixed_load(daemon.url, 30, 6, with_tools=False, warmup=10))
    no_leaks(result)
