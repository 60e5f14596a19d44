"""Llama 3.1/3.2/3.3 renderer (meta-llama-Llama-3.{2,3}-*-Instruct.jinja, byte for byte).

Tools go into the first user turn (the templates' default `tools_in_user_message`), each as
JSON indented by 4; a tool call is `{"name": ..., "parameters": ...}`; tool results come back in
an `ipython` turn, JSON-quoted (the templates `tojson` any iterable content, strings included).
3.1/3.3 date the system turn "26 Jul 2024" unless told; 3.2 uses today's date (`strftime_now`).
"""
from __future__ import annotations

import time

from .templates_messages import Conversation, Message, TemplateError, tojson

FIXED_DATE = "26 Jul 2024"
TOOLS_GUIDANCE = ('Respond in the format {"name": function name, "parameters": dictionary of argument name '
                  'and its value}.Do not use variables.\n\n')


def _header(role: str) -> str:
    return "<|start_header_id|>" + role + "<|end_header_id|>\n\n"


def render_llama31(conv: Conversation) -> str:
    return _render(conv, conv.date_string or FIXED_DATE)


def render_llama32(conv: Conversation) -> str:
    return _render(conv, conv.date_string or time.strftime("%d %b %Y"))


def _render(conv: Conversation, date_string: str) -> str:
    messages = list(conv.messages)
    system = ""
    if messages[0].role == "system":
        system = messages.pop(0).content.strip()
    has_tools = conv.tools is not None
    out = [conv.bos_token, _header("system"), "Environment: ipython\n" if has_tools else "",
           "Cutting Knowledge Date: December 2023\n", "Today Date: " + date_string + "\n\n",
           system, "<|eot_id|>"]
    if has_tools:
        if not messages:
            raise TemplateError("messages: Llama 3 puts the tools in the first user message, "
                                "and there is none")
        out.append(_tools_turn(conv.tools, messages.pop(0).content.strip()))
    out.extend(_message(message) for message in messages)
    if conv.add_generation_prompt:
        out.append(_header("assistant"))
    return "".join(out)


def _tools_turn(tools: list[dict], first_user_message: str) -> str:
    described = "".join(tojson(tool, indent=4) + "\n\n" for tool in tools)
    return (_header("user") + "Given the following functions, please respond with a JSON for a function call "
            "with its proper arguments that best answers the given prompt.\n\n" + TOOLS_GUIDANCE
            + described + first_user_message + "<|eot_id|>")


def _message(message: Message) -> str:
    if message.role == "tool":
        return _header("ipython") + tojson(message.content) + "<|eot_id|>"
    if message.tool_calls:
        if len(message.tool_calls) != 1:
            raise TemplateError("tool_calls: Llama 3 supports a single tool call per assistant message, "
                                f"got {len(message.tool_calls)}")
        call = message.tool_calls[0]
        return (_header("assistant") + '{"name": "' + call.name + '", "parameters": '
                + tojson(call.arguments) + "}<|eot_id|>")
    return _header(message.role) + message.content.strip() + "<|eot_id|>"
