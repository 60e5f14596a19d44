"""The text a chat request becomes: its chat template rendered as llama.cpp renders it.

llama.cpp gives the template the vocabulary's BOS and EOS texts as `bos_token` / `eos_token`
(Mistral closes every assistant turn with eos_token; Llama 3, Gemma and Mistral open with
bos_token), then drops a leading BOS text when the tokenizer adds BOS itself, and a trailing
EOS text when it adds EOS, so that no prompt carries two (common/chat.cpp, "To avoid double
BOS / EOS tokens"). Without the vocabulary's texts a multi-turn Mistral prompt loses the end
of each assistant turn, and a file with add_bos false loses its BOS. llama.cpp also dates
Llama 3.x prompts with today (`date_string`), where the template alone would write 26 Jul 2024.

A chat whose last message is the assistant's (without tool calls) is a prefill: the client wrote
the start of the answer, and the model continues it. As llama-server does (tools/server,
"prefill_assistant_message"), the conversation before it is rendered with the generation
prompt, and the prefill's text follows as it is: the assistant turn is left open, on every
family, with no end-of-turn and no second header. (The templates alone would close it.) On a
template that thinks, a prefill that does not open the thinking is answer text: the turn opens
as with thinking off (Qwen3's empty <think></think> block first, as llama-server, vLLM's
continue_final_message and the template itself write a last assistant turn); one that opens it
(closed or not) follows the bare header.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .templates import ChatTemplate
from .templates_messages import TemplateError, content_text
from .tokenizer import Tokenizer


def chat_prompt(template: ChatTemplate, tokenizer: Tokenizer, messages: list[dict], *,
                tools: list[dict] | None = None, add_generation_prompt: bool = True,
                enable_thinking: bool | None = None) -> str:
    """The prompt text for OpenAI-shaped messages; TemplateError (a ValueError) for bad ones.
    `enable_thinking` False asks a template that thinks (Qwen3) to answer without it."""
    prefill = None
    if add_generation_prompt:
        messages, prefill = split_prefill(template, messages)
        if prefill is not None and not opens_thinking(template, prefill):
            enable_thinking = False             # the answer is past its thinking: Qwen3's empty block
    bos, eos = special_text(tokenizer, tokenizer.bos_id), special_text(tokenizer, tokenizer.eos_id)
    text = template.render(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                           bos_token=bos, eos_token=eos, date_string=time.strftime("%d %b %Y"),
                           enable_thinking=enable_thinking)
    if tokenizer.add_bos and bos and text.startswith(bos):
        text = text[len(bos):]
    if tokenizer.add_eos and eos and text.endswith(eos):
        text = text[:-len(eos)]
    return text + (prefill or "")


def split_prefill(template: ChatTemplate, messages: list[dict]) -> tuple[list[dict], str | None]:
    """(the messages before the prefill, the prefill's text) of a chat whose last message is the
    assistant's without tool calls; (messages, None) for any other. A prefill's reasoning_content
    (an Anthropic thinking block) comes first, closed in the template's think tags, as the
    template writes a turn's thinking."""
    last = messages[-1] if isinstance(messages, list) and messages else None
    if not isinstance(last, dict) or last.get("role") != "assistant" or last.get("tool_calls"):
        return messages, None
    where = f"messages[{len(messages) - 1}]"
    if len(messages) == 1:
        raise TemplateError(f"{where}: an assistant message the answer continues needs a message before it")
    text = content_text(last.get("content"), where)
    reasoning = last.get("reasoning_content")
    if reasoning is not None and template.think_tags is not None:
        start, end = template.think_tags
        text = start + "\n" + content_text(reasoning, where).strip("\n") + "\n" + end + "\n\n" + text.lstrip("\n")
    return messages[:-1], text


@dataclass(frozen=True)
class Prefill:
    """The start of the answer a client wrote (a trailing assistant message), as the answer sees it."""
    thinking: bool      # it opens the template's thinking and leaves it open: the model thinks on
    answer: str         # its text after any thinking: the answer so far (where JSON mode picks up)


def prefill_of(template: ChatTemplate, messages: list[dict]) -> Prefill | None:
    """The chat's prefill, None when its last message is no prefill."""
    text = split_prefill(template, messages)[1]
    if text is None:
        return None
    if not opens_thinking(template, text):
        return Prefill(thinking=False, answer=text)
    end = template.think_tags[1]
    if end in text:
        return Prefill(thinking=False, answer=text.rsplit(end, 1)[1])
    return Prefill(thinking=True, answer="")


def opens_thinking(template: ChatTemplate, prefill: str) -> bool:
    """Whether `prefill` starts with the template's opening think tag (a template that thinks)."""
    return template.think_tags is not None and prefill.lstrip().startswith(template.think_tags[0])


def preserved_ids(template: ChatTemplate, tokenizer: Tokenizer, body: dict) -> frozenset[int]:
    """The ids of the template's preserved markers (ChatTemplate.preserved_tokens) for a chat
    `body`: each one the vocabulary holds as a single token, as llama-server keeps them."""
    with_tools = bool(body.get("tools")) and body.get("tool_choice") != "none"
    ids = (tokenizer.encode(text, add_special=False, parse_special=True)
           for text in template.preserved_tokens(with_tools=with_tools))
    return frozenset(found[0] for found in ids if len(found) == 1)


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
