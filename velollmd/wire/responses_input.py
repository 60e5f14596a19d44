"""OpenAI Responses API requests -> the internal chat body (`wire/request.py`).

A Responses request is a list of *items* rather than chat messages: messages whose content
is a list of typed parts (`input_text`, `output_text`, `input_image`), `function_call` items
(the model's calls, one item each) and `function_call_output` items (their results), the same
pair for Codex's `custom` and `local_shell` tools (responses_tools.py), `reasoning` items
that carry a model's thoughts between turns, and `item_reference`s to stored items. In chat
shape a run of calls is one assistant message with `tool_calls`, and a result is a `tool`
message.

Tools are flat (`{"type": "function", "name", "parameters"}`) where chat nests them under
`function`; `text.format` is chat's `response_format`; `max_output_tokens` is `max_tokens`;
`top_logprobs` (or `include` of the output text's logprobs) is chat's `logprobs`;
`reasoning.effort` is chat's `reasoning_effort`.
Anything the daemon cannot serve is a 400 naming the field and the item.
"""
from __future__ import annotations

from typing import Callable, Iterator

from ..errors import BadRequest, NotFound
from .responses_tools import (
    LOCAL_SHELL,
    LOCAL_SHELL_FUNCTION,
    custom_call_to_chat,
    custom_function,
    local_shell_call_to_chat,
    output_call_id,
)

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})
# Hosted tools that OpenAI runs on its side; a client such as Codex CLI sends them by default.
# Without them the model simply answers from what it knows, so they are dropped, not refused.
IGNORED_TOOL_TYPES = frozenset({"web_search", "web_search_preview", "web_search_preview_2025_03_11"})
SAMPLING = {"temperature": "temperature", "top_p": "top_p", "max_output_tokens": "max_tokens",
            "parallel_tool_calls": "parallel_tool_calls", "user": "user"}
# Not in the Responses API, but what local backends take and chat passes on (validated there);
# every other field is OpenAI's own (include, truncation, service_tier, ...) and stays here.
LOGPROBS_INCLUDE = "message.output_text.logprobs"
BACKEND_EXTRAS = ("top_k", "min_p", "seed", "stop", "logit_bias", "presence_penalty", "frequency_penalty",
                  "repeat_penalty", "repetition_penalty")


def _fail(param: str, message: str):
    raise BadRequest(f"Invalid '{param}': {message}", param=param, code="invalid_value")


def _kind(obj, default: str | None = None) -> str | None:
    """The `type` of an item, part or tool when it is a string (anything else: None)."""
    kind = obj.get("type", default) if isinstance(obj, dict) else None
    return kind if isinstance(kind, str) else None


