"""Input items as a stored response keeps them, and pages of them for
GET /v1/responses/{id}/input_items.

A client may send items without ids (a string input, a message with string content, a
function_call_output): the stored copy gets an id, a status and a list of content parts, as
OpenAI lists them, so that each item can be listed, paged by id and named by an `item_reference` later.
"""
from __future__ import annotations

from .ids import item_id

ID_PREFIXES = {"message": "msg", "reasoning": "rs", "function_call": "fc", "function_call_output": "fco",
               "custom_tool_call": "ctc", "custom_tool_call_output": "ctco", "local_shell_call": "lsh",
               "local_shell_call_output": "lsho"}
MAX_PAGE = 100


def stored_item(item: dict) -> dict:
    """A copy of an input item with an `id`, a `status` and, for a message, content parts."""
    kind = item.get("type", "message")
    stored = {"type": kind, "status": "completed", **item}
    if kind == "message" and isinstance(item.get("content"), str):
        text = item["content"]
        stored["content"] = [{"type": "output_text", "text": text, "annotations": []}
                             if item.get("role") == "assistant" else {"type": "input_text", "text": text}]
    if not isinstance(stored.get("id"), str) or not stored["id"]:
        if kind == "local_shell_call_output":       # the SDK's shape: its `id` is the call's
            stored["id"] = item.get("call_id") or new_item_id(kind)
        else:
            stored["id"] = new_item_id(kind)
    return stored


def new_item_id(kind: str) -> str:
    return item_id(ID_PREFIXES.get(kind, "item"))


def with_unique_ids(items: list[dict]) -> list[dict]:
    """`items` with each id once, as a conversation's ids are at OpenAI (pages are found by
    id): an item whose id an earlier one has (sent twice, or sent again with
    previous_response_id) gets a fresh one."""
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.get("id") in seen:
            item = {**item, "id": new_item_id(item.get("type", "message"))}
        seen.add(item.get("id"))
        unique.append(item)
    return unique


def find_item(items: list[dict], wanted: str) -> dict | None:
    return next((item for item in items if item.get("id") == wanted), None)


def item_page(items: list[dict], *, order: str = "desc", after: str | None = None, limit: int = 20) -> dict:
    """One page of `items` in OpenAI's list shape; `order` "desc" lists the newest first and
    `after` is the id of the last item of the page before."""
    ordered = items[::-1] if order == "desc" else list(items)
    if after is not None:
        ids = [item.get("id") for item in ordered]
        ordered = ordered[ids.index(after) + 1:] if after in ids else []
    data = ordered[:limit]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(ordered) > limit}
