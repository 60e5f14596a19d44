"""Phi-3/3.5 renderer (microsoft-Phi-3.5-mini-instruct.jinja, byte for byte).

`<|system|>`, `<|user|>`, `<|assistant|>` turns each closed by `<|end|>`; an empty system
message and tool messages are left out (the template has no tool support); without a generation
prompt the text ends with the EOS token.
"""
from __future__ import annotations

from .templates_messages import Conversation

_ROLE_TAGS = {"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"}


def render_phi3(conv: Conversation) -> str:
    out = []
    for message in conv.messages:
        if message.role in _ROLE_TAGS and (message.role != "system" or message.content):
            out.append(_ROLE_TAGS[message.role] + message.content + "<|end|>\n")
    out.append("<|assistant|>\n" if conv.add_generation_prompt else conv.eos_token)
    return "".join(out)
