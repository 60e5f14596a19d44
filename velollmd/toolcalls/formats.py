"""Readers for the shapes models write tool calls in. Each turns text into RawCalls or None.

- JSON values: OpenAI lists, `{"name", "arguments"|"parameters"|"args"|"input"}`,
  `{"function": {...}}` wrappers, `{"tool_calls": [...]}`, a document quoted as a string,
  several values one per line.
- pythonic: `[get_weather(city="Paris"), f(a=1)]` (Llama 3.2/4, Gemma tool_code), via `ast`.
- Qwen3-coder XML: `<function=NAME><parameter=K>V</parameter></function>`.
- Mistral v11+: `name[ARGS]{...}` (optionally `[CALL_ID]id`).
None means "not a call": the caller keeps the text as content.
"""
from __future__ import annotations

import ast
import re
from typing import Callable

from .scan import find_value_end
from .tools import RawCall, ToolIndex

Loads = Callable[[str], tuple[object, list[str]]]

NAME_KEYS = ("name", "function", "tool", "tool_name", "function_name", "recipient_name")
ARG_KEYS = ("arguments", "parameters", "args", "input", "params")
_ALLOWED_EXTRA = {"id", "type", "call_id", "index", "tool_call_id"}  # tool_call_id: Command R7B
_LIST_KEYS = ("tool_calls", "tool_uses", "calls")
_SEPARATORS_RE = re.compile(r"[\s,;]*")
_PYTHONIC_RE = re.compile(r"\s*\[?\s*[A-Za-z_][\w.]*\s*\(")
_FUNCTION_RE = re.compile(r"<function=([^>\n]+)>(.*?)(?:</function>|(?=<function=)|$)", re.S)
_PARAMETER_RE = re.compile(r"<parameter=([^>\n]+)>(.*?)(?:</parameter>|(?=<parameter=)|$)", re.S)
_MISTRAL_RE = re.compile(r"\s*([\w.\-]+)\s*(?:\[CALL_ID\]\s*([\w\-]+)\s*)?(?:\[ARGS\])?\s*")
_PY_NAMES = {"true": True, "false": False, "null": None, "none": None}


def value_to_calls(value: object, index: ToolIndex, loads: Loads, fixes: list[str]) -> list[RawCall] | None:
    """The calls a parsed JSON value spells, or None when it is not (only) calls."""
    if isinstance(value, str):
        return _quoted_document(value, index, loads, fixes)
    if isinstance(value, list):
        calls: list[RawCall] = []
        for position, item in enumerate(value):
            found = value_to_calls(item, index, loads, fixes)
            if found is None and calls and _cut_last_item(value, position, fixes):
                fixes.append("dropped-cut-call")
                break
            if found is None:
                return None
            calls.extend(found)
        return calls or None
    if isinstance(value, dict):
        return _dict_to_calls(value, index, loads, fixes)
    return None


def _cut_last_item(value: list, position: int, fixes: list[str]) -> bool:
    """The list's last item, in a list the text's end cut (`[{...}, {"na`): a call cut before
    its name and arguments were complete, dropped while the calls before it are kept."""
    return position == len(value) - 1 and "truncated" in fixes


def _quoted_document(value: str, index: ToolIndex, loads: Loads, fixes: list[str]):
    text = value.strip()
    if not text.startswith(("{", "[")):
        return None
    try:
        inner, inner_fixes = loads(text)
    except ValueError:
        return None
    calls = value_to_calls(inner, index, loads, fixes)
    if calls:
        fixes.extend(["quoted-json", *inner_fixes])
    return calls


def _dict_to_calls(value: dict, index: ToolIndex, loads: Loads, fixes: list[str]):
    for key in _LIST_KEYS:
        if isinstance(value.get(key), list) and set(value) <= {key, "content", "role"}:
            return value_to_calls(value[key], index, loads, fixes)
    function = value.get("function")
    if isinstance(function, dict) and set(value) <= {"function"} | _ALLOWED_EXTRA:
        calls = value_to_calls(function, index, loads, fixes)
        if calls and len(calls) == 1 and calls[0].id is None:
            calls[0].id = _str_or_none(value.get("id"))
        return calls
    name_key = next((k for k in NAME_KEYS if isinstance(value.get(k), str)), None)
    if name_key is None:
        return _single_key_call(value, index)
    arg_keys = [k for k in ARG_KEYS if k in value]
    if len(arg_keys) > 1 or set(value) - {name_key, *arg_keys} - _ALLOWED_EXTRA:
        return None
    arguments = value[arg_keys[0]] if arg_keys else {}
    call_id = _str_or_none(value.get("id") or value.get("call_id"))
    return [RawCall(value[name_key], arguments, call_id)]


