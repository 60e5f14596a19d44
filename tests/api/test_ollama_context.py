"""Ollama's /api/generate `context` (the token ids of an earlier turn's prompt and answer, sent
back to continue it: ollama-python's generate(context=...), LangChain's older Ollama LLM) with
the official `ollama` client: the engine returns and takes it as Ollama does, Ollama backends
get it as sent, llama-server backends refuse it with the reason."""
import httpx
import ollama
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend
from tests.rig.llama import make_tiny_model, tiny_gguf_tool, token_id

MODEL = "tiny-engine"
GREEDY = {"num_predict": 6, "temperature": 0}


def turn(prompt: str) -> str:
    """A user turn as the tiny model's ChatML template renders it (no system message)."""
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def engine_daemon(tmp_path_factory):
    folder = tmp_path_factory.mktemp("context-models")
    make_tiny_model(folder / f"{MODEL}.gguf")
    with RunningDaemon({"backends": [engine_backend(folder, num_ctx=256)]}) as running:   # the cache on
        yield running


@pytest.fixture(scope="module")
def engine(engine_daemon):
    return ollama.Client(host=engine_daemon.url)


def test_a_second_turn_with_context_is_fed_what_ollama_feeds(engine):
    """Ollama writes the context out as text and renders the new turn after it: the second turn
    reads exactly the raw prompt of both turns joined so (the same prompt count, the same
    greedy answer with the same logprobs), and its context continues the first one's."""
    first = engine.generate(model=MODEL, prompt="hello", options=GREEDY)
    assert first.context and all(type(token_id) is int for token_id in first.context)
    second = engine.generate(model=MODEL, prompt="how are you", context=first.context, options=GREEDY, logprobs=True)
    joined = engine.generate(model=MODEL, prompt=turn("hello") + first.response + turn("how are you"), raw=True,
                             options=GREEDY, logprobs=True)
    assert second.response == joined.response and second.prompt_eval_count == joined.prompt_eval_count
    # (to within the rounding a prompt's prefix gets from the engine's prefix cache)
    assert [e.logprob for e in second.logprobs] == pytest.approx([e.logprob for e in joined.logprobs], abs=1e-3)
    assert second.context[:len(first.context)] == first.context and len(second.context) > len(first.context)
    assert joined.context is None                          # raw: Ollama sends none


def test_the_context_is_the_rendered_prompt_and_the_answer_tokenized(engine):
    """Ollama's context: the prompt it rendered and the answer's text, tokenized again: as many
    tokens as a raw prompt of that text reads (the tiny vocabulary adds no BOS), starting
    with the template's first control token."""
    first = engine.generate(model=MODEL, prompt="a cat", options=GREEDY)
    whole = engine.generate(model=MODEL, prompt=turn("a cat") + first.response, raw=True, options={"num_predict": 1})
    assert whole.prompt_eval_count == len(first.context) and first.context[0] == token_id("<|im_start|>")


def test_a_streamed_answer_carries_the_context_in_its_final_object_only(engine):
    whole = engine.generate(model=MODEL, prompt="stream me", options=GREEDY)
    parts = list(engine.generate(model=MODEL, prompt="stream me", options=GREEDY, stream=True))
    assert parts[-1].done and parts[-1].context == whole.context
    assert all(part.context is None for part in parts[:-1])
    follow = list(engine.generate(model=MODEL, prompt="and then?", context=whole.context, options=GREEDY,
                                  stream=True))
    assert follow[-1].context[:len(whole.context)] == whole.context


