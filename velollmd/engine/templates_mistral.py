"""Mistral v3-tekken renderer ([INST] without spaces; mistralai-Mistral-Nemo-Instruct-2407.jinja).

Quirks of the reference template, kept byte for byte: the system prompt joins the LAST user
turn (and is dropped when the conversation does not end on one); [AVAILABLE_TOOLS] sits before
the last user turn; tool results are inserted raw into `{"content": ..., "call_id": ...}`;
user/assistant turns must alternate (tool calls and results aside); no generation prompt.
Tool call ids must be 9 characters: other ids are mapped to 9 alphanumerics (a hash), the same
way in the call and in its result, so OpenAI-style `call_...` ids still render.
"""
from __future__ import annotations

import hashlib

from .templates_messages import Conversation, Message, TemplateError, tojson


def mistral_call_id(call_id: str | None) -> str:
    if call_id is not None and len(call_id) == 9 and call_id.isalnum():
        return call_id
    return hashlib.sha256((call_id or "").encode()).hexdigest()[:9]


def render_mistral(conv: Conversation) -> str:
    messages = list(conv.messages)
    system = messages.pop(0).content if messages and messages[0].role == "system" else None
    _check_alternation(messages)
    user_messages = [m for m in messages if m.role == "user"]
    out = [conv.bos_token]
    for i, message in enumerate(messages):
        if message.role == "user":
            if conv.tools is not None and message == user_messages[-1]:
                out.append(_available_tools(conv.tools))
            prefix = system + "\n\n" if i == len(messages) - 1 and system is not None else ""
            out.append("[INST]" + prefix + message.content + "[/INST]")
        elif message.tool_calls:
            out.append("[TOOL_CALLS][" + ", ".join(map(_call, message.tool_calls)) + "]" + conv.eos_token)
        elif message.role == "assistant":
            out.append(message.content + conv.eos_token)
        elif message.role == "tool":
            out.append('[TOOL_RESULTS]{"content": ' + message.content + ", "
                       + '"call_id": "' + mistral_call_id(message.tool_call_id) + '"}[/TOOL_RESULTS]')
        else:
            raise TemplateError(f"messages[{i + (system is not None)}].role: Mistral renders only user, "
                                "assistant and tool turns after one optional leading system message")
    return "".join(out)


def _check_alternation(messages: list[Message]) -> None:
    turns = [m for m in messages if m.role != "tool" and not m.tool_calls]
    for index, message in enumerate(turns):
        if (message.role == "user") != (index % 2 == 0):
            raise TemplateError("messages: after the optional system message, Mistral needs user and "
                                "assistant turns to alternate, starting with user")


def _available_tools(tools: list[dict]) -> str:
    if not tools:
        return "[AVAILABLE_TOOLS][[/AVAILABLE_TOOLS]"
    described = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            raise TemplateError("tools: each tool needs a 'function' object")
        fields = [_field(key, value) for key, value in function.items() if key != "return"]
        described.append('{"type": "function", "function": {' + ", ".join(fields) + "}}")
    return "[AVAILABLE_TOOLS][" + ", ".join(described) + "][/AVAILABLE_TOOLS]"


def _field(key: str, value: object) -> str:
    """The template writes string values unescaped between quotes, everything else as JSON."""
    if isinstance(value, str):
        return '"' + key + '": "' + value + '"'
    return '"' + key + '": ' + tojson(value)


def _call(call) -> str:
    function = tojson({"name": call.name, "arguments": call.arguments})
    return function[:-1] + ', "id": "' + mistral_call_id(call.id) + '"}'
