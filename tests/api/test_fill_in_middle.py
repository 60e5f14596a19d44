"""Fill in the middle (code completion: Continue, llama.vscode, Tabby, Twinny) through the daemon:
a completion with a `suffix` on the real llama-server (its /infill) and on the engine, both on
the tiny model with Qwen2.5-Coder's FIM tokens (`--vocab spm-fim`), driven by the official
openai and ollama clients. The engine's FIM prompt equals, token for token, the prompt
llama-server's /infill builds for the same prefix, suffix and `input_extra` (the other files)."""
from __future__ import annotations

import json
import urllib.request
from functools import partial
from types import SimpleNamespace

import ollama
import openai
import pytest

from tests.daemon_rig import engine_backend, llama_and_engine_daemon, llama_backend, ollama_backend
from tests.engine.test_tokenizer import gguf_metadata
from tests.rig.llama import LlamaServer, make_tiny_model, tiny_gguf_tool
from velollmd.backends.engine import _fill_in_middle, fim_pieces_fitted, with_repo_context
from velollmd.engine.tokenizer import Tokenizer

LLAMA = "tiny-fim"            # llama-server's alias (the daemon's llama backend serves "tiny*")
ENGINE = "fim-engine"
PREFIX = "def the(a, b):\n    "
SUFFIX = "\n    return a\n"
CASES = [(PREFIX, SUFFIX),
         ("x = 1 + ", "  # the end"),
         ("literal <|fim_middle|> in the code: ", " <|fim_prefix|>!")]   # FIM tags as plain text
EXTRAS = [{"filename": "util.py", "text": "def helper(x):\n    return x * 2\n"},
          {"text": "CONSTANT = 42\n"}]                                 # no filename: llama.cpp's "tmp"


@pytest.fixture(scope="module")
def fim_model(tmp_path_factory):
    models_dir = tmp_path_factory.mktemp("fim-models")
    return tiny_gguf_tool().build_tiny_gguf(models_dir / f"{ENGINE}.gguf", vocab="spm-fim")


@pytest.fixture(scope="module")
def fim_server(llama_binary, fim_model):
    with LlamaServer(fim_model, binary=llama_binary, parallel=2, ctx_size=2048, alias=LLAMA) as server:
        yield server


@pytest.fixture(scope="module")
def daemon(fim_server, fim_model):
    with llama_and_engine_daemon(fim_server, fim_model.parent, LLAMA, max_running=2) as running:
        yield running


@pytest.fixture(scope="module")
def client(daemon):
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)


