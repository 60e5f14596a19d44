"""engine/tokenizer.py: token ids equal to the real llama-server's /tokenize for every vocabulary
tools/make_tiny_gguf.py writes (SentencePiece, and byte-level BPE under each supported pre)."""
from __future__ import annotations

import json
import random
import urllib.request
from pathlib import Path
from typing import Iterator

import gguf
import numpy as np
import pytest
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

from tests.rig.llama import LlamaServer, make_tiny_model, tiny_gguf_tool
from velollmd.engine.gguf import read_gguf
from velollmd.engine.tokenizer import Tokenizer, TokenizerError

# "spm+prefix": the SPM file rewritten with SentencePiece's usual add_space_prefix and add_bos.
VOCABS = ("spm", "spm+prefix", "bpe:qwen2", "bpe:llama3", "bpe:gpt-2", "bpe:default")

MULTILINGUAL = (
    "Hello world! The café über Straße, naïve résumé. Grüße aus München. 日本語のテキスト、"
    "中文测试。こんにちは世界 Привет, мир! مرحبا بالعالم 😀🎉👍🏽 1234567 and 3.14159, x=42;\n\n"
    "\tTabs\t\tand   spaces   \n don't we'll I'M you'RE it's <|im_start|>user\nhi<|im_end|>\n"
    "<tool_call>{\"a\": 1}</tool_call> end  "
)
EDGE_CASES = (
    "", " ", "    ", " leading space", "trailing space ", "\n\n\n", "\r\n\r\n", "  \n  x",
    "<|im_start|>at the start", "in the mid<|im_end|>dle", "<|im_end|><|im_end|>",
    "<|im_sta <|im_end",                      # prefixes of special tokens are plain text
    "<|im_start|", "<tool_call", "<|im_start|><|im_start|>system",
    "ÀÉÎõü ñ x\u0301y", "\u00a0nbsp\u3000ideographic\u2003em", "12345678901 ٣٤٥ ①②",
    "'s 'S 'll 'LL 're", "?!... --- $$$ +++ <=> ^~| `", "hello    world\t\t\tend",
)

# Random texts are drawn from these: letters, digits, accents, CJK, Cyrillic, Arabic, emoji,
# odd whitespace, punctuation runs, contractions and special tokens.
FUZZ_PIECES = [*"aAbZz09 '\t\n\r.,!?-_$+<=>^~|`\"{}()[]", *"éüßñ日本中文こんにちは語Пмиرب😀🎉",
               *"\u00a0\u3000\u2003\u0301٣①", "<|im_end|>", "<|im_start|>", "<tool_call>", "'s", "'T",
               "don't", " the", "Hello", "  ", "\n\n", "123456"]


def gguf_metadata(path: Path) -> dict:
    """The GGUF key/value pairs as a plain dict (arrays as lists)."""
    return {name: field.contents() for name, field in gguf.GGUFReader(path).fields.items()}


def with_space_prefix_and_bos(source: Path, target: Path) -> Path:
    """A copy of a GGUF with add_space_prefix and add_bos_token set (llama.cpp's SPM defaults)."""
    flag = gguf.GGUFValueType.BOOL
    changes = {"tokenizer.ggml.add_space_prefix": MetadataDetails(flag, True),
               "tokenizer.ggml.add_bos_token": MetadataDetails(flag, True)}
    copy_with_new_metadata(gguf.GGUFReader(source), gguf.GGUFWriter(target, "llama"), changes, [])
    return target


