"""Dedup and loop guard: the same call twice in one reply, or the same call as last turn."""
from __future__ import annotations

import json

from .repair import loads_repaired


def call_key(name: str, arguments: object) -> str:
    """A canonical identity for a call: name plus arguments with sorted keys."""
    return name + "\x00" + json.dumps(arguments, sort_keys=True, ensure_ascii=False, default=str)


def detect_loop(tool_calls: list[dict], messages: list[dict] | None) -> bool:
    """True when a new call repeats a call of the assistant's previous tool turn that already
    has its tool result in the conversation: calling it again would bring the same result."""
    previous = _previous_tool_turn(messages or [])
    if previous is None:
        return False
    turn_index, old_calls = previous
    answered = _answered_ids(messages[turn_index + 1:])
    old = {}
    for call in old_calls:
        key = _key_of(call)
        if key and (call.get("id") in answered or (not call.get("id") and answered)):
            old[key] = True
    return any(_key_of(call) in old for call in tool_calls)


def _previous_tool_turn(messages: list[dict]):
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if isinstance(message, dict) and message.get("role") == "assistant" and message.get("tool_calls"):
            return i, [c for c in message["tool_calls"] if isinstance(c, dict)]
    return None


def _answered_ids(later: list[dict]) -> set:
    ids = set()
    for message in later:
        if isinstance(message, dict) and message.get("role") == "tool":
            ids.add(message.get("tool_call_id") or "")
    return ids


def _key_of(call: dict) -> str | None:
    function = call.get("function") if isinstance(call.get("function"), dict) else call
    name = function.get("name")
    if not isinstance(name, str):
        return None
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = loads_repaired(arguments)[0] if arguments.strip() else {}
        except ValueError:
            return None
    return call_key(name, arguments)
