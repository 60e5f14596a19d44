"""The OpenAI Responses API over the in-process engine (the tiny model), driven by the official
openai SDK: log probabilities asked with `top_logprobs` / `include`, whole and streamed."""
import math

import openai
import pytest

from tests.daemon_rig import tiny_engine_daemon

MODEL = "tiny-engine"
LOGPROBS = ["message.output_text.logprobs"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with tiny_engine_daemon(tmp_path_factory.mktemp("engine-models"), MODEL) as daemon:
        yield openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)


def test_logprobs_whole_and_streamed(client):
    args = dict(model=MODEL, input="Say something.", max_output_tokens=5, temperature=0, top_logprobs=2,
                include=LOGPROBS)
    whole = client.responses.create(**args)
    [part] = whole.output[0].content
    assert whole.top_logprobs == 2 and len(part.logprobs) == 5
    assert "".join(p.token for p in part.logprobs) == part.text
    assert all(p.logprob <= 0 and len(p.top_logprobs) == 2 for p in part.logprobs)
    assert all(math.isclose(p.top_logprobs[0].logprob, p.logprob, abs_tol=1e-4) for p in part.logprobs)   # greedy

    events = list(client.responses.create(**args, stream=True))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert [p.token for e in deltas for p in e.logprobs] == [p.token for p in part.logprobs]
    [done] = [e for e in events if e.type == "response.output_text.done"]
    final = events[-1].response.output[0].content[0]
    assert [p.token for p in done.logprobs] == [p.token for p in final.logprobs] == [p.token for p in part.logprobs]

    plain = client.responses.create(model=MODEL, input="Say something.", max_output_tokens=5)
    assert plain.output[0].content[0].logprobs == []


def test_top_logprobs_out_of_range_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.create(model=MODEL, input="x", top_logprobs=21)
    assert error.value.body["param"] == "top_logprobs"


def test_truncation_auto_drops_the_oldest_turns_until_the_conversation_fits(client):
    """OpenAI's truncation "auto": a conversation over the context loses items from its start;
    "disabled" (the default) is a 400. The tiny model's context is a few hundred tokens."""
    turns = []
    for i in range(8):
        turns += [{"role": "user", "content": f"turn {i}: " + "word " * 60},
                  {"role": "assistant", "content": "noted " * 20}]
    turns.append({"role": "user", "content": "And now?"})
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input=turns, max_output_tokens=3, instructions="Be brief.")
    assert info.value.body["code"] == "context_length_exceeded"
    answer = client.responses.create(model=MODEL, input=turns, max_output_tokens=3, instructions="Be brief.",
                                     truncation="auto")
    assert answer.truncation == "auto" and answer.usage.output_tokens == 3 and answer.output_text
    assert answer.usage.input_tokens < 300
