"""lm-evaluation-harness against the daemon (docs/recipes/lm-eval.md): the payloads its
`local-completions` and `local-chat-completions` models post, built as lm-eval builds them,
and the answers parsed by line-for-line ports of its parsers, asserting what lm-eval would
record. lm-eval itself (torch, transformers) is not installed: its payloads are the contract.

Sources: EleutherAI/lm-evaluation-harness lm_eval/models/openai_completions.py
(LocalCompletionsAPI._create_payload, parse_logprobs, parse_generations;
LocalChatCompletion._create_payload, parse_generations), lm_eval/models/api_models.py
(TemplateAPI.create_message, batch_loglikelihood_requests, generate_until), lm_eval/api/model.py
(TemplateLM.loglikelihood, _encode_pair), lm_eval/models/utils.py (handle_stop_sequences),
lm_eval/utils.py (RemoteTokenizer: GET /tokenizer_info, its /tokenize and /detokenize bodies;
check_remote_tokenizer_support), at commit 4e7e0d47 (2026-08).

Loglikelihoods (echo + logprobs over the prompt) come from the engine; llama-server computes no
prompt logprobs, so there they are a 400 lm-eval reports; generate_until works on both."""
from __future__ import annotations

import json
from operator import itemgetter

import httpx
import jinja2
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend, llama_backend
from tests.rig.llama import make_tiny_model, tiny_gguf_tool

ENGINE = "tiny-engine"
LLAMA = "tiny"
SEED = 1234                      # TemplateAPI's default seed
MAX_LENGTH = 2048 - 1            # TemplateAPI: max_length - 1 ("we always have 1 token for generation")
# (context, continuation) pairs as a multiple-choice task (HellaSwag, ARC) sends them
PAIRS = [("the sun is over the", " sea and the sky"), ("the sun is over the", " time"),
         ("we can see", " the world "), ("", "the sun")]


@pytest.fixture(scope="module")
def engine_daemon(tmp_path_factory):
    """One model served, as a vLLM server serves one: lm-eval's tokenizer calls name none."""
    models_dir = tmp_path_factory.mktemp("lmeval-models")
    make_tiny_model(models_dir / f"{ENGINE}.gguf")
    table = {"backends": [engine_backend(models_dir, max_running=4, num_ctx=2048)], "cache": {"enabled": False}}
    with RunningDaemon(table) as running:
        yield running


@pytest.fixture(scope="module")
def llama_daemon(llama_server):
    table = {"backends": [llama_backend(llama_server, models=[LLAMA])], "cache": {"enabled": False}}
    with RunningDaemon(table) as running:
        yield running


@pytest.fixture(scope="module", params=[ENGINE, LLAMA])
def served(request):
    """(daemon, model) for each backend that generate_until runs on."""
    daemon = request.getfixturevalue("engine_daemon" if request.param == ENGINE else "llama_daemon")
    return daemon, request.param


