"""Codex CLI's tool types for the Responses API, carried over chat's function tools.

Local backends know one kind of tool: a function taking a JSON object. Codex CLI also sends

    custom       {"type": "custom", "name", "description", "format": {"type": "grammar",
                 "syntax": "lark", "definition"} | {"type": "text"}}: a freeform tool whose
                 input is one string (Codex's `apply_patch`)
    local_shell  {"type": "local_shell"}: run a command on the user's machine

Both are offered to the backend as functions (a custom tool takes one string `input`; the
shell takes `command`, `workdir`, `timeout_ms`, `env`), and a call the model makes to one of
them comes back as that tool's own output item (`custom_tool_call` with `input`,
`local_shell_call` with an `exec` action). Earlier calls and their outputs in the input go
the other way: they become the assistant's tool call and the tool message.
"""
from __future__ import annotations

import json

from ..errors import BadRequest
from .ids import item_id

LOCAL_SHELL = "local_shell"
LOCAL_SHELL_FUNCTION = {
    "name": LOCAL_SHELL,
    "description": "Runs a command on the user's machine and returns its output.",
    "parameters": {"type": "object", "properties": {
        "command": {"type": "array", "items": {"type": "string"},
                    "description": "the program and its arguments"},
        "workdir": {"type": "string", "description": "the directory to run it in"},
        "timeout_ms": {"type": "integer", "description": "the time limit in milliseconds"},
        "env": {"type": "object", "additionalProperties": {"type": "string"},
                "description": "environment variables to set"}},
        "required": ["command"]},
}
CUSTOM_PARAMETERS = {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}


def _fail(param: str, message: str):
    raise BadRequest(f"Invalid '{param}': {message}", param=param, code="invalid_value")


# -- tools: offered as functions -------------------------------------------------------------

def custom_function(tool: dict, where: str) -> dict:
    """A `custom` tool as the chat function the backend is offered: one string `input`, its
    format said in one line of the description."""
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        _fail(f"{where}.name", "a non-empty string is required")
    description = tool.get("description")
    if description is not None and not isinstance(description, str):
        _fail(f"{where}.description", "expected a string")
    lines = [description] if description else []
    lines.append(_format_line(tool.get("format"), f"{where}.format"))
    return {"name": name, "description": "\n\n".join(lines), "parameters": CUSTOM_PARAMETERS}


def _format_line(fmt, where: str) -> str:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return 'Pass the whole input as the string argument "input" (free-form text).'
    if kind != "grammar":
        _fail(f"{where}.type", "must be 'text' or 'grammar'")
    syntax, definition = fmt.get("syntax"), fmt.get("definition")
    if syntax not in ("lark", "regex"):
        _fail(f"{where}.syntax", "must be 'lark' or 'regex'")
    if not isinstance(definition, str) or not definition:
        _fail(f"{where}.definition", "a non-empty string is required")
    return (f'Pass the whole input as the string argument "input"; it must match this {syntax} grammar:\n'
            + definition)


def call_kinds(tools) -> dict[str, str]:
    """Function name -> "custom" | "local_shell" for the request's tools whose calls come back
    as their own item types (every other name is a plain function_call)."""
    kinds = {}
    for tool in tools if isinstance(tools, list) else ():
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "custom" and isinstance(tool.get("name"), str):
            kinds[tool["name"]] = "custom"
        elif kind == LOCAL_SHELL:
            kinds[LOCAL_SHELL] = LOCAL_SHELL
    return kinds


# -- calls the model made -> output items ----------------------------------------------------

def _arguments(arguments: str) -> dict | None:
    try:
        value = json.loads(arguments)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def custom_input(arguments: str) -> str:
    """The string a custom tool gets from the function arguments {"input": ...}; arguments
    that are not that object are passed on as they are (the text is the model's input)."""
    value = _arguments(arguments)
    if value is not None and isinstance(value.get("input"), str):
        return value["input"]
    return arguments


def exec_action(arguments: str) -> dict:
    """local_shell function arguments -> the `exec` action of a local_shell_call."""
    value = _arguments(arguments) or {}
    command = value.get("command")
    if isinstance(command, str):
        command = [command]
    env = value.get("env") if isinstance(value.get("env"), dict) else {}
    timeout = value.get("timeout_ms")
    return {"type": "exec", "command": [str(c) for c in command] if isinstance(command, list) else [],
            "env": {str(k): str(v) for k, v in env.items()},
            "timeout_ms": timeout if isinstance(timeout, int) and not isinstance(timeout, bool) else None,
            "working_directory": value.get("workdir") if isinstance(value.get("workdir"), str) else None,
            "user": None}


def custom_tool_call_item(call_id: str, name: str, arguments: str, status: str = "completed",
                          id_: str | None = None) -> dict:
    return {"id": id_ or item_id("ctc"), "type": "custom_tool_call", "status": status, "call_id": call_id,
            "name": name, "input": custom_input(arguments)}


def local_shell_call_item(call_id: str, arguments: str, status: str = "completed",
                          id_: str | None = None) -> dict:
    return {"id": id_ or item_id("lsh"), "type": "local_shell_call", "status": status, "call_id": call_id,
            "action": exec_action(arguments)}


# -- earlier calls in the input -> chat tool calls -------------------------------------------

def _call_id(item: dict, where: str, *names: str) -> str:
    for name in names:
        if isinstance(item.get(name), str) and item[name]:
            return item[name]
    _fail(f"{where}.{names[0]}", "a non-empty string is required")


def custom_call_to_chat(item: dict, where: str) -> dict:
    name, value = item.get("name"), item.get("input")
    if not isinstance(name, str) or not name:
        _fail(f"{where}.name", "a non-empty string is required")
    if not isinstance(value, str):
        _fail(f"{where}.input", "expected a string")
    return {"id": _call_id(item, where, "call_id"), "type": "function",
            "function": {"name": name, "arguments": json.dumps({"input": value}, ensure_ascii=False)}}


def local_shell_call_to_chat(item: dict, where: str) -> dict:
    action = item.get("action")
    if not isinstance(action, dict) or not isinstance(action.get("command"), list):
        _fail(f"{where}.action", "an exec action with a command array is required")
    arguments = {"command": action["command"]}
    for field, name in (("working_directory", "workdir"), ("timeout_ms", "timeout_ms"), ("env", "env")):
        if action.get(field):
            arguments[name] = action[field]
    return {"id": _call_id(item, where, "call_id", "id"), "type": "function",
            "function": {"name": LOCAL_SHELL, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def output_call_id(item: dict, where: str) -> str:
    """The call an output item answers: `call_id`, or `id` for local_shell_call_output (the
    SDK's shape names the call `id` there)."""
    names = ("call_id", "id") if item.get("type") == "local_shell_call_output" else ("call_id",)
    return _call_id(item, where, *names)
