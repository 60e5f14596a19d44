"""Phi renderers: Phi-3/3.5, Phi-4-mini (llama.cpp's tool-aware template), Phi-4 (ChatML with <|im_sep|>).

References, byte for byte: microsoft-Phi-3.5-mini-instruct.jinja,
llama-cpp-microsoft-Phi-4-mini-instruct.jinja, microsoft-phi-4.jinja.
"""
from __future__ import annotations

from .templates_messages import Conversation, tojson

_PHI3_TAGS = {"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"}
PHI4_MINI_TOOLS_HINT = ("You are a helpful assistant with some tools.\n"
                        "To use a tool, respond in this format: "
                        '<|tool_call|>{"name": "foo", "arguments": {"a": 1}}<|/tool_call|>')


def render_phi3(conv: Conversation) -> str:
    """`<|role|>\\n ... <|end|>\\n` turns; empty system and tool messages are left out (no tools)."""
    out = []
    for message in conv.messages:
        if message.role in _PHI3_TAGS and (message.role != "system" or message.content):
            out.append(_PHI3_TAGS[message.role] + message.content + "<|end|>\n")
    out.append("<|assistant|>\n" if conv.add_generation_prompt else conv.eos_token)
    return "".join(out)


def render_phi4_mini(conv: Conversation) -> str:
    """`<|role|>...<|end|>` with no newlines; tools as `<|tool|>{function}<|/tool|>` in the system turn."""
    out = [_phi4_mini_system(conv)]
    for message in conv.messages:
        if message.role == "tool":
            out.append("<|tool_response|>" + tojson(message.content) + "<|end|>")
        elif message.role != "system":
            calls = "".join("<|tool_call|>" + tojson({"name": call.name, "arguments": call.arguments})
                            + "<|/tool_call|>" for call in message.tool_calls)
            out.append("<|" + message.role + "|>" + message.content + calls + "<|end|>")
    out.append("<|assistant|>" if conv.add_generation_prompt else conv.eos_token)
    return "".join(out)


def _phi4_mini_system(conv: Conversation) -> str:
    first = conv.messages[0]
    if first.role != "system" and conv.tools is None:
        return ""
    system = first.content if first.role == "system" else ""
    if conv.tools is None:
        return "<|system|>" + system + "<|end|>"
    tools = "".join("<|tool|>" + tojson(tool.get("function")) + "<|/tool|>" for tool in conv.tools)
    hint = PHI4_MINI_TOOLS_HINT if "<|tool_call|>" not in system else ""
    return "<|system|>" + system + tools + hint + "<|end|>"


def render_phi4(conv: Conversation) -> str:
    """Phi-4 (14B): `<|im_start|>role<|im_sep|>...<|im_end|>`, no newlines, no tools."""
    out = ["<|im_start|>" + m.role + "<|im_sep|>" + m.content + "<|im_end|>"
           for m in conv.messages if m.role in ("system", "user", "assistant")]
    if conv.add_generation_prompt:
        out.append("<|im_start|>assistant<|im_sep|>")
    return "".join(out)
