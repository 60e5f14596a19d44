"""Validation of Anthropic Messages request bodies (/v1/messages, /v1/messages/count_tokens).

A bad field is a 400 naming it with Anthropic's dotted path (`messages.0.content.1.source`);
fields we do not know are ignored, as Anthropic ignores them. What passes here translates to
an OpenAI chat body without further checks (wire/anthropic.py).
"""
from __future__ import annotations

from ..errors import BadRequest
from .validate import MAX_STOP_SEQUENCES

ROLES = frozenset({"user", "assistant", "system"})
NUMBER = (int, float)
TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})
THINKING_TYPES = ("enabled", "adaptive", "disabled")


def _fail(path: str, message: str):
    raise BadRequest(f"{path}: {message}", param=path)


def _is(value, types) -> bool:
    return isinstance(value, types) and not isinstance(value, bool)


def _expect(obj: dict, name: str, types, what: str, path: str, required: bool = False) -> None:
    value = obj.get(name)
    if value is None:
        if required:
            _fail(f"{path}{name}", "Field required")
        return
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        _fail(f"{path}{name}", f"expected {what}, got a boolean")
    if not isinstance(value, types):
        _fail(f"{path}{name}", f"expected {what}, got {type(value).__name__}")


def _range(body: dict, name: str, low, high) -> None:
    value = body.get(name)
    if value is not None and not (low <= value <= high):
        _fail(name, f"must be between {low} and {high}, got {value}")


def check_messages_request(body: dict, *, count_only: bool = False) -> dict:
    """The body of /v1/messages (`count_only`: of /v1/messages/count_tokens, no max_tokens)."""
    _expect(body, "model", str, "a string", "", required=True)
    if not body["model"]:
        _fail("model", "must not be empty")
    if not count_only:
        _expect(body, "max_tokens", int, "an integer", "", required=True)
        _range(body, "max_tokens", 1, 1 << 30)
    for name in ("temperature", "top_p"):
        _expect(body, name, NUMBER, "a number", "")
        _range(body, name, 0, 1)
    _expect(body, "top_k", int, "an integer", "")
    _range(body, "top_k", 0, 1 << 20)
    _expect(body, "stream", bool, "a boolean", "")
    for name in ("metadata", "thinking", "output_config"):
        _expect(body, name, dict, "an object", "")
    _check_thinking(body.get("thinking"))
    _check_output_format((body.get("output_config") or {}).get("format"), "output_config.format")
    _check_output_format(body.get("output_format"), "output_format")
    _check_stop_sequences(body.get("stop_sequences"))
    _check_system(body.get("system"))
    _check_messages(body.get("messages"))
    names = _check_tools(body.get("tools"))
    _check_tool_choice(body.get("tool_choice"), names)
    return body


def _check_stop_sequences(stop) -> None:
    if stop is None:
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        _fail("stop_sequences", "expected an array of non-empty strings")
    if len(stop) > MAX_STOP_SEQUENCES:                 # checked here to name Anthropic's field
        _fail("stop_sequences", f"at most {MAX_STOP_SEQUENCES} stop sequences")


def _check_thinking(thinking) -> None:
    """{"type": "enabled", "budget_tokens": N} | {"type": "adaptive"} | {"type": "disabled"}."""
    if thinking is None:
        return
    if thinking.get("type") not in THINKING_TYPES:
        _fail("thinking.type", "expected 'enabled', 'adaptive' or 'disabled'")
    _expect(thinking, "budget_tokens", int, "an integer", "thinking.")


def _check_output_format(fmt, path: str) -> None:
    """Structured outputs: {"type": "json_schema", "schema": {...}} (GA: output_config.format;
    the beta's top-level output_format)."""
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        _fail(f"{path}.type", "expected 'json_schema'")
    _expect(fmt, "schema", dict, "a JSON Schema object", f"{path}.", required=True)


def _check_system(system) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        _fail("system", "expected a string or an array of text blocks")
    for i, block in enumerate(system):
        is_text = isinstance(block, dict) and block.get("type") == "text"
        if not (is_text and isinstance(block.get("text"), str)):
            _fail(f"system.{i}", "expected a text block {'type': 'text', 'text': ...}")


def _check_messages(messages) -> None:
    if not isinstance(messages, list):
        _fail("messages", "Field required: an array of messages")
    for i, message in enumerate(messages):
        path = f"messages.{i}"
        if not isinstance(message, dict):
            _fail(path, "expected an object")
        if not isinstance(message.get("role"), str) or message["role"] not in ROLES:
            _fail(f"{path}.role", "must be 'user' or 'assistant'")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            _fail(f"{path}.content", "expected a string or an array of content blocks")
        for j, block in enumerate(content):
            _check_block(block, f"{path}.content.{j}")


