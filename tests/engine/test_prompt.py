"""engine/prompt: chat templates get the vocab's BOS/EOS texts, and one BOS reaches the model.

Found by the parity test against llama-server's /apply-template (tests/backends/
test_engine_parity.py): the engine rendered with bos_token = eos_token = "", so a multi-turn
Mistral prompt lost the end of every assistant turn, and a file whose tokenizer does not add
BOS lost the template's BOS.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.engine.conversations import CONVERSATIONS
from tests.engine.weights import write_random_gguf
from velollmd.engine.gguf import read_gguf
from velollmd.engine.prompt import chat_prompt
from velollmd.engine.templates import find_template
from velollmd.engine.tokenizer import Tokenizer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
MISTRAL = (FIXTURES / "mistralai-Mistral-Nemo-Instruct-2407.jinja").read_text(encoding="utf-8")
BOS, EOS = "<s>", "<|im_end|>"        # the tiny SentencePiece vocab's


def tokenizer_of(tmp_path: Path, add_bos: bool) -> Tokenizer:
    path = write_random_gguf(tmp_path / f"mistral-{add_bos}.gguf", "llama", chat_template=MISTRAL,
                             add_bos=add_bos)
    with read_gguf(path) as gguf:
        return Tokenizer.from_gguf(gguf.metadata)


@pytest.mark.parametrize("add_bos", [True, False])
def test_mistral_turns_end_with_eos_and_the_prompt_has_one_bos(tmp_path, add_bos):
    tokenizer = tokenizer_of(tmp_path, add_bos)
    messages = CONVERSATIONS["no_system"][0]                # user, assistant "4", user
    text = chat_prompt(find_template(MISTRAL), tokenizer, messages)
    assert "[/INST]4" + EOS + "[INST]" in text
    assert text.startswith(BOS) != add_bos                 # the tokenizer adds it, or the text has it
    ids = tokenizer.encode(text, add_special=True, parse_special=True)
    assert ids[0] == tokenizer.bos_id and tokenizer.bos_id not in ids[1:]
    assert ids.count(tokenizer.eos_id) == 1


def test_a_vocab_without_bos_renders_an_empty_bos(tmp_path):
    tokenizer = tokenizer_of(tmp_path, add_bos=False)
    tokenizer.bos_id = None
    text = chat_prompt(find_template(MISTRAL), tokenizer, CONVERSATIONS["system_user"][0])
    assert text.startswith("[INST]")


def test_llama3_prompts_carry_today_as_llama_cpp_dates_them(tmp_path):
    source = (FIXTURES / "meta-llama-Llama-3.3-70B-Instruct.jinja").read_text(encoding="utf-8")
    text = chat_prompt(find_template(source), tokenizer_of(tmp_path, True), CONVERSATIONS["system_user"][0])
    assert f"Today Date: {time.strftime('%d %b %Y')}\n" in text and "26 Jul 2024" not in text


QWEN3 = (FIXTURES / "Qwen-Qwen3-0.6B.jinja").read_text(encoding="utf-8")
ASKED = [{"role": "user", "content": "Why?"}]


def test_a_prefill_leaves_the_turn_open_with_no_eos(tmp_path):
    tokenizer = tokenizer_of(tmp_path, add_bos=True)
    text = chat_prompt(find_template(MISTRAL), tokenizer, [*ASKED, {"role": "assistant", "content": "Because"}])
    assert text.endswith("[INST]Why?[/INST]Because")


def test_a_prefills_thinking_block_comes_first_closed_after_the_bare_header(tmp_path):
    """An Anthropic thinking block arrives as reasoning_content: the answer continues after it."""
    tokenizer = tokenizer_of(tmp_path, add_bos=True)
    prefill = {"role": "assistant", "content": "It is", "reasoning_content": "\nr\n"}
    text = chat_prompt(find_template(QWEN3), tokenizer, [*ASKED, prefill])
    assert text.endswith("<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n<think>\nr\n</think>\n\nIt is")


def test_a_trailing_tool_call_is_a_closed_turn_not_a_prefill(tmp_path):
    tokenizer = tokenizer_of(tmp_path, add_bos=True)
    messages = CONVERSATIONS["tool_round"][0][:3]            # ... the assistant's call, no result yet
    text = chat_prompt(find_template(QWEN3), tokenizer, messages, tools=CONVERSATIONS["tool_round"][1])
    assert text.endswith("</tool_call><|im_end|>\n<|im_start|>assistant\n")
