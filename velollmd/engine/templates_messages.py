"""OpenAI-shaped chat messages checked and brought to one shape before a template renders them.

The conventions every family shares (the jinja oracle in the tests feeds the real templates
messages brought to the same shape, as llama.cpp and vLLM do):
- content: a string; null is ""; a list of {"type": "text"} parts is their texts joined by "\\n".
- tool_calls: `function.arguments` (a JSON string on the wire) is parsed into its value, so
  templates that print it with `tojson` write canonical JSON; text that is not JSON stays a string.
- an empty or null `tool_calls` is no tool call at all.
- a "developer" message is a system message (OpenAI's newer name for it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES = {"developer": "system"}


class TemplateError(ValueError):
    """A conversation the chat template cannot render (the reason names the message and field)."""


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: object          # the parsed JSON value, or the raw text when it is not JSON


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    reasoning_content: str | None = None


@dataclass(frozen=True)
class Conversation:
    """What a family renderer gets: checked messages plus the render options."""
    messages: tuple[Message, ...]
    tools: list[dict] | None
    add_generation_prompt: bool
    bos_token: str
    eos_token: str
    date_string: str | None = None      # Llama 3.x "Today Date:" (None: the template's own default)
    enable_thinking: bool | None = None  # Qwen3: False opens the answer with an empty <think> block


def tojson(value: object, indent: int | None = None) -> str:
    """HF transformers' `tojson` filter (llama.cpp's minja matches it): no HTML escaping."""
    return json.dumps(value, ensure_ascii=False, indent=indent)


def normalize_messages(messages: list[dict]) -> tuple[Message, ...]:
    if not isinstance(messages, list):
        raise TemplateError(f"messages: expected a list, got {type(messages).__name__}")
    return tuple(_message(i, m) for i, m in enumerate(messages))


def _message(i: int, raw: object) -> Message:
    where = f"messages[{i}]"
    if not isinstance(raw, dict):
        raise TemplateError(f"{where}: expected an object, got {type(raw).__name__}")
    role = raw.get("role")
    if role is None:
        raise TemplateError(f"{where}: missing 'role'")
    role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
    if role not in ROLES:
        raise TemplateError(f"{where}.role: {role!r} is not one of {', '.join(ROLES)}")
    calls = raw.get("tool_calls") or ()
    if calls and role != "assistant":
        raise TemplateError(f"{where}.tool_calls: only assistant messages carry tool calls")
    reasoning = raw.get("reasoning_content")
    return Message(
        role=role,
        content=content_text(raw.get("content"), where),
        tool_calls=tuple(_tool_call(f"{where}.tool_calls[{j}]", c) for j, c in enumerate(calls)),
        tool_call_id=_optional_str(raw, "tool_call_id", where),
        name=_optional_str(raw, "name", where),
        reasoning_content=None if reasoning is None else content_text(reasoning, where),
    )


def content_text(content: object, where: str) -> str:
    """A message's content as one string (null is "", text parts joined by newlines)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            is_text = isinstance(part, dict) and part.get("type") == "text"
            if not is_text or not isinstance(part.get("text"), str):
                raise TemplateError(f"{where}.content[{j}]: only {{\"type\": \"text\", \"text\": ...}} parts "
                                    "can be rendered")
            texts.append(part["text"])
        return "\n".join(texts)
    raise TemplateError(f"{where}.content: expected a string, null or a list of text parts, "
                        f"got {type(content).__name__}")


def _tool_call(where: str, raw: object) -> ToolCall:
    if not isinstance(raw, dict):
        raise TemplateError(f"{where}: expected an object")
    function = raw.get("function", raw)
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise TemplateError(f"{where}.function.name: missing")
    return ToolCall(id=str(raw.get("id") or ""), name=name, arguments=_arguments(function.get("arguments")))


def _arguments(arguments: object) -> object:
    if arguments is None:
        return {}
    if not isinstance(arguments, str):
        return arguments
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _optional_str(raw: dict, key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise TemplateError(f"{where}.{key}: expected a string")
    return value
