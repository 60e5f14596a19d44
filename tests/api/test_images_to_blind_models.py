"""Images for a model that cannot see them are a 400 in every API, decided before a backend is
called: llama-server without a projector answers such a request with a 500, which counted
against its circuit breaker, so three requests from one client shut the model off for
everyone (503 "every backend for model ... is failing"). Real llama-server and engine."""
import anthropic
import openai
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend
from tests.rig.llama import make_tiny_model

PNG = "data:image/png;base64,aGVsbG8="
SEE = [{"role": "user", "content": [{"type": "text", "text": "see?"}, {"type": "image_url", "image_url": {"url": PNG}}]}]


def test_every_api_refuses_images_for_llama_server_without_vision_and_it_keeps_serving(daemon):
    chat = openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", max_retries=0)
    for _ in range(4):                                  # three backend failures would open the breaker
        with pytest.raises(openai.BadRequestError) as info:
            chat.chat.completions.create(model="tiny", messages=SEE, max_tokens=2)
        assert "does not support images" in info.value.message and info.value.code == "images_not_supported"
    with pytest.raises(openai.BadRequestError):
        chat.responses.create(model="tiny", input=[{"role": "user", "content": [
            {"type": "input_text", "text": "see?"}, {"type": "input_image", "image_url": PNG}]}])
    with pytest.raises(openai.BadRequestError):              # an image a tool returned (Codex's view_image)
        chat.responses.create(model="tiny", input=[
            {"type": "function_call", "call_id": "c1", "name": "view_image", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_image", "image_url": PNG}]}])
    claude = anthropic.Anthropic(base_url=daemon.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(model="tiny", max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aGVsbG8="}},
            {"type": "text", "text": "see?"}]}])
    assert "does not support images" in refused.value.message
    answer = chat.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert answer.usage.completion_tokens == 2


def test_the_engine_refuses_images_the_same_way(tmp_path):
    make_tiny_model(tmp_path / "blind.gguf")
    table = {"backends": [engine_backend(tmp_path)],
             "cache": {"enabled": False}}
    with RunningDaemon(table) as running:
        chat = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            chat.chat.completions.create(model="blind", messages=SEE, max_tokens=2)
        assert info.value.code == "images_not_supported"


HEAR = [{"role": "user", "content": [{"type": "text", "text": "hear?"},
                                     {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}]


def test_audio_for_a_model_that_cannot_hear_is_a_400_and_it_keeps_serving(daemon, tmp_path):
    """llama-server without an audio projector answered input_audio with a 500 (a 502 here)
    that counted against its breaker: the fourth request, any request, got 503. The engine
    rendered no template for it (a 400 without a code)."""
    make_tiny_model(tmp_path / "deaf.gguf")
    with RunningDaemon({"backends": [engine_backend(tmp_path)], "cache": {"enabled": False}}) as engine:
        for url, model in ((daemon.url, "tiny"), (engine.url, "deaf")):
            chat = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            for _ in range(4):                          # three backend failures would open the breaker
                with pytest.raises(openai.BadRequestError) as info:
                    chat.chat.completions.create(model=model, messages=HEAR, max_tokens=2)
                assert info.value.code == "audio_not_supported" and info.value.body["param"] == "messages"
            answer = chat.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=2)
            assert answer.usage.completion_tokens == 2
