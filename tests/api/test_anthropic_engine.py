"""The Anthropic Messages API over the in-process engine (the tiny model): whole and streamed
answers, and count_tokens from the engine's own chat template and tokenizer."""
import anthropic
import pytest

from tests.daemon_rig import tiny_engine_daemon

MODEL = "tiny-engine"
HI = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with tiny_engine_daemon(tmp_path_factory.mktemp("engine-models"), MODEL) as daemon:
        yield anthropic.Anthropic(base_url=daemon.url, api_key="none", max_retries=0)


def test_whole_and_streamed_answers(client):
    whole = client.messages.create(model=MODEL, max_tokens=6, messages=HI, extra_body={"temperature": 0})
    assert whole.stop_reason == "max_tokens" and whole.usage.output_tokens == 6 and whole.content[0].text
    with client.messages.stream(model=MODEL, max_tokens=6, messages=HI, extra_body={"temperature": 0}) as stream:
        streamed = stream.get_final_message()
    assert streamed.content[0].text == whole.content[0].text and streamed.usage.output_tokens == 6


def test_count_tokens_is_exact_on_the_engine(client):
    args = dict(model=MODEL, messages=HI, system="You are terse.")
    raw = client.messages.with_raw_response.count_tokens(**args)
    assert raw.headers["x-velollm-token-count"] == "exact"
    served = client.messages.create(max_tokens=2, **args).usage
    assert raw.parse().input_tokens == served.input_tokens + served.cache_read_input_tokens > 0


def test_count_tokens_for_an_unknown_model_is_not_found(client):
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.count_tokens(model="no-such-model", messages=HI)
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.NotFoundError):              # as /v1/messages says for the same name
        client.messages.create(model="no-such-model", max_tokens=2, messages=HI)


def test_a_stop_sequence_is_named_whole_and_streamed(client):
    greedy = dict(model=MODEL, max_tokens=16, messages=HI, extra_body={"temperature": 0})
    full = client.messages.create(**greedy).content[0].text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    start = full.index(stop)                              # its first occurrence ends the text
    assert start > 0, full
    message = client.messages.create(**greedy, stop_sequences=["never-there", stop])
    assert (message.stop_reason, message.stop_sequence, message.content[0].text) == ("stop_sequence", stop,
                                                                                        full[:start])
    with client.messages.stream(**greedy, stop_sequences=[stop]) as stream:
        streamed = stream.get_final_message()
    assert (streamed.stop_reason, streamed.stop_sequence) == ("stop_sequence", stop)
    unmatched = client.messages.create(**{**greedy, "max_tokens": 2}, stop_sequences=["never-there"])
    assert (unmatched.stop_reason, unmatched.stop_sequence) == ("max_tokens", None)


def test_a_prompt_over_the_context_says_prompt_is_too_long(client):
    """Anthropic has no error code for it: clients (Claude Code's compaction, LiteLLM) know an
    overflow by the message Anthropic sends, 'prompt is too long: ...'."""
    long = [{"role": "user", "content": "Say something. " * 200}]
    for stream in (False, True):
        with pytest.raises(anthropic.BadRequestError) as caught:
            client.messages.create(model=MODEL, max_tokens=4, messages=long, stream=stream)
        error = caught.value.body["error"]
        assert error["type"] == "invalid_request_error" and error["message"].startswith("prompt is too long: ")
        assert "exceeds the context size (512 tokens)" in error["message"]