class RemoteTokenizer:
    """lm-eval's `tokenizer_backend=remote` (lm_eval/utils.py RemoteTokenizer), line for line but
    the retries: its server is base_url without /v1/completions; it sends no model; it asks
    GET /tokenizer_info once when made (a failure stops lm-eval) and reads its tokens there."""

    def __init__(self, base_url: str):
        self.base_url = base_url.replace("/v1/completions", "").replace("/v1/chat/completions", "").rstrip("/")
        self._tokenizer_info = None
        self._validate_server()

    def _request(self, method: str, url: str, **kwargs) -> httpx.Response:
        response = httpx.request(method, url, timeout=60, **kwargs)
        response.raise_for_status()
        return response

    def _validate_server(self):
        self._request("GET", f"{self.base_url}/tokenizer_info")

    @property
    def tokenizer_info(self) -> dict:
        if self._tokenizer_info is None:
            self._tokenizer_info = self._request("GET", f"{self.base_url}/tokenizer_info").json()
        return self._tokenizer_info

    @property
    def eos_token(self) -> str | None:
        return self.tokenizer_info.get("eos_token")

    @property
    def bos_token(self) -> str | None:
        return self.tokenizer_info.get("bos_token")

    @property
    def pad_token(self) -> str | None:
        return self.tokenizer_info.get("pad_token")

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self.encode(self.eos_token)[0]

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self.encode(self.bos_token)[0]

    def encode(self, text: str) -> list[int]:
        reply = self._request("POST", f"{self.base_url}/tokenize", json={"prompt": text, "add_special_tokens": False})
        tokens = reply.json().get("tokens")
        assert isinstance(tokens, list), "Malformed response from /tokenize endpoint."
        return tokens

    def decode(self, tokens: list[int]) -> str:
        prompt = self._request("POST", f"{self.base_url}/detokenize", json={"tokens": tokens}).json().get("prompt")
        assert isinstance(prompt, str), "Malformed response from /detokenize endpoint."
        return prompt

    def batch_decode(self, tokens_list: list[list[int]]) -> list[str]:
        return [self.decode(tokens) for tokens in tokens_list]

    def apply_chat_template(self, chat_history: list, add_generation_prompt: bool = True, **kwargs) -> str:
        """Its template rendered in lm-eval's jinja environment (lm_eval/utils.py `env`)."""
        template_str = self.tokenizer_info.get("chat_template")
        if not template_str:
            raise ValueError("No chat template available from server")
        env = jinja2.Environment(loader=jinja2.BaseLoader, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        return env.from_string(template_str).render(messages=chat_history,
                                                    add_generation_prompt=add_generation_prompt, **kwargs)

    @property
    def prefix_token_id(self) -> int | None:
        """TemplateAPI.prefix_token_id for the remote backend."""
        return self.bos_token_id or self.eos_token_id


def remote_tokenizer(daemon) -> RemoteTokenizer:
    """The tokenizer of `local-completions` with base_url=<daemon>/v1/completions."""
    return RemoteTokenizer(daemon.url + "/v1/completions")


def check_remote_tokenizer_support(base_url: str) -> bool:
    """lm_eval/utils.py check_remote_tokenizer_support (tokenizer_backend="auto", the default of
    local-completions): /tokenizer_info with an eos_token, then /tokenize answering tokens."""
    server_base = base_url.replace("/v1/completions", "").replace("/v1/chat/completions", "").rstrip("/")
    info = httpx.get(f"{server_base}/tokenizer_info", timeout=60)
    if info.status_code >= 400 or not isinstance(info.json(), dict) or "eos_token" not in info.json():
        return False
    reply = httpx.post(f"{server_base}/tokenize", json={"prompt": "test", "add_special_tokens": False}, timeout=60)
    return reply.status_code < 400 and isinstance(reply.json().get("tokens"), list)


def encode_pair(tokenizer: RemoteTokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """TemplateLM.loglikelihood and _encode_pair: trailing spaces move to the continuation; the
    continuation's tokens are the whole text's after the context's; no context: the prefix
    token (BOS, else EOS) as the context, unless the continuation starts with it."""
    if context == "":
        continuation_enc = tokenizer.encode(continuation)
        if tokenizer.prefix_token_id != continuation_enc[0]:
            return [tokenizer.prefix_token_id], continuation_enc
        return continuation_enc[:1], continuation_enc[1:]
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole_enc = tokenizer.encode(context + continuation)
    context_enc = tokenizer.encode(context)
    return context_enc, whole_enc[len(context_enc):]


def batch_loglikelihood_requests(pairs: list[tuple[list[int], list[int]]]) -> tuple[list[list[int]], list[int]]:
    """TemplateAPI.batch_loglikelihood_requests: the inputs left-cut to max_length, their ctxlens."""
    inputs, ctxlens = [], []
    for context_enc, continuation_enc in pairs:
        inputs.append((context_enc + continuation_enc)[-MAX_LENGTH:])
        ctxlens.append(len(context_enc) - max(0, len(context_enc) + len(continuation_enc) - MAX_LENGTH))
    return inputs, ctxlens


def create_message(tokenizer: RemoteTokenizer, messages: list[list[int]], *, tokenized_requests: bool,
                   batch_size: int):
    """TemplateAPI.create_message: token ids as they are, or decoded; one text for a batch of 1."""
    if not tokenized_requests:
        if isinstance(messages[0][0], int):
            messages = tokenizer.batch_decode(messages)
        return messages[0] if batch_size <= 1 else messages
    return messages


def loglikelihood_payload(model: str, messages) -> dict:
    """LocalCompletionsAPI._create_payload(generate=False)."""
    return {"model": model, "prompt": messages, "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": SEED,
            "echo": True}


def handle_stop_sequences(until, eos):
    """lm_eval.models.utils.handle_stop_sequences: `until` as a list, the EOS string added."""
    if isinstance(until, str):
        until = [until]
    elif until is None:
        until = []
    if eos is not None and eos not in until:
        until.append(eos)
    return until


def generate_payload(model: str, messages, gen_kwargs: dict, eos: str | None) -> dict:
    """LocalCompletionsAPI._create_payload(generate=True); max_gen_toks defaults to 256."""
    gen_kwargs = dict(gen_kwargs)
    gen_kwargs.pop("do_sample", False)
    max_tokens = gen_kwargs.pop("max_tokens") if "max_tokens" in gen_kwargs else gen_kwargs.pop("max_gen_toks", 256)
    temperature = gen_kwargs.pop("temperature", 0)
    stop = handle_stop_sequences(gen_kwargs.pop("until", None), eos)
    return {"prompt": messages, "model": model, "max_tokens": max_tokens, "temperature": temperature,
            "stop": stop, "seed": SEED, **gen_kwargs}


def chat_payload(model: str, messages: list[dict], gen_kwargs: dict, eos: str | None) -> dict:
    """LocalChatCompletion._create_payload: at most 4 stop strings."""
    gen_kwargs = dict(gen_kwargs)
    gen_kwargs.pop("do_sample", False)
    max_tokens = gen_kwargs.pop("max_tokens") if "max_tokens" in gen_kwargs else gen_kwargs.pop("max_gen_toks", 256)
    temperature = gen_kwargs.pop("temperature", 0)
    stop = handle_stop_sequences(gen_kwargs.pop("until", None), eos)
    if not isinstance(stop, (list, tuple)):
        stop = [stop]
    return {"messages": messages, "model": model, "max_tokens": max_tokens, "temperature": temperature,
            "stop": stop[:4], "seed": SEED, **gen_kwargs}


def parse_logprobs(outputs, tokens=None, ctxlens=None) -> list[tuple[float, bool]]:
    """LocalCompletionsAPI.parse_logprobs, line for line."""
    res = []
    if not isinstance(outputs, list):
        outputs = [outputs]
    for out in outputs:
        for choice, ctxlen in zip(sorted(out["choices"], key=itemgetter("index")), ctxlens):
            assert ctxlen > 0, "Context length must be greater than 0"
            logprobs = sum(choice["logprobs"]["token_logprobs"][ctxlen:-1])
            tokens_logprobs = choice["logprobs"]["token_logprobs"][ctxlen:-1]
            top_logprobs = choice["logprobs"]["top_logprobs"][ctxlen:-1]
            is_greedy = True
            for tok, top in zip(tokens_logprobs, top_logprobs):
                if tok != max(top.values()):
                    is_greedy = False
                    break
            res.append((logprobs, is_greedy))
    return res


def parse_generations(outputs) -> list[str]:
    """LocalCompletionsAPI.parse_generations, line for line."""
    res = []
    if not isinstance(outputs, list):
        outputs = [outputs]
    for out in outputs:
        tmp = [None] * len(out["choices"])
        for choices in out["choices"]:
            tmp[choices["index"]] = choices["text"]
        res = res + tmp
    return res


def parse_chat_generations(outputs) -> list[str]:
    """LocalChatCompletion.parse_generations, line for line (its content-filter fallback aside)."""
    res = []
    if not isinstance(outputs, list):
        outputs = [outputs]
    for out in outputs:
        tmp = [None] * len(out["choices"])
        for choices in out["choices"]:
            tmp[choices["index"]] = choices["message"]["content"]
        res = res + tmp
    return res


def model_call(daemon, path: str, payload: dict) -> dict:
    """TemplateAPI.model_call: requests.post(base_url, json=payload), raise_for_status, .json();
    its header is `Authorization: Bearer $OPENAI_API_KEY` (local-completions' api_key)."""
    response = httpx.post(daemon.url + path, content=json.dumps(payload), timeout=300,
                          headers={"Content-Type": "application/json", "Authorization": "Bearer sk-eval"})
    assert response.status_code == 200, response.text
    return response.json()


def lm_eval_loglikelihoods(daemon, *, tokenized_requests: bool, batch_size: int) -> list[tuple[float, bool]]:
    """What lm-eval's loglikelihood() gives for PAIRS, the requests batched as it batches them."""
    tokenizer = remote_tokenizer(daemon)
    inputs, ctxlens = batch_loglikelihood_requests([encode_pair(tokenizer, c, x) for c, x in PAIRS])
    results = []
    for start in range(0, len(inputs), batch_size):
        messages = create_message(tokenizer, inputs[start:start + batch_size],
                                  tokenized_requests=tokenized_requests, batch_size=batch_size)
        outputs = model_call(daemon, "/v1/completions", loglikelihood_payload(ENGINE, messages))
        results += parse_logprobs(outputs, tokens=inputs, ctxlens=ctxlens[start:start + batch_size])
    return results


# -- loglikelihood (multiple choice): the engine ---------------------------------------------

@pytest.mark.parametrize("batch_size", [1, 3])
def test_loglikelihoods_of_token_ids_one_per_request(engine_daemon, batch_size):
    """tokenized_requests=True (the default): `prompt` is [[ids], ...], one a request of the batch."""
    results = lm_eval_loglikelihoods(engine_daemon, tokenized_requests=True, batch_size=batch_size)
    assert len(results) == len(PAIRS)
    assert all(isinstance(ll, float) and ll < 0 and isinstance(greedy, bool) for ll, greedy in results)
    one_by_one = lm_eval_loglikelihoods(engine_daemon, tokenized_requests=True, batch_size=1)
    # batched with others, a prompt's float32 sums run in another order: the same to 1e-5
    assert [ll for ll, _ in results] == pytest.approx([ll for ll, _ in one_by_one], rel=1e-5)
    assert [greedy for _, greedy in results] == [greedy for _, greedy in one_by_one]
    assert results[0][0] != pytest.approx(results[1][0])             # the choices are told apart


def test_a_loglikelihood_sums_the_continuations_tokens_and_no_other(engine_daemon):
    """The slice lm-eval sums ([ctxlen:-1]) holds the continuation's tokens: the sum of each
    one's logprob after its own context (the last of an echoed prompt), token by token."""
    tokenizer = remote_tokenizer(engine_daemon)
    context_enc, continuation_enc = encode_pair(tokenizer, *PAIRS[0])
    (total, _), = lm_eval_loglikelihoods(engine_daemon, tokenized_requests=True, batch_size=1)[:1]
    stepwise = sum(last_token_logprob(engine_daemon, context_enc + continuation_enc[:n + 1])
                   for n in range(len(continuation_enc)))
    assert len(continuation_enc) > 1 and total == pytest.approx(stepwise, abs=1e-4)


def test_the_models_own_greedy_continuation_is_greedy(engine_daemon):
    context = PAIRS[0][0]
    greedy = greedy_text(engine_daemon, ENGINE, context, 4)
    tokenizer = remote_tokenizer(engine_daemon)
    inputs, ctxlens = batch_loglikelihood_requests([encode_pair(tokenizer, context, greedy)])
    outputs = model_call(engine_daemon, "/v1/completions", loglikelihood_payload(ENGINE, inputs))
    (total, is_greedy), = parse_logprobs(outputs, tokens=inputs, ctxlens=ctxlens)
    assert is_greedy is True and total < 0


def last_token_logprob(daemon, ids: list[int]) -> float:
    """The last token's logprob given the ones before it (the prompt echoed, nothing generated)."""
    answer = model_call(daemon, "/v1/completions", {"model": ENGINE, "prompt": [ids], "max_tokens": 0,
                                                    "logprobs": 0, "echo": True, "temperature": 0})
    return answer["choices"][0]["logprobs"]["token_logprobs"][-1]


@pytest.mark.parametrize("batch_size", [1, 2])
def test_loglikelihoods_of_decoded_text_equal_those_of_the_ids(engine_daemon, batch_size):
    """tokenized_requests=False: the ids decoded (/detokenize) and sent as text, a string for a
    batch of 1, a list of strings for more. This model adds no BOS, so the text reads back as
    the same ids and lm-eval's slice lands on the same tokens."""
    by_text = lm_eval_loglikelihoods(engine_daemon, tokenized_requests=False, batch_size=batch_size)
    by_ids = lm_eval_loglikelihoods(engine_daemon, tokenized_requests=True, batch_size=1)
    assert [greedy for _, greedy in by_text] == [greedy for _, greedy in by_ids]
    assert [ll for ll, _ in by_text] == pytest.approx([ll for ll, _ in by_ids], rel=1e-5)


def test_loglikelihood_on_llama_server_is_a_400_lm_eval_reports(llama_daemon):
    """llama-server computes no prompt logprobs: lm-eval's request is refused naming `echo`
    (lm-eval logs the message and retries, then stops), never answered with wrong numbers."""
    response = httpx.post(llama_daemon.url + "/v1/completions", timeout=60,
                          json=loglikelihood_payload(LLAMA, [[5, 6, 7, 8]]))
    assert response.status_code == 400 and response.json()["error"]["param"] == "echo"


# -- generate_until (GSM8K, ...): the engine and llama-server ---------------------------------

def greedy_text(daemon, model: str, prompt, max_tokens: int) -> str:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "seed": SEED}
    return model_call(daemon, "/v1/completions", body)["choices"][0]["text"]


def an_until_inside(text: str) -> str:
    """A stop string the greedy answer holds past its start: a word of it, with its space."""
    words = [w for w in text.split(" ")[2:] if w.strip()]
    assert words, f"no word to stop at in {text!r}"
    return " " + words[0]


@pytest.mark.parametrize("tokenized_requests", [True, False])
def test_generate_until_answers_the_text_cut_at_its_until(served, tokenized_requests):
    daemon, model = served
    tokenizer = remote_tokenizer(daemon)
    context = "Question: the sun is over the sea?\nAnswer:"
    whole = greedy_text(daemon, model, context, 24)
    until = an_until_inside(whole)
    gen_kwargs = {"until": [until, "Question:"], "do_sample": False, "temperature": 0.0, "max_gen_toks": 24}
    prompt = [tokenizer.encode(context)] if tokenized_requests else context
    payload = generate_payload(model, prompt, gen_kwargs, eos=tokenizer.eos_token)     # TemplateAPI.eos_string
    assert payload["stop"] == [until, "Question:", tiny_gguf_tool().EOS] and payload["max_tokens"] == 24
    generated, = parse_generations(model_call(daemon, "/v1/completions", payload))
    assert generated == whole[:whole.index(until)]


def test_generate_until_in_a_batch_answers_each_prompt_in_its_place(served):
    """batch_size > 1: a list of prompts in one request; parse_generations puts each choice at
    its index."""
    daemon, model = served
    contexts = ["Question: one?\nAnswer:", "Question: two and three?\nAnswer:"]
    alone = [greedy_text(daemon, model, c, 6) for c in contexts]
    payload = generate_payload(model, contexts, {"until": ["\n\n"], "max_gen_toks": 6}, eos=None)
    generated = parse_generations(model_call(daemon, "/v1/completions", payload))
    assert generated == [text.split("\n\n")[0] for text in alone]


def test_local_chat_completions_generates_from_its_json_chat(served):
    """--apply_chat_template with local-chat-completions: the chat as lm-eval's JsonChatStr
    carries it (each message with "type": "text"), at most 4 stop strings."""
    daemon, model = served
    chat = [{"role": "system", "content": "Answer briefly.", "type": "text"},
            {"role": "user", "content": "Question: the sun is over the sea?", "type": "text"}]
    payload = chat_payload(model, chat, {"until": ["\n\n", "Question:", "A", "B", "C"], "max_gen_toks": 8},
                           eos=tiny_gguf_tool().EOS)
    assert len(payload["stop"]) == 4
    generated, = parse_chat_generations(model_call(daemon, "/v1/chat/completions", payload))
    assert isinstance(generated, str)
    assert not any(stop in generated for stop in payload["stop"])