def post(server: LlamaServer, route: str, body: dict) -> dict:
    request = urllib.request.Request(server.url + route, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.load(resp)


@pytest.mark.parametrize("prefix, suffix", CASES)
def test_the_engines_fim_prompt_is_llama_servers_token_for_token(fim_server, fim_model, client, prefix, suffix):
    """/infill tells its prompt as text (FIM tokens rendered) and its length; the text re-read
    with special tokens parsed gives llama-server's own ids where the code holds no FIM tag."""
    tokenizer = Tokenizer.from_gguf(gguf_metadata(fim_model))
    ours = tokenizer.fill_in_middle(tokenizer.encode(prefix, add_special=False, parse_special=False),
                                    tokenizer.encode(suffix, add_special=False, parse_special=False))
    infill = post(fim_server, "/infill", {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 1})
    assert tokenizer.decode(ours) == infill["prompt"]
    assert len(ours) == infill["tokens_evaluated"]
    if "<|fim" not in prefix + suffix:
        assert ours == post(fim_server, "/tokenize", {"content": infill["prompt"], "add_special": False,
                                                      "parse_special": True})["tokens"]
    answer = client.completions.create(model=ENGINE, prompt=prefix, suffix=suffix, max_tokens=2, temperature=0)
    assert answer.usage.prompt_tokens == len(ours)


@pytest.mark.parametrize("model", [LLAMA, ENGINE])
def test_a_completion_with_a_suffix_fills_in_the_middle(client, model):
    plain = client.completions.create(model=model, prompt=PREFIX, max_tokens=4, temperature=0)
    fim = client.completions.create(model=model, prompt=PREFIX, suffix=SUFFIX, max_tokens=4, temperature=0)
    assert fim.object == "text_completion" and fim.id.startswith("cmpl-")
    assert fim.choices[0].text and fim.choices[0].finish_reason == "length"
    assert fim.usage.completion_tokens == 4
    suffix_alone = client.completions.create(model=model, prompt=SUFFIX, max_tokens=1)
    # the prefix, the suffix and three FIM tokens (prefix, suffix, middle) were read (no BOS in this vocab)
    assert fim.usage.prompt_tokens == plain.usage.prompt_tokens + suffix_alone.usage.prompt_tokens + 3


@pytest.mark.parametrize("model", [LLAMA, ENGINE])
def test_a_streamed_completion_with_a_suffix_matches_the_whole_answer(client, model):
    whole = client.completions.create(model=model, prompt=PREFIX, suffix=SUFFIX, max_tokens=5, temperature=0)
    chunks = list(client.completions.create(model=model, prompt=PREFIX, suffix=SUFFIX, max_tokens=5,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1 and usage[0].completion_tokens == 5
    assert usage[0].prompt_tokens == whole.usage.prompt_tokens


@pytest.mark.parametrize("model", [LLAMA, ENGINE])
def test_ollamas_generate_with_a_suffix_fills_in_the_middle(daemon, client, model):
    reply = ollama.Client(host=daemon.url).generate(model=model, prompt=PREFIX, suffix=SUFFIX,
                                                    options={"num_predict": 3, "temperature": 0})
    fim = client.completions.create(model=model, prompt=PREFIX, suffix=SUFFIX, max_tokens=3, temperature=0)
    assert reply.done and reply.eval_count == 3
    assert reply.prompt_eval_count == fim.usage.prompt_tokens
    assert reply.response == fim.choices[0].text


@pytest.mark.parametrize("model", [LLAMA, ENGINE])
def test_a_suffix_of_the_wrong_type_is_a_400_naming_it(client, model):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt=PREFIX, extra_body={"suffix": ["not", "text"]}, max_tokens=2)
    assert info.value.body["param"] == "suffix"
    assert client.completions.create(model=model, prompt=PREFIX, suffix=SUFFIX, max_tokens=2).choices[0].text


def test_a_suffix_reaches_ollama_with_its_template_applied(daemon_factory, ollama_emulator):
    """Ollama fills in the middle with the model's own template, which `raw` skips (a raw prompt
    with a suffix is a plain completion there): an OpenAI completion with a suffix goes to
    /api/generate with the suffix and without raw; an Ollama client's request as it was sent."""
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False}})
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    assert client.completions.create(model="llama3.2", prompt=PREFIX, suffix=SUFFIX, max_tokens=2).choices[0].text
    sent = ollama_emulator.last_request("/api/generate")
    assert sent["prompt"] == PREFIX and sent["suffix"] == SUFFIX and not sent.get("raw")
    plain = client.completions.create(model="llama3.2", prompt=PREFIX, max_tokens=2)
    assert plain.choices[0].text and ollama_emulator.last_request("/api/generate")["raw"] is True
    ollama.Client(host=daemon.url).generate(model="llama3.2", prompt=PREFIX, suffix=SUFFIX, options={"num_predict": 2})
    assert ollama_emulator.last_request("/api/generate")["suffix"] == SUFFIX


def test_a_model_without_fim_tokens_refuses_a_suffix_streamed_or_not(daemon_factory, llama_server, tmp_path):
    """llama-server's /infill answers 501 for a model without FIM tokens, the engine has none to
    build the prompt from: both a 400 naming `suffix`, streamed or not, and the daemon serves on."""
    make_tiny_model(tmp_path / "plain-engine.gguf")
    daemon = daemon_factory({"backends": [llama_backend(llama_server), engine_backend(tmp_path)],
                             "cache": {"enabled": False}})
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    for model in ("tiny", "plain-engine"):
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as info:
                answer = client.completions.create(model=model, prompt=PREFIX, suffix=SUFFIX, max_tokens=2,
                                                   stream=stream)
                list(answer) if stream else None
            assert info.value.body["param"] == "suffix" and "does not support insert" in info.value.body["message"]
        assert client.completions.create(model=model, prompt=PREFIX, max_tokens=2).usage.completion_tokens == 2