def test_a_cached_answer_carries_its_context_and_the_key_holds_the_context(engine_daemon):
    """The exact cache keys on the context (the same prompt after other turns is another
    request) and replays the context it stored, as JSON and as a stream."""
    def ask(context=None, stream=False):
        body = {"model": MODEL, "prompt": "cache me", "options": GREEDY, "stream": stream}
        if context is not None:
            body["context"] = context
        reply = httpx.post(f"{engine_daemon.url}/api/generate", json=body, timeout=60)
        assert reply.status_code == 200
        lines = [ollama.GenerateResponse.model_validate_json(line) for line in reply.text.splitlines()]
        return reply.headers["x-velollm-cache"], lines[-1]

    status, stored = ask()
    assert status == "miss" and stored.context
    status, again = ask()
    assert status == "hit-exact" and (again.response, again.context) == (stored.response, stored.context)
    status, replayed = ask(stream=True)
    assert status == "hit-exact" and replayed.context == stored.context
    status, other = ask(context=stored.context)
    assert status == "miss" and other.context[:len(stored.context)] == stored.context


def test_a_context_over_the_window_is_cut_as_a_long_prompt_is_or_refused_without_truncate(engine):
    first = engine.generate(model=MODEL, prompt="word " * 40, options=GREEDY)
    long_context = first.context * (300 // len(first.context) + 1)        # over num_ctx 256
    reply = engine.generate(model=MODEL, prompt="go on", context=long_context, options=GREEDY)
    assert reply.done and reply.prompt_eval_count <= 256 - GREEDY["num_predict"]
    assert reply.context[:len(long_context)] == long_context      # Ollama's: of the prompt before the cut
    with pytest.raises(ollama.ResponseError) as info:
        engine._request_raw("POST", "/api/generate", json={"model": MODEL, "prompt": "go on", "context": long_context,
                                                            "options": GREEDY, "truncate": False, "stream": False})
    assert info.value.status_code == 400


@pytest.mark.parametrize("context", ["1 2 3", {"a": 1}, [1, "2"], [1.5], [True], [-1], [10 ** 9]])
def test_a_context_that_is_not_the_models_token_ids_is_a_400_naming_it(engine, context):
    with pytest.raises(ollama.ResponseError) as info:
        engine._request_raw("POST", "/api/generate", json={"model": MODEL, "prompt": "hi", "context": context,
                                                            "stream": False})
    assert info.value.status_code == 400 and "context" in info.value.error
    assert engine.generate(model=MODEL, prompt="hi", options={"num_predict": 1}).done      # still serving


def test_the_last_id_of_the_vocabulary_is_taken_and_the_next_is_not(engine):
    num_vocab = len(tiny_gguf_tool().tiny_vocab()[0])
    assert engine.generate(model=MODEL, prompt="hi", context=[num_vocab - 1], options={"num_predict": 1}).done
    with pytest.raises(ollama.ResponseError) as info:
        engine.generate(model=MODEL, prompt="hi", context=[num_vocab], options={"num_predict": 1})
    assert info.value.status_code == 400 and "context" in info.value.error


def test_raw_mode_with_a_context_is_ollamas_400(engine):
    with pytest.raises(ollama.ResponseError) as info:
        engine.generate(model=MODEL, prompt="hi", raw=True, context=[1, 2])
    assert info.value.status_code == 400 and "raw mode does not support" in info.value.error
    assert engine.generate(model=MODEL, prompt="hi", raw=True, context=[], options={"num_predict": 1}).done


def test_llama_server_refuses_a_context_with_its_reason_and_ollama_gets_it_as_sent(daemon, ollama_emulator):
    client = ollama.Client(host=daemon.url)
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model="tiny", prompt="hello", context=[1, 2, 3], options={"num_predict": 2})
    assert info.value.status_code == 400 and "'context'" in info.value.error and "engine" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client._request_raw("POST", "/api/generate", json={"model": "tiny", "prompt": "hi", "context": "1 2"})
    assert info.value.status_code == 400 and "context" in info.value.error
    assert client.generate(model="tiny", prompt="hello", options={"num_predict": 2}).context is None
    reply = client.generate(model="llama3.2", prompt="hello", context=[7, 8, 9])
    assert ollama_emulator.last_request("/api/generate")["context"] == [7, 8, 9]
    assert reply.context and reply.context == list(range(1, len(reply.context) + 1))     # the emulator's own
