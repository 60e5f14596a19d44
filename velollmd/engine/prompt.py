"""The text a chat request becomes: its chat template rendered as llama.cpp renders it.

llama.cpp gives the template the vocabulary's BOS and EOS texts as `bos_token` / `eos_token`
(Mistral closes every assistant turn with eos_token; Llama 3, Gemma and Mistral open with
bos_token), then drops a leading BOS text when the tokenizer adds BOS itself, and a trailing
EOS text when it adds EOS, so that no prompt carries two (common/chat.cpp, "To avoid double
BOS / EOS tokens"). Without the vocabulary's texts a multi-turn Mistral prompt loses the end
of each assistant turn, and a file with add_bos false loses its BOS. llama.cpp also dates
Llama 3.x prompts with today (`date_string`), where the template alone would write 26 Jul 2024.
"""
from __future__ import annotations

import time

from .templates import ChatTemplate
from .tokenizer import Tokenizer


def chat_prompt(template: ChatTemplate, tokenizer: Tokenizer, messages: list[dict], *,
                tools: list[dict] | None = None, add_generation_prompt: bool = True,
                enable_thinking: bool | None = None) -> str:
    """The prompt text for OpenAI-shaped messages; TemplateError (a ValueError) for bad ones.
    `enable_thinking` False asks a template that thinks (Qwen3) to answer without it."""
    bos, eos = special_text(tokenizer, tokenizer.bos_id), special_text(tokenizer, tokenizer.eos_id)
    text = template.render(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                           bos_token=bos, eos_token=eos, date_string=time.strftime("%d %b %Y"),
                           enable_thinking=enable_thinking)
    if tokenizer.add_bos and bos and text.startswith(bos):
        text = text[len(bos):]
    if tokenizer.add_eos and eos and text.endswith(eos):
        text = text[:-len(eos)]
    return text


def special_text(tokenizer: Tokenizer, token_id: int | None) -> str:
    """A special token's text ("<s>", "<|begin_of_text|>"), or "" when the vocab has none."""
    if token_id is None:
        return ""
    return tokenizer.token_bytes(token_id).decode("utf-8", "replace")


def enable_thinking_of(body: dict) -> bool | None:
    """`chat_template_kwargs.enable_thinking` of an OpenAI request (vLLM's and llama-server's
    switch; an Ollama request's `think` arrives as it), else False for `reasoning_effort:
    "none"` (a level leaves the template's default), None when neither is given."""
    kwargs = body.get("chat_template_kwargs")
    value = kwargs.get("enable_thinking") if isinstance(kwargs, dict) else None
    if isinstance(value, bool):
        return value
    return False if body.get("reasoning_effort") == "none" else None
