"""Gemma 2/3 renderer (google-gemma-2-2b-it.jinja, google-gemma-3-it.jinja, byte for byte).

Roles are `user` and `model`; there is no system role: as Gemma 3's template does, a system
message is folded into the first turn, followed by a blank line (Gemma 2's own template refuses
system messages instead). Turns must alternate user/model; content is trimmed; no tool support.
"""
from __future__ import annotations

from .templates_messages import Conversation, TemplateError


def render_gemma(conv: Conversation) -> str:
    messages = list(conv.messages)
    first_user_prefix = messages.pop(0).content + "\n\n" if messages[0].role == "system" else ""
    out = [conv.bos_token]
    for i, message in enumerate(messages):
        if (message.role == "user") != (i % 2 == 0):
            raise TemplateError("messages: Gemma needs user and assistant turns to alternate, starting with "
                                f"user (after an optional system message); turn {i} is {message.role!r}")
        role = "model" if message.role == "assistant" else message.role
        prefix = first_user_prefix if i == 0 else ""
        out.append("<start_of_turn>" + role + "\n" + prefix + message.content.strip() + "<end_of_turn>\n")
    if conv.add_generation_prompt:
        out.append("<start_of_turn>model\n")
    return "".join(out)