def post(server: LlamaServer, route: str, body: dict) -> dict:
    request = urllib.request.Request(server.url + route, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.load(resp)


def server_tokens(server: LlamaServer, text: str, *, add_special: bool = True,
                  parse_special: bool = True) -> list[int]:
    body = {"content": text, "add_special": add_special, "parse_special": parse_special}
    return post(server, "/tokenize", body)["tokens"]


@pytest.fixture(scope="module", params=VOCABS)
def vocab_server(request, llama_binary: str, tmp_path_factory) -> Iterator[tuple[Tokenizer, LlamaServer]]:
    """(our Tokenizer, a llama-server) on the tiny model with one vocabulary."""
    folder = tmp_path_factory.mktemp("tok")
    path = folder / f"tiny-{request.param.replace(':', '-')}.gguf"
    if request.param == "spm+prefix":
        with_space_prefix_and_bos(make_tiny_model(folder / "spm.gguf"), path)
    else:
        tiny_gguf_tool().build_tiny_gguf(path, vocab=request.param)
    with LlamaServer(path, binary=llama_binary, parallel=1, ctx_size=1024) as server:
        yield Tokenizer.from_gguf(gguf_metadata(path)), server


@pytest.fixture(scope="module")
def spm_metadata(tmp_path_factory) -> dict:
    return gguf_metadata(make_tiny_model(tmp_path_factory.mktemp("spm") / "tiny.gguf"))


@pytest.fixture(scope="module")
def bpe_metadata(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("bpe") / "tiny.gguf"
    return gguf_metadata(tiny_gguf_tool().build_tiny_gguf(path, vocab="bpe"))


# ---- parity with llama-server ------------------------------------------------------------------


@pytest.mark.parametrize("parse_special", [True, False])
def test_multilingual_text_matches_llama_server(vocab_server, parse_special):
    tokenizer, server = vocab_server
    ours = tokenizer.encode(MULTILINGUAL, parse_special=parse_special)
    assert ours == server_tokens(server, MULTILINGUAL, parse_special=parse_special)
    assert len(ours) > 40


def test_edge_cases_match_llama_server(vocab_server):
    tokenizer, server = vocab_server
    mismatches = [
        (text, parse_special, add_special)
        for text in EDGE_CASES for parse_special in (True, False) for add_special in (True, False)
        if tokenizer.encode(text, add_special=add_special, parse_special=parse_special)
        != server_tokens(server, text, add_special=add_special, parse_special=parse_special)
    ]
    assert mismatches == []


def test_random_texts_match_llama_server(vocab_server):
    tokenizer, server = vocab_server
    rng = random.Random(20261201)
    texts = ["".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(1, 30))) for _ in range(40)]
    mismatches = [text for text in texts for parse_special in (True, False)
                  if tokenizer.encode(text, parse_special=parse_special)
                  != server_tokens(server, text, parse_special=parse_special)]
    assert mismatches == []


def test_engine_gguf_reader_metadata_gives_the_same_tokenizer(vocab_server):
    tokenizer, server = vocab_server
    with read_gguf(server.model_path) as gguf_file:
        ours = Tokenizer.from_gguf(gguf_file.metadata)
    assert ours.encode(MULTILINGUAL) == tokenizer.encode(MULTILINGUAL)
    assert (ours.eog_ids, ours.bos_id, ours.add_bos) == \
        (tokenizer.eog_ids, tokenizer.bos_id, tokenizer.add_bos)


def test_special_tokens_are_whole_tokens_only_when_parsed(vocab_server):
    tokenizer, _ = vocab_server
    im_end = tokenizer.piece_to_id("<|im_end|>")
    assert im_end in tokenizer.encode("a<|im_end|>b", add_special=False)
    assert im_end not in tokenizer.encode("a<|im_end|>b", add_special=False, parse_special=False)
    assert im_end not in tokenizer.encode("<|im_sta <|im_end", add_special=False)


def test_decode_matches_llama_server_detokenize_and_round_trips(vocab_server):
    tokenizer, server = vocab_server
    texts = (MULTILINGUAL,) + EDGE_CASES
    round_trips = 0
    for text in texts:
        ids = tokenizer.encode(text, add_special=False)
        theirs = post(server, "/detokenize", {"tokens": ids})["content"]
        assert tokenizer.decode(ids) == theirs
        round_trips += theirs == text
    # Without a space prefix every test text round-trips in llama.cpp, so in ours too; with it
    # llama.cpp's detokenize keeps the added leading space of each text that had none.
    assert round_trips == len(texts) if not tokenizer.add_space_prefix else 0 < round_trips < len(texts)