BLOCK_FIELDS = {                 # type -> (required field, its types, what)
    "text": ("text", str, "a string"),
    "image": ("source", dict, "an object"),
    "document": ("source", dict, "an object"),
    "tool_use": ("name", str, "a string"),
    "tool_result": ("tool_use_id", str, "a string"),
    "thinking": ("thinking", str, "a string"),
    "redacted_thinking": ("data", str, "a string"),
}


def _check_block(block, path: str) -> None:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        _fail(path, "expected a content block object with a 'type'")
    kind = block["type"]
    if kind not in BLOCK_FIELDS:
        _fail(f"{path}.type", f"unsupported content block type {kind!r}; expected one of "
              + ", ".join(sorted(BLOCK_FIELDS)))
    name, types, what = BLOCK_FIELDS[kind]
    _expect(block, name, types, what, f"{path}.", required=True)
    if kind == "image":
        _check_image_source(block["source"], f"{path}.source")
    elif kind == "document":
        _check_document(block, f"{path}")
    elif kind == "tool_use":
        _expect(block, "id", str, "a string", f"{path}.", required=True)
        _expect(block, "input", dict, "an object", f"{path}.")
    elif kind == "tool_result":
        _check_tool_result(block, path)


def _check_image_source(source: dict, path: str) -> None:
    kind = source.get("type")
    if kind == "base64":
        _expect(source, "media_type", str, "a string", f"{path}.", required=True)
        _expect(source, "data", str, "a string", f"{path}.", required=True)
    elif kind == "url":
        _expect(source, "url", str, "a string", f"{path}.", required=True)
    else:
        _fail(f"{path}.type", "expected 'base64' or 'url'")


def _check_document(block: dict, path: str) -> None:
    """A document the model reads as text: plain text (source.type "text") or text and image
    blocks (source.type "content"). A PDF (base64, url, file) needs a model that reads PDFs,
    which no local backend has: a 400 saying so, rather than a prompt without it."""
    for name in ("title", "context"):
        _expect(block, name, str, "a string", f"{path}.")
    source, where = block["source"], f"{path}.source"
    kind = source.get("type")
    if kind == "text":
        _expect(source, "data", str, "a string", f"{where}.", required=True)
    elif kind == "content":
        _check_text_and_images(source.get("content"), f"{where}.content")
    else:
        _fail(f"{where}.type", f"documents of source type {kind!r} (PDFs) cannot be read by local models; "
              "send the document's text (source type 'text' or 'content')")


def _check_tool_result(block: dict, path: str) -> None:
    _expect(block, "is_error", bool, "a boolean", f"{path}.")
    if block.get("content") is not None:
        _check_text_and_images(block["content"], f"{path}.content")


def _check_text_and_images(content, path: str) -> None:
    """A tool result's or a document's content: a string, or an array of text and image blocks."""
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        _fail(path, "expected a string or an array of text and image blocks")
    for k, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("text", "image"):
            _fail(f"{path}.{k}", "expected a text or image block")
        _check_block(part, f"{path}.{k}")


def _check_tools(tools) -> set[str]:
    if tools is None:
        return set()
    if not isinstance(tools, list):
        _fail("tools", "expected an array of tools")
    names = set()
    for i, tool in enumerate(tools):
        path = f"tools.{i}"
        if not isinstance(tool, dict):
            _fail(path, "expected an object")
        if tool.get("type") not in (None, "custom"):
            _fail(f"{path}.type", f"tool type {tool.get('type')!r} is not supported here; "
                  "define it as a custom tool with an input_schema")
        _expect(tool, "name", str, "a string", f"{path}.", required=True)
        _expect(tool, "description", str, "a string", f"{path}.")
        _expect(tool, "input_schema", dict, "a JSON Schema object", f"{path}.", required=True)
        if tool["name"] in names:
            _fail(f"{path}.name", f"the tool name {tool['name']!r} is used twice")
        names.add(tool["name"])
    return names


def _check_tool_choice(choice, names: set[str]) -> None:
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if not isinstance(kind, str) or kind not in TOOL_CHOICES:
        _fail("tool_choice", "expected {'type': 'auto' | 'any' | 'tool' | 'none'}")
    _expect(choice, "disable_parallel_tool_use", bool, "a boolean", "tool_choice.")
    if kind in ("any", "tool") and not names:
        _fail("tool_choice", f"{kind!r} needs at least one tool in 'tools'")
    if choice["type"] == "tool":
        _expect(choice, "name", str, "a string", "tool_choice.", required=True)
        if choice["name"] not in names:
            _fail("tool_choice.name", f"tool {choice['name']!r} is not among the request's tools")
