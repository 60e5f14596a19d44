"""/v1/completions `echo` with `logprobs` as lm-evaluation-harness's local-completions sends it
for loglikelihoods (MMLU, HellaSwag, ARC): the prompt's own logprobs from the engine, in
OpenAI's legacy shape (vLLM's answer), and vLLM's `prompt_logprobs`; llama-server computes no
prompt logprobs, so there both are a 400 naming the field. Real daemon, engine and llama-server,
the official openai client."""
from __future__ import annotations

import httpx
import openai
import pytest

from tests.daemon_rig import llama_and_engine_daemon
from tests.rig.llama import make_tiny_model

ENGINE = "tiny-engine"
LLAMA = "tiny"
CONTEXT, CONTINUATION = "the sun is over the", " sea and the sky"


@pytest.fixture(scope="module")
def daemon(llama_server, tmp_path_factory):
    models_dir = tmp_path_factory.mktemp("echo-models")
    make_tiny_model(models_dir / f"{ENGINE}.gguf")
    with llama_and_engine_daemon(llama_server, models_dir, LLAMA, max_running=4) as running:
        yield running


@pytest.fixture(scope="module")
def client(daemon):
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)


def lm_eval_request(client, prompt, **kwargs):
    """What lm-eval's local-completions posts for a loglikelihood (api_models / openai_completions)."""
    return client.completions.create(**{"model": ENGINE, "prompt": prompt, "temperature": 0, "max_tokens": 1,
                                        "logprobs": 1, "seed": 1234, "echo": True, **kwargs})


