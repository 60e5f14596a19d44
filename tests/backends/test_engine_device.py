"""The engine's device choice: `device = "cuda"` on a machine without a usable CUDA device starts,
serves on the CPU, and says why in /health; with one, it serves on the device and says which."""
from __future__ import annotations

import json
import urllib.request

import openai
import pytest

from tests.daemon_rig import RunningDaemon
from tests.rig.llama import make_tiny_model
from velollmd.cuda import kernels
from velollmd.engine.device import choose_device

MODEL = "tiny-device"


def test_cpu_is_taken_as_asked_and_auto_says_why_not_cuda():
    assert choose_device("cpu").to_dict() == {"requested": "cpu", "used": "cpu",
                                              "reason": 'device = "cpu" in the config'}
    auto = choose_device("auto")
    found = kernels.probe()
    assert auto.used == ("cuda" if found.ok else "cpu")
    assert (found.detail in auto.reason) and (found.ok or "no CUDA device" in auto.reason)


def test_auto_and_cuda_take_a_device_that_answers():
    answers = lambda: kernels.Probe(True, "NVIDIA H200")            # noqa: E731
    for requested in ("auto", "cuda"):
        assert choose_device(requested, answers).to_dict() == {"requested": requested, "used": "cuda",
                                                               "reason": "CUDA device NVIDIA H200"}
    silent = lambda: kernels.Probe(False, "the CUDA driver reports no device")   # noqa: E731
    assert choose_device("auto", silent).used == "cpu"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    folder = tmp_path_factory.mktemp("device-models")
    make_tiny_model(folder / f"{MODEL}.gguf")
    table = {"backends": [{"name": "engine", "kind": "engine", "models_dir": str(folder), "device": "cuda",
                           "ollama_store": False, "max_running": 2, "num_ctx": 256}],
             "cache": {"enabled": False}}
    with RunningDaemon(table) as running:
        yield running


def test_device_cuda_serves_on_the_device_that_answers_or_the_cpu_and_health_says_why(daemon):
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    answer = client.chat.completions.create(model=MODEL, max_tokens=4,
                                            messages=[{"role": "user", "content": "hi"}])
    assert answer.usage.completion_tokens == 4
    with urllib.request.urlopen(daemon.url + "/health", timeout=30) as response:
        device = json.loads(response.read())["backends"][0]["engine"]["device"]
    found = kernels.probe()
    assert device["requested"] == "cuda" and device["used"] == ("cuda" if found.ok else "cpu")
    assert found.detail in device["reason"]