@pytest.mark.parametrize("model", [LLAMA, ENGINE])
@pytest.mark.parametrize("tag", ["<|fim_pad|>", "<|file_sep|>"])
def test_the_fim_pad_and_file_separator_end_the_middle(client, model, tag):
    """A FIM model ends its middle with its pad or file separator token (llama.cpp counts them as
    end of generation): the answer stops there, the token not in the text."""
    tokens, _, _ = tiny_gguf_tool().tiny_vocab(fim=True)
    answer = client.completions.create(model=model, prompt=PREFIX, suffix=SUFFIX, max_tokens=6, temperature=0,
                                       logit_bias={str(tokens.index(tag)): 2000})
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].text == ""
    assert answer.usage.completion_tokens == 1     # the end token is counted, as llama-server counts it


def test_fim_pieces_are_cut_around_the_gap():
    prefix, suffix = list(range(100)), list(range(200, 300))
    assert fim_pieces_fitted(prefix, suffix, 40) == (prefix[-30:], suffix[:10])      # suffix: a quarter
    assert fim_pieces_fitted(prefix[:5], suffix, 40) == (prefix[:5], suffix[:35])    # or what is left
    assert fim_pieces_fitted(prefix[:5], suffix[:5], 40) == (prefix[:5], suffix[:5])
    assert fim_pieces_fitted(prefix, suffix, -3) == ([], [])


def test_an_over_long_fim_prompt_keeps_its_fim_tokens_and_cuts_around_the_gap(fim_model):
    """The engine's FIM prompt in `limit` tokens (Ollama's routes truncate by default): the
    prefix loses its front, the suffix its end, as llama-server's /infill cuts them. The whole
    prompt's front cut, as a plain prompt is cut, would keep num_keep tokens of the file's top
    and, with a long suffix, drop the FIM suffix token and all the code before the cursor."""
    tokenizer = Tokenizer.from_gguf(gguf_metadata(fim_model))
    model = SimpleNamespace(tokenizer=tokenizer, config=SimpleNamespace(n_vocab=tokenizer.vocab_size))
    prefix = "".join(f"x{i} = {i}\n" for i in range(200)) + PREFIX
    suffix = SUFFIX + "".join(f"y{i} = {i}\n" for i in range(200))
    prompt = _fill_in_middle(model, prefix, {"suffix": suffix}, limit=96)
    encode = partial(tokenizer.encode, add_special=False, parse_special=False)
    pre, suf, mid = (tokenizer.fim_ids[name] for name in ("fim_pre", "fim_suf", "fim_mid"))
    assert len(prompt) == 96 and prompt[0] == pre and prompt[-1] == mid and prompt.count(suf) == 1
    cut = prompt.index(suf)
    assert prompt[1:cut] == encode(prefix)[-(cut - 1):]                  # the code right before the gap
    assert prompt[cut + 1:-1] == encode(suffix)[:len(prompt) - cut - 2]  # and right after it
    assert len(prompt) - cut - 2 == (96 - 3) // 4                        # the suffix's quarter


def test_ollamas_generate_with_an_over_long_fim_prompt_is_cut_to_fit(daemon, client, fim_model):
    tokenizer = Tokenizer.from_gguf(gguf_metadata(fim_model))
    long_prefix = "".join(f"x{i} = {i}\n" for i in range(200)) + PREFIX
    reply = ollama.Client(host=daemon.url).generate(model=ENGINE, prompt=long_prefix, suffix=SUFFIX,
                                                    options={"num_predict": 3, "temperature": 0, "num_ctx": 96})
    suffix_ids = tokenizer.encode(SUFFIX, add_special=False, parse_special=False)
    kept = reply.prompt_eval_count - len(suffix_ids) - 3                  # the FIM tokens, no BOS here
    assert reply.done and reply.prompt_eval_count <= 96
    prefix_tail = tokenizer.encode(long_prefix, add_special=False, parse_special=False)[-kept:]
    same = client.completions.create(model=ENGINE, prompt=prefix_tail, suffix=SUFFIX, max_tokens=3, temperature=0)
    assert same.usage.prompt_tokens == reply.prompt_eval_count
    assert same.choices[0].text == reply.response


