"""ChatML renderers: plain ChatML with Hermes tools, Qwen2/2.5, Qwen3 (reasoning in <think>).

Each follows its reference template byte for byte (tests/fixtures/chat_templates/):
tools/make_tiny_gguf.py's CHAT_TEMPLATE, Qwen-Qwen2.5-7B-Instruct.jinja, Qwen-Qwen3-0.6B.jinja.
"""
from __future__ import annotations

from .templates_messages import Conversation, Message, ToolCall, tojson

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
QWEN2_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
TOOLS_INTRO = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
               "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_OUTRO = ("\n</tools>\n\nFor each function call, return a json object with function name and "
               "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
               '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n')


def render_chatml(conv: Conversation) -> str:
    """ChatML + Hermes tools (the tiny model's template)."""
    return _render(conv, default_system=None, quote_string_arguments=False)


def render_qwen2(conv: Conversation) -> str:
    """Qwen2/2.5: a default system prompt; arguments always through `tojson`."""
    return _render(conv, default_system=QWEN2_DEFAULT_SYSTEM, quote_string_arguments=True)


def _render(conv: Conversation, default_system: str | None, quote_string_arguments: bool) -> str:
    messages = conv.messages
    out = [_system_block(conv, default_system)]
    for i, message in enumerate(messages):
        if message.role == "system" and i == 0:
            continue
        if message.role == "tool":
            out.append(_tool_response(messages, i))
        elif message.role == "assistant" and message.tool_calls:
            out.append(IM_START + "assistant" + ("\n" + message.content if message.content else ""))
            out.extend("\n" + _tool_call(call, quote_string_arguments) for call in message.tool_calls)
            out.append(IM_END + "\n")
        else:
            out.append(_turn(message.role, message.content))
    if conv.add_generation_prompt:
        out.append(IM_START + "assistant\n")
    return "".join(out)


def render_qwen3(conv: Conversation) -> str:
    messages = conv.messages
    out = [_system_block(conv, None)]
    last_query = _last_query_index(messages)
    for i, message in enumerate(messages):
        if message.role == "user" or (message.role == "system" and i > 0):
            out.append(_turn(message.role, message.content))
        elif message.role == "assistant":
            out.append(_qwen3_assistant(message, i > last_query, i == len(messages) - 1))
        elif message.role == "tool":
            out.append(_tool_response(messages, i))
    if conv.add_generation_prompt:
        out.append(IM_START + "assistant\n")
        if conv.enable_thinking is False:
            out.append("<think>\n\n</think>\n\n")
    return "".join(out)


def _qwen3_assistant(message: Message, after_last_query: bool, is_last: bool) -> str:
    content, reasoning = split_reasoning(message)
    if after_last_query and (is_last or reasoning):
        text = "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
    else:
        text = content
    out = [IM_START + "assistant\n" + text]
    for j, call in enumerate(message.tool_calls):
        if j > 0 or content:
            out.append("\n")
        out.append(_tool_call(call, quote_string_arguments=False))
    out.append(IM_END + "\n")
    return "".join(out)


def split_reasoning(message: Message) -> tuple[str, str]:
    """(content, reasoning): `reasoning_content` when given, else the text inside <think>...</think>."""
    if message.reasoning_content is not None:
        return message.content, message.reasoning_content
    content = message.content
    if "</think>" not in content:
        return content, ""
    head = content.split("</think>")[0]
    return content.split("</think>")[-1].lstrip("\n"), head.rstrip("\n").split("<think>")[-1].lstrip("\n")


def _last_query_index(messages: tuple[Message, ...]) -> int:
    """Index of the last user turn that is not a wrapped tool response (Qwen3's ns.last_query_index)."""
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        text = message.content
        wrapped = text.startswith("<tool_response>") and text.endswith("</tool_response>")
        if message.role == "user" and not wrapped:
            return i
    return len(messages) - 1


def _system_block(conv: Conversation, default_system: str | None) -> str:
    first = conv.messages[0]
    system = first.content if first.role == "system" else default_system
    if conv.tools:
        lines = "".join("\n" + tojson(tool) for tool in conv.tools)
        prefix = system + "\n\n" if system is not None else ""
        return IM_START + "system\n" + prefix + TOOLS_INTRO + lines + TOOLS_OUTRO
    return _turn("system", system) if system is not None else ""


def _tool_response(messages: tuple[Message, ...], i: int) -> str:
    """Consecutive tool results share one user turn, each in <tool_response> tags."""
    opens = i == 0 or messages[i - 1].role != "tool"
    closes = i == len(messages) - 1 or messages[i + 1].role != "tool"
    return ((IM_START + "user" if opens else "") + "\n<tool_response>\n" + messages[i].content
            + "\n</tool_response>" + (IM_END + "\n" if closes else ""))


def _tool_call(call: ToolCall, quote_string_arguments: bool) -> str:
    raw = isinstance(call.arguments, str) and not quote_string_arguments
    arguments = call.arguments if raw else tojson(call.arguments)
    return '<tool_call>\n{"name": "' + call.name + '", "arguments": ' + arguments + "}\n</tool_call>"


def _turn(role: str, content: str) -> str:
    return IM_START + role + "\n" + content + IM_END + "\n"