def test_model_loads_and_answers_with_this_vocab(vocab_server):
    tokenizer, server = vocab_server
    reply = post(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Hello world"}], "max_tokens": 6, "temperature": 0})
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 6
    assert reply["choices"][0]["message"]["content"].strip()


# ---- the interface, without a server -----------------------------------------------------------


def test_spm_token_bytes_and_special_ids(spm_metadata):
    tokenizer = Tokenizer.from_gguf(spm_metadata)
    tokens, _, _ = tiny_gguf_tool().tiny_vocab()
    assert tokenizer.vocab_size == len(tokens) == 1024
    assert tokenizer.token_bytes(tokens.index("<0x0A>")) == b"\n"
    assert tokenizer.token_bytes(tokens.index("<0xE6>")) == b"\xe6"
    assert tokenizer.token_bytes(tokens.index("\u2581the")) == b" the"
    assert tokenizer.token_bytes(tokens.index("<|im_end|>")) == b"<|im_end|>"
    assert tokenizer.bos_id == tokens.index("<s>") and tokenizer.eos_id == tokens.index("<|im_end|>")
    assert tokenizer.eog_ids == {tokens.index("<|im_end|>"), tokens.index("</s>")}
    assert tokenizer.add_bos is False
    assert tokenizer.is_control(tokens.index("<|im_start|>"))
    assert not tokenizer.is_control(tokens.index("<tool_call>"))      # user-defined
    assert tokenizer.token_to_piece(tokens.index("\u2581the")) == "\u2581the"
    assert tokenizer.piece_to_id("\u2581the") == tokens.index("\u2581the")
    assert tokenizer.piece_to_id("no such piece") is None


def test_bpe_token_bytes_and_special_ids(bpe_metadata):
    tokenizer = Tokenizer.from_gguf(bpe_metadata)
    assert tokenizer.token_bytes(tokenizer.piece_to_id("\u010a")) == b"\n"        # "Ċ"
    assert tokenizer.token_bytes(tokenizer.piece_to_id("\u0120")) == b" "         # "Ġ"
    assert tokenizer.token_bytes(tokenizer.piece_to_id("\u00e4")) == b"\xe4"      # a lone byte
    assert tokenizer.token_bytes(tokenizer.piece_to_id("\u0120caf\u00c3\u00a9")) == " café".encode()
    assert tokenizer.token_bytes(tokenizer.piece_to_id("<|im_end|>")) == b"<|im_end|>"
    endoftext, im_end = tokenizer.piece_to_id("<|endoftext|>"), tokenizer.piece_to_id("<|im_end|>")
    assert tokenizer.eog_ids == {endoftext, im_end}
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (endoftext, im_end, endoftext)


def test_decode_skip_special_drops_control_tokens(bpe_metadata):
    tokenizer = Tokenizer.from_gguf(bpe_metadata)
    ids = tokenizer.encode("<|im_start|>user\nhi<tool_call><|im_end|>")
    assert tokenizer.decode(ids, skip_special=True) == "user\nhi<tool_call>"
    assert tokenizer.decode(ids) == "<|im_start|>user\nhi<tool_call><|im_end|>"


def test_numpy_arrays_read_like_lists(bpe_metadata, spm_metadata):
    for metadata in (bpe_metadata, spm_metadata):
        as_numpy = {key: np.asarray(value) if isinstance(value, list) else value
                    for key, value in metadata.items()}
        assert Tokenizer.from_gguf(as_numpy).encode(MULTILINGUAL) == \
            Tokenizer.from_gguf(metadata).encode(MULTILINGUAL)


def test_add_bos_and_eos_follow_the_metadata(spm_metadata):
    metadata = dict(spm_metadata, **{"tokenizer.ggml.add_bos_token": True,
                                     "tokenizer.ggml.add_eos_token": True})
    tokenizer = Tokenizer.from_gguf(metadata)
    ids = tokenizer.encode("the")
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
    assert tokenizer.encode("the", add_special=False) == ids[1:-1]
    assert tokenizer.encode("") == [tokenizer.bos_id, tokenizer.eos_id]


@pytest.mark.parametrize("change, field", [
    ({"tokenizer.ggml.pre": "no-such-pre"}, "tokenizer.ggml.pre"),
    ({"tokenizer.ggml.model": "t5"}, "tokenizer.ggml.model"),
    ({"tokenizer.ggml.tokens": []}, "tokenizer.ggml.tokens"),
    ({"tokenizer.ggml.token_type": [1, 2]}, "tokenizer.ggml.token_type"),
])
def test_bad_metadata_raises_a_clear_error(bpe_metadata, change, field):
    with pytest.raises(TokenizerError, match=field):
        Tokenizer.from_gguf(dict(bpe_metadata, **change))
    assert issubclass(TokenizerError, ValueError)


def test_missing_merges_is_an_error(bpe_metadata):
    metadata = {k: v for k, v in bpe_metadata.items() if k != "tokenizer.ggml.merges"}
    with pytest.raises(TokenizerError, match="tokenizer.ggml.merges"):
        Tokenizer.from_gguf(metadata)


def test_bpe_vocab_merges_common_and_multilingual_words(bpe_metadata):
    tokenizer = Tokenizer.from_gguf(bpe_metadata)
    tokens, merges = bpe_metadata["tokenizer.ggml.tokens"], bpe_metadata["tokenizer.ggml.merges"]
    assert len(tokens) == len(set(tokens)) == 1024 and bpe_metadata["tokenizer.ggml.pre"] == "qwen2"
    assert all(merge.replace(" ", "") in tokens for merge in merges)   # every merge makes a token
    for word in ("Hello", " world", " the", " café", "Straße", "日本", "こんにちは", " мир", "paris"):
        assert len(tokenizer.encode(word)) == 1, word


# ---- fill in the middle ------------------------------------------------------------------------


def test_fim_tokens_come_from_the_gguf_keys_and_build_the_psm_prompt(tmp_path_factory):
    path = tiny_gguf_tool().build_tiny_gguf(tmp_path_factory.mktemp("fim") / "fim.gguf", vocab="spm-fim")
    tokenizer = Tokenizer.from_gguf(gguf_metadata(path))
    tokens, _, _ = tiny_gguf_tool().tiny_vocab(fim=True)
    pre, suf, mid, pad, sep = (tokens.index(tag) for tag in tiny_gguf_tool().FIM_TAGS)
    assert tokenizer.can_fill_in_middle
    assert tokenizer.fill_in_middle([10, 11], [12]) == [pre, 10, 11, suf, 12, mid]
    assert {pad, sep} <= tokenizer.eog_ids               # a model writing these has ended its middle
    assert all(tokenizer.is_control(i) for i in (pre, suf, mid, pad, sep))


def test_fim_tokens_by_the_older_keys_win_and_text_is_the_fallback(spm_metadata):
    """llama.cpp reads tokenizer.ggml.prefix/suffix/middle_token_id after the fim_* keys; a
    vocabulary without either is searched for the tokens' texts (here Code Llama's <PRE> ...)."""
    tokens = list(spm_metadata["tokenizer.ggml.tokens"])
    tokens[-4:] = ["<PRE>", "<SUF>", "<MID>", "<EOT>"]
    by_text = Tokenizer.from_gguf({**spm_metadata, "tokenizer.ggml.tokens": tokens})
    assert by_text.fill_in_middle([], []) == [len(tokens) - 4, len(tokens) - 3, len(tokens) - 2]
    keyed = Tokenizer.from_gguf({**spm_metadata, "tokenizer.ggml.tokens": tokens,
                                 "tokenizer.ggml.fim_pre_token_id": 20, "tokenizer.ggml.prefix_token_id": 30,
                                 "tokenizer.ggml.fim_mid_token_id": 40})
    assert keyed.fill_in_middle([7], [8]) == [30, 7, len(tokens) - 3, 8, 40]
    with_bos = Tokenizer.from_gguf({**spm_metadata, "tokenizer.ggml.tokens": tokens,
                                    "tokenizer.ggml.add_bos_token": True})
    assert with_bos.fill_in_middle([], [])[0] == with_bos.bos_id


def test_a_vocabulary_without_fim_tokens_cannot_fill_in_the_middle(spm_metadata):
    assert not Tokenizer.from_gguf(spm_metadata).can_fill_in_middle