@pytest.fixture(scope="module")
def roomy_server(llama_binary, fim_model):
    """llama-server with room for /infill's repo-level context: it gives `input_extra` what its
    slot's context leaves over its batch (n_ctx - n_batch - 2 * n_predict), none in fim_server."""
    with LlamaServer(fim_model, binary=llama_binary, parallel=1, ctx_size=2048, alias=LLAMA,
                     extra_args=["-b", "512"]) as server:
        yield server


def fim_tokenizer(fim_model) -> Tokenizer:
    return Tokenizer.from_gguf(gguf_metadata(fim_model))


def engine_prompt(fim_model, prefix: str, body: dict, **limits) -> list[int]:
    tokenizer = fim_tokenizer(fim_model)
    model = SimpleNamespace(tokenizer=tokenizer, config=SimpleNamespace(n_vocab=tokenizer.vocab_size))
    return _fill_in_middle(model, prefix, body, **limits)


@pytest.mark.parametrize("prefix, suffix", CASES[:2])
def test_input_extra_is_rendered_as_llama_servers_repo_level_context(roomy_server, fim_model, prefix, suffix):
    """/infill's `input_extra` (the other files an editor sends: llama.vim, llama.vscode) before
    the FIM prompt, with the file separator, each file's name and the edited file's separator."""
    tokenizer = fim_tokenizer(fim_model)
    ours = engine_prompt(fim_model, prefix, {"suffix": suffix, "input_extra": EXTRAS})
    infill = post(roomy_server, "/infill", {"input_prefix": prefix, "input_suffix": suffix,
                                            "input_extra": EXTRAS, "n_predict": 1})
    assert tokenizer.decode(ours) == infill["prompt"]
    assert infill["prompt"].startswith("<|file_sep|>util.py\ndef helper(x):")
    assert "<|file_sep|>tmp\nCONSTANT = 42\n<|file_sep|>filename\n<|fim_prefix|>" in infill["prompt"]
    assert len(ours) == infill["tokens_evaluated"]
    assert ours == post(roomy_server, "/tokenize", {"content": infill["prompt"], "add_special": False,
                                                    "parse_special": True})["tokens"]


def test_input_extra_on_a_completion_reaches_both_backends_alike(daemon_factory, roomy_server, fim_model):
    """`input_extra` on /v1/completions with a suffix: llama-server's /infill reads it, the engine
    renders it the same way; both read the same number of prompt tokens and fill in the middle."""
    daemon = daemon_factory({"backends": [llama_backend(roomy_server, models=[LLAMA]),
                                          engine_backend(fim_model.parent)], "cache": {"enabled": False}})
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    usage = {}
    for model in (LLAMA, ENGINE):
        bare = client.completions.create(model=model, prompt=PREFIX, suffix=SUFFIX, max_tokens=2, temperature=0)
        fim = client.completions.create(model=model, prompt=PREFIX, suffix=SUFFIX, max_tokens=2, temperature=0,
                                        extra_body={"input_extra": EXTRAS})
        assert fim.choices[0].text and fim.usage.completion_tokens == 2
        usage[model] = (bare.usage.prompt_tokens, fim.usage.prompt_tokens)
    assert usage[ENGINE][1] == usage[LLAMA][1] == len(engine_prompt(fim_model, PREFIX, {"suffix": SUFFIX,
                                                                                        "input_extra": EXTRAS}))
    assert usage[ENGINE][1] > usage[ENGINE][0]


@pytest.mark.parametrize("model", [LLAMA, ENGINE])
@pytest.mark.parametrize("extra", ["not a list", [{"filename": "a.py"}], [{"text": 7}],
                                   [{"text": "x", "filename": 3}], ["text"]])