def input_items(value) -> list[dict]:
    """The request's `input` as a list of items: a string is one user message."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        _fail("input", "expected a string or a non-empty array of input items")
    return value


def is_reference(item) -> bool:
    """An `item_reference` (its `type` may be left out: then it is an object with only an `id`)."""
    return isinstance(item, dict) and (item.get("type") == "item_reference" or item.keys() == {"id"})


def resolve_references(items: list[dict], find: Callable[[str], dict | None]) -> list[dict]:
    """`items` with each `item_reference` replaced by the stored item it names (`find`: item
    id -> the item, or None when no stored response of this key holds it: a 404)."""
    out = []
    for i, item in enumerate(items):
        if not is_reference(item):
            out.append(item)
            continue
        found = find(item["id"]) if isinstance(item.get("id"), str) else None
        if found is None:
            raise NotFound(f"Item with id {item.get('id')!r} not found.", param=f"input[{i}].id",
                           code="item_not_found")
        out.append(found)
    return out


def items_to_messages(items: list[dict], param: str, messages: list[dict]) -> list[dict]:
    """Append the chat messages for `items` to `messages` (a run of function calls joins the
    assistant message before it, as chat has them; reasoning items become the
    `reasoning_content` of the assistant message that follows them); `param` names the items
    in errors."""
    names: dict[str, str] = _call_names(messages)
    reasoning: list[str] = []
    for i, item in enumerate(items):
        where = f"{param}[{i}]"
        if not isinstance(item, dict):
            _fail(where, "expected an input item object")
        kind = _kind(item, "message")
        if kind == "reasoning":
            reasoning.append(_reasoning_text(item))
            continue
        if kind == "message":
            messages.append(_message(item, where))
        elif kind in CALLS:
            _add_call(messages, CALLS[kind](item, where), names)
        elif kind in CALL_OUTPUTS:
            messages.append(_call_output(item, where, names))
        else:
            _fail(f"{where}.type", f"input items of type {kind!r} are not supported here; use message, "
                                   "reasoning, item_reference, " + ", ".join([*CALLS, *CALL_OUTPUTS]))
        _attach_reasoning(messages[-1], reasoning)
        reasoning = []
    return messages


def _reasoning_text(item: dict) -> str:
    """The text of a reasoning item: its reasoning_text parts, else its summary (an item with
    only encrypted_content has none)."""
    for key, part_type in (("content", "reasoning_text"), ("summary", "summary_text")):
        parts = item.get(key) if isinstance(item.get(key), list) else []
        texts = [p["text"] for p in parts if _kind(p) == part_type and isinstance(p.get("text"), str)]
        if texts:
            return "".join(texts)
    return ""


def _attach_reasoning(message: dict, reasoning: list[str]) -> None:
    """The thoughts before an assistant message, as its reasoning_content (before any other
    item they led to nothing the model said, and are left out)."""
    text = "".join(reasoning)
    if text and message["role"] == "assistant":
        message["reasoning_content"] = (message.get("reasoning_content") or "") + text


def oldest_turns_dropped(messages: list[dict]) -> Iterator[list[dict]]:
    """`messages`, then the same with its oldest 1, 2, 4... turns dropped, the last keeping only
    the last turn. A turn: a user message and what answered it (calls and their results); the
    leading system and developer messages stay, and what is left starts with a user message."""
    num_leading = next((i for i, m in enumerate(messages) if m.get("role") not in ("system", "developer")),
                       len(messages))
    starts = [i for i in range(num_leading, len(messages)) if messages[i].get("role") == "user"]
    yield messages
    num_dropped, most = 1, len(starts) - 1
    while num_dropped <= most:
        yield messages[:num_leading] + messages[starts[num_dropped]:]
        num_dropped = most if num_dropped < most < num_dropped * 2 else num_dropped * 2


def _call_names(messages: list[dict]) -> dict[str, str]:
    return {c["id"]: c["function"]["name"] for m in messages for c in m.get("tool_calls") or ()}


def _message(item: dict, where: str) -> dict:
    role = ROLES.get(item["role"]) if isinstance(item.get("role"), str) else None
    if role is None:
        _fail(f"{where}.role", f"must be one of {', '.join(ROLES)}")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        _fail(f"{where}.content", "expected a string or an array of content parts")
    parts = _parts(content, f"{where}.content")
    if isinstance(parts, list) and role != "user":
        _fail(f"{where}.content", "images are accepted in user messages only")
    return {"role": role, "content": parts}


def _parts(content: list, where: str) -> str | list[dict]:
    """Content parts as chat's: text only as one string (what every template takes), else
    the text and image_url parts."""
    parts = [_part(part, f"{where}[{j}]") for j, part in enumerate(content)]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _part(part, where: str) -> dict:
    kind = _kind(part)
    if kind in TEXT_PARTS or kind == "refusal":
        text = part.get("text", part.get("refusal"))
        if not isinstance(text, str):
            _fail(f"{where}.text", "expected a string")
        return {"type": "text", "text": text}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            _fail(f"{where}.image_url", "an image URL or a data: URL is required (file_id is not supported)")
        return {"type": "image_url", "image_url": {"url": url, "detail": part.get("detail") or "auto"}}
    _fail(f"{where}.type", f"content parts of type {kind!r} are not supported; "
                           "use input_text, output_text or input_image")


def _function_call(item: dict, where: str) -> dict:
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments", "")
    if not isinstance(call_id, str) or not call_id:
        _fail(f"{where}.call_id", "a non-empty string is required")
    if not isinstance(name, str) or not name:
        _fail(f"{where}.name", "a non-empty string is required")
    if not isinstance(arguments, str):
        _fail(f"{where}.arguments", "expected a JSON string")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments or "{}"}}


def _add_call(messages: list[dict], call: dict, names: dict[str, str]) -> None:
    names[call["id"]] = call["function"]["name"]
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant" and not isinstance(last.get("content"), list):
        last.setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _call_output(item: dict, where: str, names: dict[str, str]) -> dict:
    call_id, output = output_call_id(item, where), item.get("output")
    if isinstance(output, list):                 # an image a tool returns (Codex's view_image) stays
        output = _parts(output, f"{where}.output")
    if not isinstance(output, (str, list)):
        _fail(f"{where}.output", "expected a string or an array of input_text and input_image parts")
    message = {"role": "tool", "tool_call_id": call_id, "content": output}
    if call_id in names:
        message["name"] = names[call_id]
    return message


CALLS = {"function_call": _function_call, "custom_tool_call": custom_call_to_chat,
         "local_shell_call": local_shell_call_to_chat}
CALL_OUTPUTS = ("function_call_output", "custom_tool_call_output", "local_shell_call_output")


# -- tools, tool_choice, text.format, sampling ---------------------------------------------

def chat_tools(tools) -> list[dict]:
    """Responses tools -> chat function tools: function tools as they are, Codex's `custom`
    and `local_shell` tools as functions (responses_tools.py); hosted tools a client sends by
    default are dropped (IGNORED_TOOL_TYPES); any other type is a 400 naming it."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        _fail("tools", "expected an array")
    out, seen = [], set()
    for i, tool in enumerate(tools):
        kind = _kind(tool)
        if kind in IGNORED_TOOL_TYPES:
            continue
        function = _tool_function(tool, kind, f"tools[{i}]")
        if function["name"] in seen:
            _fail(f"tools[{i}].name", f"the tool name {function['name']!r} is used twice")
        seen.add(function["name"])
        out.append({"type": "function", "function": function})
    return out


