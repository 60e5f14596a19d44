"""Chat templates recognised from a GGUF's `tokenizer.chat_template`, rendered in Python (no jinja).

`find_template(source, override)` picks a family by distinctive markers, as llama.cpp's
`llm_chat_detect_template` (src/llama-chat.cpp) does, or by the name given in the config
(`chat_template = "chatml"`), which wins. A template we cannot recognise is an error, never a
guess: a wrong prompt format gives fluent nonsense that nobody notices.

Each family renders byte for byte what its reference template renders under jinja2 with
HF/llama.cpp's environment (tests/engine/test_templates.py checks this against the real
templates in tests/fixtures/chat_templates/).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from .templates_chatml import render_chatml, render_qwen2, render_qwen3
from .templates_gemma import render_gemma
from .templates_llama3 import render_llama31, render_llama32
from .templates_messages import Conversation, TemplateError, normalize_messages
from .templates_mistral import render_mistral
from .templates_phi import render_phi3, render_phi4, render_phi4_mini

__all__ = ["ChatTemplate", "TEMPLATE_NAMES", "TemplateError", "TemplateUnknown", "detect_family",
           "find_template", "get_template"]


class TemplateUnknown(ValueError):
    """The GGUF's chat template is none we recognise, and the config names none."""


@dataclass(frozen=True)
class ChatTemplate:
    name: str                          # the family, one of TEMPLATE_NAMES
    stop: tuple[str, ...]              # strings that end a turn in this family
    tool_call_format: str | None       # how the model writes calls: "hermes", "llama3", "mistral" or None
    renderer: Callable[[Conversation], str]
    # (opening, closing) tags of the reasoning it writes before it answers, switched by
    # enable_thinking; None for a family that does not think
    think_tags: tuple[str, str] | None = None

    @property
    def thinks(self) -> bool:
        return self.think_tags is not None

    def preserved_tokens(self, *, with_tools: bool) -> tuple[str, ...]:
        """The markers a sampled control token still writes as text, because the answer's
        parsing reads them (llama.cpp's per-format `preserved_tokens`, common/chat.cpp): the
        thinking tags, and the tool-call markers when the request offers tools."""
        markers = _TOOL_CALL_MARKERS.get(self.tool_call_format, ()) if with_tools else ()
        return (*(self.think_tags or ()), *markers)

    def render(self, messages: list[dict], *, tools: list[dict] | None = None,
               add_generation_prompt: bool = True, bos_token: str = "", eos_token: str = "",
               date_string: str | None = None, enable_thinking: bool | None = None) -> str:
        """The prompt for OpenAI-shaped `messages` (and `tools`), as the reference template writes it.

        Raises TemplateError (a ValueError) for a malformed message or a conversation the
        family's template refuses (e.g. Gemma's or Mistral's non-alternating turns).
        """
        checked = normalize_messages(messages)
        if not checked:
            raise TemplateError("messages: empty; a chat prompt needs at least one message")
        if tools is not None and not isinstance(tools, list):
            raise TemplateError(f"tools: expected a list, got {type(tools).__name__}")
        conv = Conversation(checked, tools, add_generation_prompt, bos_token, eos_token,
                            date_string, enable_thinking)
        return self.renderer(conv)


_CHATML_STOP = ("<|im_end|>", "<|endoftext|>")
# tool_call_format -> the markers its calls are written with (toolcalls/markers.py reads them)
_TOOL_CALL_MARKERS = {"hermes": ("<tool_call>", "</tool_call>"), "llama3": ("<|python_tag|>",),
                      "mistral": ("[TOOL_CALLS]",), "phi4-mini": ("<|tool_call|>", "<|/tool_call|>")}
_TEMPLATES = (
    ChatTemplate("chatml", _CHATML_STOP, "hermes", render_chatml),
    ChatTemplate("qwen2", _CHATML_STOP, "hermes", render_qwen2),
    ChatTemplate("qwen3", _CHATML_STOP, "hermes", render_qwen3, think_tags=("<think>", "</think>")),
    ChatTemplate("llama3", ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"), "llama3", render_llama31),
    ChatTemplate("llama3.2", ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"), "llama3", render_llama32),
    ChatTemplate("mistral", ("</s>",), "mistral", render_mistral),
    ChatTemplate("gemma", ("<end_of_turn>", "<eos>"), None, render_gemma),
    ChatTemplate("phi3", ("<|end|>", "<|endoftext|>"), None, render_phi3),
    ChatTemplate("phi4-mini", ("<|end|>", "<|endoftext|>"), "phi4-mini", render_phi4_mini),
    ChatTemplate("phi4", ("<|im_end|>", "<|endoftext|>"), None, render_phi4),
)
TEMPLATES = {template.name: template for template in _TEMPLATES}
TEMPLATE_NAMES = tuple(TEMPLATES)
# '<|user|>\n' (a newline or the \n escape), or '<|' + message['role'] + '|>' + '\n'
_PHI3_NEWLINE_RE = re.compile(r"\|>(?:\n|\\n|' \+ '(?:\n|\\n))")


def detect_family(source: str) -> str | None:
    """The family of a jinja chat template by its markers (llama.cpp's order), or None."""
    if "<|im_start|>" in source:
        if "<|im_sep|>" in source:
            return "phi4"
        if "<end_of_utterance>" in source:
            return None                          # SmolVLM: ChatML tokens, another layout
        if "<think>" in source:
            return "qwen3"
        return "qwen2" if "You are Qwen, created by Alibaba Cloud" in source else "chatml"
    if "[INST]" in source:
        # v3-tekken only: "[INST]" without spaces, with [AVAILABLE_TOOLS], no [SYSTEM_PROMPT] (v7)
        tekken = '"[INST]"' in source and "[AVAILABLE_TOOLS]" in source and " [INST]" not in source
        return "mistral" if tekken and "[SYSTEM_PROMPT]" not in source else None
    if "<|start_header_id|>" in source and "<|end_header_id|>" in source:
        if "Cutting Knowledge Date" not in source:
            return None                          # Llama 3.0 has no dated system turn
        return "llama3.2" if "strftime_now" in source else "llama3"
    if "<|assistant|>" in source and "<|end|>" in source:
        return _phi_family(source)
    if "<start_of_turn>" in source:
        return "gemma"
    return None


def _phi_family(source: str) -> str | None:
    """Phi-3 writes a newline after each role tag; Phi-4-mini writes `<|role|>content<|end|>`."""
    if _PHI3_NEWLINE_RE.search(source):
        return "phi3"
    return "phi4-mini" if "'<|' + message['role'] + '|>'" in source else None


def get_template(name: str) -> ChatTemplate:
    if name not in TEMPLATES:
        raise TemplateUnknown(f"chat_template = {name!r} is not a template name; accepted names: "
                              + ", ".join(TEMPLATE_NAMES))
    return TEMPLATES[name]


def find_template(source: str | None, override: str | None = None) -> ChatTemplate:
    """The template to render with: `override` (a family name from the config) wins over detection."""
    if override:
        return get_template(override)
    family = detect_family(source) if source else None
    if family is None:
        why = "no family's markers found in tokenizer.chat_template" if source else \
            "the model has no tokenizer.chat_template"
        raise TemplateUnknown(f"chat template not recognised ({why}); set the config key chat_template "
                              "to one of: " + ", ".join(TEMPLATE_NAMES))
    return TEMPLATES[family]