def tokens_of(daemon, text: str) -> list[int]:
    answer = httpx.post(daemon.url + "/tokenize", json={"model": ENGINE, "content": text, "add_special": True},
                        timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["tokens"]


def loglikelihood(choice, ctxlen: int) -> tuple[float, bool]:
    """lm-eval's parse_logprobs: the continuation's logprobs summed, and whether each was the top one."""
    token_logprobs = choice.logprobs.token_logprobs[ctxlen:-1]
    top_logprobs = choice.logprobs.top_logprobs[ctxlen:-1]
    is_greedy = all(logprob == max(top.values()) for logprob, top in zip(token_logprobs, top_logprobs))
    return sum(token_logprobs), is_greedy


def test_echo_with_logprobs_answers_the_shape_lm_eval_reads(client):
    answer = lm_eval_request(client, CONTEXT)
    choice, num_prompt = answer.choices[0], answer.usage.prompt_tokens
    plain = client.completions.create(model=ENGINE, prompt=CONTEXT, temperature=0, max_tokens=1, logprobs=1)
    assert choice.text == CONTEXT + plain.choices[0].text
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == num_prompt + 1
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(isinstance(lp, float) and lp <= 0 for lp in logprobs.token_logprobs[1:])
    assert all(len(top) == 1 for top in logprobs.top_logprobs[1:])
    assert logprobs.token_logprobs[-1] == pytest.approx(plain.choices[0].logprobs.token_logprobs[0], abs=1e-5)
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset == sorted(logprobs.text_offset)
    assert answer.usage.completion_tokens == 1 and answer.usage.prompt_tokens_details.cached_tokens == 0


def test_a_loglikelihood_is_the_same_for_the_text_and_its_token_ids(client, daemon):
    ctxlen = len(tokens_of(daemon, CONTEXT))
    ids = tokens_of(daemon, CONTEXT + CONTINUATION)
    by_text = lm_eval_request(client, CONTEXT + CONTINUATION).choices[0]
    by_ids = lm_eval_request(client, [ids]).choices[0]
    assert by_ids.text.startswith(by_text.text[:len(CONTEXT)])            # the ids' own text echoed
    assert by_ids.logprobs.tokens == by_text.logprobs.tokens
    text_ll, ids_ll = loglikelihood(by_text, ctxlen), loglikelihood(by_ids, ctxlen)
    assert text_ll[0] == pytest.approx(ids_ll[0], abs=1e-6) and text_ll[1] == ids_ll[1]
    assert text_ll[0] < 0 and len(by_text.logprobs.token_logprobs[ctxlen:-1]) == len(ids) - ctxlen


def test_max_tokens_0_echoes_the_prompt_alone_with_its_logprobs(client):
    answer = lm_eval_request(client, CONTEXT, max_tokens=0)
    choice = answer.choices[0]
    assert choice.text == CONTEXT and choice.finish_reason == "length"
    assert len(choice.logprobs.token_logprobs) == answer.usage.prompt_tokens and answer.usage.completion_tokens == 0
    with_one = lm_eval_request(client, CONTEXT).choices[0]
    assert choice.logprobs.token_logprobs == with_one.logprobs.token_logprobs[:-1]


def test_a_stream_echoes_the_prompt_and_its_logprobs_first(client):
    whole = lm_eval_request(client, CONTEXT, max_tokens=3).choices[0]
    chunks = [c.choices[0] for c in lm_eval_request(client, CONTEXT, max_tokens=3, stream=True) if c.choices]
    assert chunks[0].text.startswith(CONTEXT) and "".join(c.text for c in chunks) == whole.text
    streamed = [lp for c in chunks if c.logprobs for lp in c.logprobs.token_logprobs]
    assert streamed[0] is None and streamed[1:] == pytest.approx(whole.logprobs.token_logprobs[1:], abs=1e-6)
    offsets = [o for c in chunks if c.logprobs for o in c.logprobs.text_offset]
    assert offsets == whole.logprobs.text_offset


def test_vllms_prompt_logprobs_come_in_the_choice(client):
    answer = client.completions.create(model=ENGINE, prompt=CONTEXT, temperature=0, max_tokens=1,
                                       extra_body={"prompt_logprobs": 2})
    prompt_logprobs = answer.choices[0].model_extra["prompt_logprobs"]
    assert len(prompt_logprobs) == answer.usage.prompt_tokens and prompt_logprobs[0] is None
    echoed = lm_eval_request(client, CONTEXT).choices[0].logprobs
    for entry, token_logprob in zip(prompt_logprobs[1:], echoed.token_logprobs[1:]):
        first = next(iter(entry.values()))                        # the prompt's own token first
        assert first["logprob"] == pytest.approx(token_logprob, abs=1e-6) and first["rank"] >= 1
        assert 2 <= len(entry) <= 3 and all("decoded_token" in v for v in entry.values())
    assert answer.choices[0].logprobs is None and answer.choices[0].text


@pytest.mark.parametrize("kwargs, param", [
    ({"echo": True, "logprobs": 1}, "echo"),
    ({"echo": True, "prompt": [5, 6, 7]}, "echo"),
    ({"echo": True, "max_tokens": 0}, "echo"),
    ({"extra_body": {"prompt_logprobs": 1}}, "prompt_logprobs")])
def test_llama_server_computes_no_prompt_logprobs_so_they_are_a_400_naming_the_field(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(**{"model": LLAMA, "prompt": "the sun", "max_tokens": 2, **kwargs})
    assert info.value.body["param"] == param
    assert client.completions.create(model=LLAMA, prompt="the sun", max_tokens=2).choices[0].text is not None


@pytest.mark.parametrize("kwargs, param", [
    ({"extra_body": {"prompt_logprobs": 21}}, "prompt_logprobs"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": None, "extra_body": {"prompt_logprobs": 1}}, "prompt_logprobs")])
def test_bad_prompt_logprob_requests_are_400s_naming_the_field(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        if "messages" in kwargs:
            client.chat.completions.create(model=ENGINE, messages=[{"role": "user", "content": "hi"}],
                                           extra_body=kwargs["extra_body"])
        else:
            client.completions.create(**{"model": ENGINE, "prompt": "the sun", "max_tokens": 2, **kwargs})
    assert info.value.body["param"] == param