def test_an_ill_formed_input_extra_is_a_400_naming_it(client, model, extra):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt=PREFIX, suffix=SUFFIX, max_tokens=2,
                                  extra_body={"input_extra": extra})
    assert info.value.body["param"] == "input_extra" and '"text": string' in info.value.body["message"]
    assert client.completions.create(model=model, prompt=PREFIX, suffix=SUFFIX, max_tokens=2).choices[0].text


def test_the_repo_level_context_keeps_its_end_when_cut(fim_model):
    """Over the room left, the front of the repo-level context goes (llama-server keeps its
    tail): the latest files and the edited file's separator stay next to the FIM prompt."""
    tokenizer = fim_tokenizer(fim_model)
    fim_ids = tokenizer.fill_in_middle([5, 6], [7])
    whole = tokenizer.repo_context(EXTRAS)
    assert with_repo_context(tokenizer, fim_ids, EXTRAS, None) == whole + fim_ids
    assert with_repo_context(tokenizer, fim_ids, EXTRAS, len(fim_ids) + 9) == whole[-9:] + fim_ids
    assert with_repo_context(tokenizer, fim_ids, EXTRAS, 2) == fim_ids
    assert with_repo_context(tokenizer, fim_ids, [], 2) == with_repo_context(tokenizer, fim_ids, None, 99) == fim_ids
    bare = engine_prompt(fim_model, PREFIX, {"suffix": SUFFIX})
    prompt = engine_prompt(fim_model, PREFIX, {"suffix": SUFFIX, "input_extra": EXTRAS}, extras_limit=len(bare) + 9)
    assert prompt == whole[-9:] + bare             # the FIM prompt whole, after the context's last 9 tokens


def test_a_model_without_a_file_separator_gets_llama_cpps_snippet_lines(fim_model):
    """llama.cpp's rule for a FIM model without FIM_SEP (CodeLlama, ...): each file's text
    after a "--- snippet ---" line, no names, no separator for the edited file."""
    tokenizer = fim_tokenizer(fim_model)
    tokenizer.fim_ids = {**tokenizer.fim_ids, "fim_sep": None}
    encode = partial(tokenizer.encode, add_special=False, parse_special=False)
    snippet = encode("\n\n--- snippet ---\n\n")
    assert tokenizer.repo_context(EXTRAS) == snippet + encode(EXTRAS[0]["text"]) + snippet + encode(EXTRAS[1]["text"])


@pytest.mark.parametrize("model", [LLAMA, ENGINE])
@pytest.mark.parametrize("suffix", [None, SUFFIX])
def test_an_answer_ended_by_its_first_token_counts_that_token(client, model, suffix):
    """llama-server counts the end-of-generation token that ends an answer (completion_tokens 1,
    no text), a plain completion or a fill in the middle alike; the engine counts it too."""
    tokens, _, _ = tiny_gguf_tool().tiny_vocab(fim=True)
    eos = tokens.index(tiny_gguf_tool().EOS)
    answer = client.completions.create(model=model, prompt=PREFIX, max_tokens=4, temperature=0,
                                       logit_bias={str(eos): 2000}, **({"suffix": suffix} if suffix else {}))
    assert answer.choices[0].text == "" and answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens == 1
    if suffix is None:
        chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=4, temperature=0, logit_bias={str(eos): 2000})
        assert chat.choices[0].message.content == "" and chat.choices[0].finish_reason == "stop"
        assert chat.usage.completion_tokens == 1


def test_input_extra_ollama_cannot_honour_is_a_400_not_ignored(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False}})
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            answer = client.completions.create(model="llama3.2", prompt=PREFIX, suffix=SUFFIX, max_tokens=2,
                                               stream=stream, extra_body={"input_extra": EXTRAS})
            list(answer) if stream else None
        assert info.value.body["param"] == "input_extra"
    assert ollama_emulator.count("/api/generate") == 0
    assert client.completions.create(model="llama3.2", prompt=PREFIX, suffix=SUFFIX, max_tokens=2).choices[0].text
