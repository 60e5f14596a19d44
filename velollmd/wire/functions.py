"""OpenAI's legacy function calling (`functions`, `function_call`), which the API still takes
and older SDK code and LangChain still send.

On the way in a request becomes a tools request: `functions` -> `tools`, `function_call` ->
`tool_choice`, an assistant message's `function_call` -> one tool call with an id, and a
`role: "function"` message -> a `role: "tool"` message answering that id (ids numbered by
position, so the same conversation makes the same request and the same cache key). On the way
out an answer to a request that used `functions` is given back in that shape, as OpenAI does:
`message.function_call` {name, arguments} (its first call; no tool_calls), finish_reason
"function_call", and in a stream `delta.function_call`.
"""
from __future__ import annotations

from typing import AsyncIterator

from ..errors import BadRequest
from .streams import closing

FINISH_REASON = "function_call"


def _fail(param: str, message: str):
    raise BadRequest(f"Invalid '{param}': {message}", param=param, code="invalid_value")


def has_legacy_functions(body: dict) -> bool:
    """Whether a chat body uses legacy function calling anywhere (request or messages)."""
    if "functions" in body or "function_call" in body:
        return True
    messages = body.get("messages")
    return isinstance(messages, list) and any(
        isinstance(m, dict) and (m.get("role") == "function" or m.get("function_call") is not None)
        for m in messages)


def tools_from_functions(body: dict) -> dict:
    """The body in the tools shape (a new dict; the caller's is left alone)."""
    out = {k: v for k, v in body.items() if k not in ("functions", "function_call")}
    functions = body.get("functions")
    if functions is not None:
        if body.get("tools") is not None:
            _fail("functions", "give either 'functions' or 'tools', not both")
        out["tools"] = [{"type": "function", "function": f} for f in _checked_functions(functions)]
    if body.get("function_call") is not None:
        out["tool_choice"] = _tool_choice(body["function_call"], functions)
    if isinstance(body.get("messages"), list):
        out["messages"] = _tool_messages(body["messages"])
    return out


def _checked_functions(functions) -> list[dict]:
    if not isinstance(functions, list) or not functions:
        _fail("functions", "expected a non-empty array of functions")
    for i, function in enumerate(functions):
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            _fail(f"functions[{i}].name", "each function needs a name")
        if function.get("parameters") is not None and not isinstance(function["parameters"], dict):
            _fail(f"functions[{i}].parameters", "expected a JSON Schema object")
    return functions


def _tool_choice(function_call, functions) -> str | dict:
    if functions is None:
        _fail("function_call", "only allowed when 'functions' are given")
    if function_call in ("none", "auto"):
        return function_call
    name = function_call.get("name") if isinstance(function_call, dict) else None
    if not isinstance(name, str):
        _fail("function_call", "expected 'none', 'auto' or {'name': ...}")
    if not any(f["name"] == name for f in functions):
        _fail("function_call", f"function {name!r} is not among the request's functions")
    return {"type": "function", "function": {"name": name}}


def _tool_messages(messages: list) -> list:
    out, call_id = [], None
    for i, message in enumerate(messages):
        if isinstance(message, dict) and message.get("function_call") is not None:
            call_id = f"call_fn{i}"
            message = _assistant_with_tool_call(message, call_id, f"messages[{i}].function_call")
        elif isinstance(message, dict) and message.get("role") == "function":
            message = {**{k: v for k, v in message.items() if k != "role"}, "role": "tool",
                       "tool_call_id": call_id or f"call_fn{i}"}
        out.append(message)
    return out


def _assistant_with_tool_call(message: dict, call_id: str, param: str) -> dict:
    call = message["function_call"]
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        _fail(param, "expected an object with the function's name and arguments")
    function = {"name": call["name"], "arguments": call.get("arguments", "")}
    rest = {k: v for k, v in message.items() if k != "function_call"}
    return {**rest, "tool_calls": [*(rest.get("tool_calls") or []),
                                   {"id": call_id, "type": "function", "function": function}]}


# -- the answer, in the legacy shape ---------------------------------------------------------

def function_call_answer(body: dict) -> dict:
    """A chat.completion with each choice's first tool call as its `function_call`."""
    return {**body, "choices": [_legacy_choice(c) for c in body.get("choices") or []]}


def _legacy_choice(choice: dict) -> dict:
    message = dict(choice.get("message") or {})
    calls = message.pop("tool_calls", None)
    if calls:
        function = calls[0].get("function") or {}
        message["function_call"] = {"name": function.get("name"), "arguments": function.get("arguments", "")}
    return {**choice, "message": message, "finish_reason": _finish(choice.get("finish_reason"))}


def _finish(finish_reason):
    return FINISH_REASON if finish_reason == "tool_calls" else finish_reason


async def function_call_chunks(chunks: AsyncIterator[dict]) -> AsyncIterator[dict]:
    """A chat stream with each choice's first tool call as `delta.function_call` fragments."""
    async with closing(chunks) as source_iter:
        async for chunk in source_iter:
            if chunk.get("choices"):
                chunk = {**chunk, "choices": [_legacy_chunk_choice(c) for c in chunk["choices"]]}
            yield chunk


def _legacy_chunk_choice(choice: dict) -> dict:
    delta = dict(choice.get("delta") or {})
    calls = delta.pop("tool_calls", None)
    fragments = [c.get("function") or {} for c in calls or () if c.get("index", 0) == 0]
    if fragments:
        names = [f["name"] for f in fragments if f.get("name")]
        delta["function_call"] = {**({"name": names[0]} if names else {}),
                                  "arguments": "".join(f.get("arguments") or "" for f in fragments)}
    return {**choice, "delta": delta, "finish_reason": _finish(choice.get("finish_reason"))}
