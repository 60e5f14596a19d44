"""tool_choice: "auto", "none", "required" or a named function, as pure functions.

The daemon honours "none" by stripping calls; for "required" / a named function it either
constrains Ollama with `wire.ollama.ollama_format` or retries once with `retry_messages`, which tells the
model what was wrong (`check_tool_choice` or a schema error gives the text).
"""
from __future__ import annotations

import json

from ..wire.tools import parse_tool_choice
from .tools import ToolIndex


def check_tool_choice(tool_choice, tool_calls: list[dict]) -> str | None:
    """The error to tell the model when its calls break tool_choice, else None."""
    mode, name = parse_tool_choice(tool_choice)
    names = [_name_of(call) for call in tool_calls]
    if mode == "required" and not names:
        return "a tool call is required, but the reply called no tool"
    if mode == "named" and name not in names:
        return f"the reply must call the function {name!r}, but it called " + (
            ", ".join(repr(n) for n in names) if names else "no tool")
    return None


def retry_messages(messages: list[dict], assistant_content: str | None, error: str,
                   tools: list[dict], tool_choice=None) -> list[dict]:
    """The conversation for one retry: the bad reply, then a user turn naming the error and
    the schema the call must follow."""
    mode, name = parse_tool_choice(tool_choice)
    index = ToolIndex(tools)
    names = [name] if mode == "named" and name in index.schemas else list(index.schemas)
    schemas = {n: index.schema(n) for n in names}
    instruction = (
        f"Your previous reply was not a valid tool call: {error}.\n"
        "Reply again with only the tool call, as JSON "
        '{"name": <function name>, "arguments": {...}}, no other text. '
        + (f"Call the function {name!r}. " if mode == "named" else "")
        + "Arguments schema per function: " + json.dumps(schemas, ensure_ascii=False))
    return [*messages, {"role": "assistant", "content": assistant_content or ""},
            {"role": "user", "content": instruction}]


def _name_of(call: dict) -> str | None:
    function = call.get("function") if isinstance(call.get("function"), dict) else call
    return function.get("name")
