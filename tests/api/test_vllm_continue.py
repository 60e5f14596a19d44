"""vLLM's `continue_final_message` and `add_generation_prompt: false` on a chat, as apps written
for vLLM send them (the openai client's extra_body): the final assistant message continued (the
prompt ends inside it, the answer is the continuation only), or the prompt ending with the last
message and no new turn. Checked against the prompt text itself, sent as a plain completion to
the same backend: the engine (tiny GGUF) and the real llama-server; Ollama cannot honour them (a
400 naming the field); a vLLM backend gets them as sent."""
from __future__ import annotations

import httpx
import openai
import pytest

from tests.api.test_vllm_fields import assert_refused
from tests.backends.test_vllm_versions import ScriptedVLLM
from tests.daemon_rig import llama_and_engine_daemon, llama_backend, ollama_backend
from tests.rig.llama import make_tiny_model

ENGINE_MODEL = "tiny-engine"
PREFILL = "Hello the"
USER = {"role": "user", "content": "hi"}
CONTINUED = [USER, {"role": "assistant", "content": PREFILL}]
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}
# The tiny model's ChatML, rendered as vLLM renders each request (the prompt's last characters).
OPEN_PREFILL = f"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n{PREFILL}"
CLOSED_PREFILL = OPEN_PREFILL + "<|im_end|>\n"
NO_TURN = "<|im_start|>user\nhi<|im_end|>\n"


@pytest.fixture(scope="module")
def client(llama_server, tmp_path_factory):
    """The daemon before the real llama-server ("tiny") and the engine ("tiny-engine")."""
    folder = tmp_path_factory.mktemp("continue-models")
    make_tiny_model(folder / f"{ENGINE_MODEL}.gguf")
    with llama_and_engine_daemon(llama_server, folder, "tiny") as daemon:
        yield openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)


def chat_answer(client, model: str, messages: list[dict], stream: bool = False, **extra_body) -> tuple[str, int]:
    """(the answer's text, its prompt's token count)."""
    kwargs = dict(model=model, messages=messages, max_tokens=8, temperature=0, extra_body=extra_body)
    if not stream:
        answer = client.chat.completions.create(**kwargs)
        return answer.choices[0].message.content, answer.usage.prompt_tokens
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1].usage.prompt_tokens


def completion_answer(client, model: str, prompt: str) -> tuple[str, int]:
    """The answer to the prompt text itself: what the chat must answer when rendered so."""
    answer = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
    return answer.choices[0].text, answer.usage.prompt_tokens


# " number round": the tiny model continues it with " number", the prefill's own start, which a
# stream must keep (llama-server streams no echo of the prefill when sent continue_final_message).
@pytest.mark.parametrize("prefill", [PREFILL, " number round"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", [ENGINE_MODEL, "tiny"])
def test_continue_final_message_continues_the_assistant_message(client, model, stream, prefill):
    expected = completion_answer(client, model, NO_TURN + "<|im_start|>assistant\n" + prefill)
    assert expected[0] and not expected[0].startswith(prefill)
    messages = [USER, {"role": "assistant", "content": prefill}]
    assert chat_answer(client, model, messages, stream, **CONTINUE) == expected


@pytest.mark.parametrize("stream", [False, True])
def test_no_generation_prompt_after_an_assistant_message_closes_it_on_the_engine(client, stream):
    expected = completion_answer(client, ENGINE_MODEL, CLOSED_PREFILL)
    assert expected[0] != completion_answer(client, ENGINE_MODEL, OPEN_PREFILL)[0]    # the two renderings differ
    assert chat_answer(client, ENGINE_MODEL, CONTINUED, stream, add_generation_prompt=False) == expected


@pytest.mark.parametrize("model", [ENGINE_MODEL, "tiny"])
def test_no_generation_prompt_after_a_user_message_opens_no_turn(client, model):
    expected = completion_answer(client, model, NO_TURN)
    assert chat_answer(client, model, [USER], add_generation_prompt=False) == expected
    assert chat_answer(client, model, [USER])[1] > expected[1]       # the generation prompt's tokens


@pytest.mark.parametrize("model", [ENGINE_MODEL, "tiny"])
def test_a_vllm_tokenize_of_a_continued_chat_counts_the_prompt_generating_reads(client, model):
    url = str(client.base_url).removesuffix("/v1/")
    chat = httpx.post(url + "/tokenize", json={"model": model, "messages": CONTINUED, **CONTINUE}, timeout=60).json()
    text = httpx.post(url + "/tokenize", json={"model": model, "prompt": OPEN_PREFILL}, timeout=60).json()
    assert chat["tokens"] == text["tokens"] and chat["count"] == completion_answer(client, model, OPEN_PREFILL)[1]
    refused = httpx.post(url + "/tokenize", json={"model": model, "messages": [USER], **CONTINUE}, timeout=60)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "continue_final_message"


def test_llama_server_cannot_close_a_final_assistant_message(client):
    """llama-server continues a final assistant message whatever add_generation_prompt says."""
    assert_refused(lambda: chat_answer(client, "tiny", CONTINUED, add_generation_prompt=False), "add_generation_prompt")


@pytest.mark.parametrize("model", [ENGINE_MODEL, "tiny"])
@pytest.mark.parametrize("messages, extra, param", [
    (CONTINUED, {"continue_final_message": True}, "continue_final_message"),      # add_generation_prompt defaults true
    (CONTINUED, {"continue_final_message": True, "add_generation_prompt": True}, "continue_final_message"),
    ([USER], CONTINUE, "continue_final_message"),
    ([*CONTINUED, USER], CONTINUE, "continue_final_message"),
    ([USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}], CONTINUE,
     "continue_final_message"),
    (CONTINUED, {"continue_final_message": "yes", "add_generation_prompt": False}, "continue_final_message"),
    (CONTINUED, {"add_generation_prompt": 0}, "add_generation_prompt"),
])
def test_invalid_combinations_are_400s_naming_the_field(client, model, messages, extra, param):
    assert_refused(lambda: chat_answer(client, model, messages, **extra), param)


@pytest.mark.parametrize("messages, extra, param", [
    (CONTINUED, CONTINUE, "continue_final_message"),
    (CONTINUED, {"add_generation_prompt": False}, "add_generation_prompt"),
    ([USER], {"add_generation_prompt": False}, "add_generation_prompt"),
])
def test_ollama_cannot_honour_them(daemon_factory, ollama_emulator, llama_server, messages, extra, param):
    daemon = daemon_factory({"backends": [llama_backend(llama_server), ollama_backend(ollama_emulator)],
                             "cache": {"enabled": False}})
    ollama = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    assert_refused(lambda: chat_answer(ollama, "llama3.2", messages, **extra), param)
    assert chat_answer(ollama, "llama3.2", messages)           # without them: served


@pytest.fixture(scope="module")
def vllm():
    scripted = ScriptedVLLM("0.11.0")
    yield scripted
    scripted.close()


@pytest.mark.parametrize("extra", [CONTINUE, {"add_generation_prompt": False}])
def test_a_vllm_backend_gets_them_as_sent(vllm, extra):
    vllm.client.chat.completions.create(model="m", messages=CONTINUED, max_tokens=5, extra_body=extra)
    sent = vllm.server.bodies[-1]
    assert {k: sent.get(k) for k in extra} == extra and sent["messages"][-1]["content"] == PREFILL
