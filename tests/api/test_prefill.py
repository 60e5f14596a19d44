"""A trailing assistant message is a prefill the answer continues. llama-server answers it
with the prefill again in front; the answer is the continuation only, whole and streamed, as
vLLM (continue_final_message), the engine and Anthropic's Messages API give it. Real
llama-server behind a real daemon, the official openai and anthropic SDKs."""
import anthropic
import openai
import pytest

PREFILL = "Sure, here"
TURNS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": PREFILL}]


def test_the_answer_to_a_prefill_is_its_continuation(daemon):
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    whole = client.chat.completions.create(model="tiny", messages=TURNS, max_tokens=4, temperature=0)
    text = whole.choices[0].message.content
    assert text and not text.startswith(PREFILL) and whole.usage.completion_tokens == 4
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny", messages=TURNS, max_tokens=4, temperature=0, stream=True) if c.choices)
    assert streamed == text
    plain = client.chat.completions.create(model="tiny", messages=TURNS[:1], max_tokens=4, temperature=0)
    assert plain.choices[0].message.content                       # no prefill: nothing taken off


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_prefill_answers_only_the_continuation(daemon, stream):
    client = anthropic.Anthropic(base_url=daemon.url, api_key="x", max_retries=0)
    kwargs = dict(model="tiny", max_tokens=4, messages=TURNS, extra_body={"temperature": 0})
    if stream:
        with client.messages.stream(**kwargs) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    assert not message.content[0].text.startswith(PREFILL)