def _single_key_call(value: dict, index: ToolIndex):
    """`{"get_weather": {"city": "Paris"}}`: one key naming a tool, its arguments as value."""
    if len(value) != 1:
        return None
    (name, arguments), = value.items()
    if index.resolve(name)[0] and isinstance(arguments, dict):
        return [RawCall(name, arguments, None, ["single-key-call"])]
    return None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_json_values(body: str, loads: Loads, fixes: list[str]):
    """Yield (value, start, end) for JSON values one after another (newlines, commas or `;`
    between); stops at the first text that is not a JSON value."""
    i, n = 0, len(body)
    while True:
        i = _SEPARATORS_RE.match(body, i).end()
        if i >= n or body[i] not in "{[\"":
            return
        end = find_value_end(body, i) or n
        try:
            value, value_fixes = loads(body[i:end])
        except ValueError:
            return
        fixes.extend(value_fixes)
        yield value, i, end
        i = end


# -- pythonic ------------------------------------------------------------------------------
def looks_pythonic(text: str) -> bool:
    return _PYTHONIC_RE.match(text) is not None


def parse_pythonic(text: str, index: ToolIndex) -> list[RawCall] | None:
    """`[f(a=1), g(b="x")]` or `f(a=1)`; positional arguments map to the schema's order."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError):
        return None
    nodes = tree.elts if isinstance(tree, (ast.List, ast.Tuple)) else [tree]
    calls = [_ast_call(node, index) for node in nodes]
    if not calls or any(call is None for call in calls):
        return None
    return calls


def _ast_call(node: ast.AST, index: ToolIndex) -> RawCall | None:
    if not isinstance(node, ast.Call):
        return None
    name = _dotted_name(node.func)
    if name is None:
        return None
    try:
        arguments = {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg}
        positional = [_literal(arg) for arg in node.args]
    except ValueError:
        return None
    call = RawCall(name, arguments)
    if positional:
        real_name = index.resolve(name)[0]
        order = list(index.schema(real_name).get("properties", {})) if real_name else []
        if len(positional) > len(order):
            return None
        arguments.update(zip(order, positional))
        call.fixes.append("positional-args")
    return call


def _dotted_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted_name(node.value)
        return base + "." + node.attr if base else None
    return None


def _literal(node: ast.AST) -> object:
    """ast.literal_eval plus JSON's true/false/null."""
    if isinstance(node, ast.Name) and node.id.lower() in _PY_NAMES:
        return _PY_NAMES[node.id.lower()]
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [_literal(elt) for elt in node.elts]
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    return ast.literal_eval(node)


# -- Qwen3-coder XML -----------------------------------------------------------------------
def parse_function_xml(body: str, loads: Loads, fixes: list[str]) -> list[RawCall] | None:
    """`<function=NAME><parameter=K>V</parameter>...</function>`; also `<function=NAME>{json}`."""
    calls = []
    for match in _FUNCTION_RE.finditer(body):
        name, inner = match.group(1).strip(), match.group(2)
        params = _PARAMETER_RE.findall(inner)
        if params:
            arguments: object = {key.strip(): _strip_one_newline(value) for key, value in params}
        elif inner.strip():
            arguments = inner.strip()
        else:
            arguments = {}
        calls.append(RawCall(name, arguments))
    return calls or None


def _strip_one_newline(value: str) -> str:
    if value.startswith("\n"):
        value = value[1:]
    if value.endswith("\n"):
        value = value[:-1]
    return value


# -- Mistral name[ARGS]{...} ---------------------------------------------------------------
def parse_mistral_named(body: str, loads: Loads, fixes: list[str]) -> tuple[list[RawCall], int]:
    """`name[ARGS]{...}` repeated; returns (calls, end of what was read)."""
    calls: list[RawCall] = []
    i = 0
    while True:
        match = _MISTRAL_RE.match(body, i)
        start = match.end() if match else i
        if not match or not match.group(1) or start >= len(body) or body[start] not in "{[":
            return calls, i
        end = find_value_end(body, start) or len(body)
        try:
            arguments, arg_fixes = loads(body[start:end])
        except ValueError:
            return calls, i
        fixes.extend(arg_fixes)
        calls.append(RawCall(match.group(1), arguments, match.group(2)))
        i = end
