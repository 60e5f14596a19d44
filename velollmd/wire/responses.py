"""Chat answers -> OpenAI Responses API `response` objects and their output items.

A chat answer has one message holding everything; a Response lists *output items* in order:
a `reasoning` item when the backend gave `reasoning_content`, a `message` item with one
`output_text` part, then one item per tool call: `function_call`, or for Codex's tools
`custom_tool_call` / `local_shell_call` (responses_tools.py). A chat `finish_reason` of
"length" makes the response `incomplete` (reason `max_output_tokens`). The streamed form
(responses_stream.py) builds the same items with the same helpers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .ids import item_id
from .responses_tools import call_kinds, custom_tool_call_item, local_shell_call_item

INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def text_of(value) -> str:
    """A string field of a backend's answer; anything else (wire/shape.py checks only what
    every dialect reads) counts as empty."""
    return value if isinstance(value, str) else ""


def dict_of(value) -> dict:
    return value if isinstance(value, dict) else {}


@dataclass
class ResponseDraft:
    """What a response echoes of its request, fixed before the answer comes."""
    id: str
    request: dict                       # the validated Responses body (model, tools, metadata...)
    created_at: int = 0
    kinds: dict[str, str] = field(init=False)   # function name -> "custom" | "local_shell"

    def __post_init__(self):
        self.created_at = self.created_at or int(time.time())
        self.kinds = call_kinds(self.request.get("tools"))


def response_object(draft: ResponseDraft, status: str, output: list[dict], usage: dict | None = None,
                    incomplete: dict | None = None, error: dict | None = None) -> dict:
    """A whole `response` object in OpenAI's field order, echoing the request's settings."""
    request = draft.request
    return {
        "id": draft.id, "object": "response", "created_at": draft.created_at, "status": status,
        "background": False, "completed_at": int(time.time()) if status == "completed" else None,
        "error": error, "incomplete_details": incomplete, "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"), "model": request["model"], "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": _reasoning(request.get("reasoning")),
        "store": request.get("store", True), "temperature": request.get("temperature", 1.0),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice") or "auto", "tools": request.get("tools") or [],
        "top_logprobs": request.get("top_logprobs"), "top_p": request.get("top_p", 1.0), "truncation": request.get("truncation") or "disabled",
        "usage": usage, "user": request.get("user"), "metadata": request.get("metadata") or {},
    }


def _reasoning(reasoning: dict | None) -> dict:
    """The request's reasoning settings as OpenAI echoes them: effort and summary, null when not asked."""
    reasoning = reasoning or {}
    return {"effort": reasoning.get("effort"), "summary": reasoning.get("summary", reasoning.get("generate_summary"))}


def status_of(finish_reason: str | None) -> tuple[str, dict | None]:
    """("completed" | "incomplete", incomplete_details) for a chat finish_reason."""
    reason = INCOMPLETE_REASONS.get(text_of(finish_reason))
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def usage_of(usage: dict | None) -> dict | None:
    """Chat usage -> Responses usage (input/output tokens and their details)."""
    if not usage:
        return None
    num_input, num_output = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    cached = dict_of(usage.get("prompt_tokens_details")).get("cached_tokens")
    reasoning = dict_of(usage.get("completion_tokens_details")).get("reasoning_tokens")
    return {"input_tokens": num_input,
            "input_tokens_details": {"cached_tokens": _count(cached), "cache_write_tokens": 0},
            "output_tokens": num_output, "output_tokens_details": {"reasoning_tokens": _count(reasoning)},
            "total_tokens": num_input + num_output}


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# -- output items --------------------------------------------------------------------------

def text_part(text: str, logprobs: list[dict] | None = None) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def logprobs_of(choice: dict) -> list[dict]:
    """A chat choice's (or chunk choice's) token logprobs: chat's `logprobs.content` entries
    ({token, logprob, bytes, top_logprobs}) are the Responses API's as they are."""
    content = dict_of(choice.get("logprobs")).get("content")
    return [entry for entry in content if isinstance(entry, dict)] if isinstance(content, list) else []


def message_item(text: str | None, status: str = "completed", id_: str | None = None,
                 logprobs: list[dict] | None = None) -> dict:
    """An assistant message item; `text` None: just added, no content part yet."""
    return {"id": id_ or item_id("msg"), "type": "message", "status": status, "role": "assistant",
            "content": [] if text is None else [text_part(text, logprobs)]}


def reasoning_part(text: str) -> dict:
    return {"type": "reasoning_text", "text": text}


def reasoning_item(text: str | None, status: str = "completed", id_: str | None = None) -> dict:
    return {"id": id_ or item_id("rs"), "type": "reasoning", "status": status, "summary": [],
            "content": [] if text is None else [reasoning_part(text)]}


def function_call_item(call: dict, status: str = "completed", id_: str | None = None) -> dict:
    """A chat tool call ({"id", "function": {"name", "arguments"}}) as a function_call item."""
    function = dict_of(call.get("function"))
    return {"id": id_ or item_id("fc"), "type": "function_call", "status": status,
            "call_id": text_of(call.get("id")), "name": text_of(function.get("name")),
            "arguments": text_of(function.get("arguments"))}


def call_item(call: dict, kinds: dict[str, str], status: str = "completed", id_: str | None = None) -> dict:
    """A chat tool call as the item of its tool's type (`kinds`: ResponseDraft.kinds)."""
    function = dict_of(call.get("function"))
    call_id, name = text_of(call.get("id")), text_of(function.get("name"))
    arguments = text_of(function.get("arguments"))
    kind = kinds.get(name)
    if kind == "custom":
        return custom_tool_call_item(call_id, name, arguments, status, id_)
    if kind == "local_shell":
        return local_shell_call_item(call_id, arguments, status, id_)
    return function_call_item(call, status, id_)


def output_items(message: dict, kinds: dict[str, str], status: str = "completed",
                 logprobs: list[dict] | None = None) -> list[dict]:
    """The output items of one chat answer message, in the order a stream sends them;
    `status` is the last item's ("incomplete" when the answer was cut at max tokens). A
    message item comes with text, or when there is nothing else: an answer cut while the
    model still thought is its reasoning alone, as OpenAI answers (and as the stream has it)."""
    items = []
    if text_of(message.get("reasoning_content")):
        items.append(reasoning_item(message["reasoning_content"]))
    calls = [call for call in message.get("tool_calls") or () if isinstance(call, dict)]
    if message.get("content") or not (items or calls):
        items.append(message_item(text_of(message.get("content")), logprobs=logprobs))
    items += [call_item(call, kinds) for call in calls]
    items[-1]["status"] = status
    return items


def response_from_chat(draft: ResponseDraft, answer: dict) -> dict:
    """A whole chat.completion -> the `response` object."""
    choice = (answer.get("choices") or [{}])[0]
    status, incomplete = status_of(choice.get("finish_reason"))
    output = output_items(choice.get("message") or {}, draft.kinds, status, logprobs_of(choice))
    return response_object(draft, status, output, usage_of(answer.get("usage")), incomplete)