def _tool_function(tool: dict, kind: str | None, where: str) -> dict:
    if kind == "custom":
        return custom_function(tool, where)
    if kind == LOCAL_SHELL:
        return dict(LOCAL_SHELL_FUNCTION)
    if kind != "function":
        _fail(f"{where}.type", f"tools of type {kind!r} are not supported; "
                               "only 'function', 'custom' and 'local_shell' tools are")
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        _fail(f"{where}.name", "a non-empty string is required")
    parameters = tool.get("parameters") or {"type": "object", "properties": {}}
    function = {"name": tool["name"], "parameters": parameters}
    if not isinstance(function["parameters"], dict):
        _fail(f"{where}.parameters", "expected a JSON Schema object")
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return function


def dropped_tool_types(tools) -> list[str]:
    """The hosted tool types of the request that chat_tools drops, in order, once each."""
    kinds = [_kind(tool) for tool in tools] if isinstance(tools, list) else []
    return list(dict.fromkeys(kind for kind in kinds if kind in IGNORED_TOOL_TYPES))


def chat_tool_choice(choice, tools: list[dict]):
    """"auto" | "none" | "required" | {"type": "function" | "custom", "name"} -> chat's tool_choice."""
    if choice == "required" and not tools:
        _fail("tool_choice", "'required' needs at least one function, custom or local_shell tool in 'tools'")
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    kind = _kind(choice)
    if kind is not None and kind not in ("function", "custom"):
        _fail("tool_choice", f"tool_choice of type {kind!r} is not supported; "
                             "only 'function' and 'custom' tools are")
    name = choice.get("name") if kind is not None else None
    if not isinstance(name, str):
        _fail("tool_choice", "expected 'none', 'auto', 'required' or {'type': 'function', 'name': ...}")
    if not any(t["function"]["name"] == name for t in tools):
        _fail("tool_choice", f"function {name!r} is not among the request's tools")
    return {"type": "function", "function": {"name": name}}


def chat_response_format(text) -> dict | None:
    """`text.format` -> chat's `response_format` (json_schema reaches backends that constrain)."""
    if text is None:
        return None
    if not isinstance(text, dict):
        _fail("text", "expected an object")
    fmt = text.get("format")
    kind = _kind(fmt)
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        _fail("text.format.type", "must be 'text', 'json_object' or 'json_schema'")
    if not isinstance(fmt.get("schema"), dict):
        _fail("text.format.schema", "a JSON Schema object is required")
    schema = {"name": fmt.get("name") or "response", "schema": fmt["schema"]}
    if fmt.get("strict") is not None:
        schema["strict"] = bool(fmt["strict"])
    return {"type": "json_schema", "json_schema": schema}


def chat_body(body: dict, messages: list[dict]) -> dict:
    """The internal chat request for a validated Responses body and its chat `messages`."""
    tools = chat_tools(body.get("tools"))
    chat = {"model": body["model"], "messages": messages, "stream": bool(body.get("stream"))}
    if chat["stream"]:
        chat["stream_options"] = {"include_usage": True}      # usage goes in response.completed
    choice = chat_tool_choice(body.get("tool_choice"), tools)
    if tools:
        chat["tools"] = tools
        if choice is not None:
            chat["tool_choice"] = choice
    for name, chat_name in SAMPLING.items():
        if body.get(name) is not None:
            chat[chat_name] = body[name]
    chat.update((name, body[name]) for name in BACKEND_EXTRAS if body.get(name) is not None)
    if (body.get("reasoning") or {}).get("effort") is not None:
        chat["reasoning_effort"] = body["reasoning"]["effort"]
    if wants_logprobs(body):
        chat["logprobs"], chat["top_logprobs"] = True, body.get("top_logprobs") or 0
    response_format = chat_response_format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    return chat


def wants_logprobs(body: dict) -> bool:
    """Output text log probabilities: asked by `top_logprobs` or by `include`."""
    include = body.get("include")
    return body.get("top_logprobs") is not None or (isinstance(include, list) and LOGPROBS_INCLUDE in include)


def instructions_message(instructions) -> list[dict]:
    """`instructions` as the leading system message (not carried over by previous_response_id)."""
    return [{"role": "system", "content": instructions}] if instructions else []
