"""vLLM's POST /tokenize with `return_token_strs`: each token as its vocabulary spells it (vLLM
answers with the HF tokenizer's convert_ids_to_tokens: '▁wor', '<0xC3>', 'Ġw'), where a byte
token's text alone (one byte of a longer character) would read U+FFFD. Checked against the
GGUF's own token list (read with the gguf package), on the engine and the real llama-server, for
a SentencePiece vocabulary with byte fallback and a byte-level BPE one."""
from __future__ import annotations

import gguf
import httpx
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend, llama_backend
from tests.rig.llama import LlamaServer, make_tiny_model, tiny_gguf_tool

TEXT = "héllo wörld ☃ <|im_start|> ça"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """Engine model name -> its GGUF: the tiny SentencePiece one and a byte-level BPE one."""
    folder = tmp_path_factory.mktemp("token-strs")
    return {"eng-spm": make_tiny_model(folder / "eng-spm.gguf"),
            "eng-bpe": tiny_gguf_tool().build_tiny_gguf(folder / "eng-bpe.gguf", vocab="bpe")}


@pytest.fixture(scope="module")
def daemon(models, llama_binary):
    """The engine (eng-spm, eng-bpe) and a real llama-server for each GGUF (tiny-spm, tiny-bpe)."""
    spm = LlamaServer(models["eng-spm"], binary=llama_binary, alias="tiny-spm", parallel=1).start()
    bpe = LlamaServer(models["eng-bpe"], binary=llama_binary, alias="tiny-bpe", parallel=1).start()
    backends = [llama_backend(spm, name="llama-spm", models=["tiny-spm"]),
                llama_backend(bpe, name="llama-bpe", models=["tiny-bpe"]),
                engine_backend(next(iter(models.values())).parent, models=["eng-*"])]
    try:
        with RunningDaemon({"backends": backends, "cache": {"enabled": False}}) as running:
            yield running
    finally:
        spm.stop()
        bpe.stop()


def vocabulary(path) -> list[str]:
    return [str(token) for token in gguf.GGUFReader(path).fields["tokenizer.ggml.tokens"].contents()]


@pytest.mark.parametrize("model, gguf_of", [("eng-spm", "eng-spm"), ("tiny-spm", "eng-spm"),
                                            ("eng-bpe", "eng-bpe"), ("tiny-bpe", "eng-bpe")])
def test_token_strs_are_the_vocabularys_own_spelling(daemon, models, model, gguf_of):
    answer = httpx.post(daemon.url + "/tokenize", json={"model": model, "prompt": TEXT, "return_token_strs": True,
                                                        "add_special_tokens": False}, timeout=60).json()
    vocab = vocabulary(models[gguf_of])
    assert answer["token_strs"] == [vocab[i] for i in answer["tokens"]]
    assert not any("\ufffd" in text for text in answer["token_strs"])
    if gguf_of == "eng-spm":
        assert "<0xC3>" in answer["token_strs"]            # é by byte fallback, as vLLM spells it
