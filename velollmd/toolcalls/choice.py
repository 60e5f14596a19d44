"""tool_choice: "auto", "none", "required" or a named function, as pure functions.

The daemon honours "none" by stripping calls; for "required" / a named function it either
constrains Ollama with `ollama_format` or retries once with `retry_messages`, which tells the
model what was wrong (`check_tool_choice` or a schema error gives the text).
"""
from __future__ import annotations

import json

from .tools import ToolIndex


def parse_tool_choice(tool_choice) -> tuple[str, str | None]:
    """(mode, function name): mode is "auto", "none", "required" or "named"."""
    if tool_choice is None or tool_choice == "auto":
        return "auto", None
    if tool_choice in ("none", "required"):
        return tool_choice, None
    if tool_choice == "any":  # Mistral's spelling of "required"
        return "required", None
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function") if isinstance(tool_choice.get("function"), dict) else tool_choice
        if isinstance(function.get("name"), str):
            return "named", function["name"]
    return "auto", None


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


def ollama_format(tools: list[dict], tool_choice) -> dict | None:
    """A JSON schema for Ollama's `format` that forces a {"name", "arguments"} call, or None
    when tool_choice does not force a call."""
    mode, name = parse_tool_choice(tool_choice)
    if mode not in ("required", "named"):
        return None
    index = ToolIndex(tools)
    names = [name] if mode == "named" else list(index.schemas)
    options = [{"type": "object", "required": ["name", "arguments"],
                "properties": {"name": {"const": n, "enum": [n]},
                               "arguments": index.schema(n) or {"type": "object"}}}
               for n in names if n in index.schemas]
    if not options:
        return None
    return options[0] if len(options) == 1 else {"anyOf": options}


def _name_of(call: dict) -> str | None:
    function = call.get("function") if isinstance(call.get("function"), dict) else call
    return function.get("name")
