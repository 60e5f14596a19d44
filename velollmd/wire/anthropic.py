"""Anthropic Messages requests -> OpenAI chat bodies (the pipeline's one request shape).

Anthropic differs from OpenAI chat in ways that break clients when forgotten: the system
prompt is a top-level field (string or text blocks), a turn is a list of content blocks,
tool calls are `tool_use` blocks in the assistant turn and their results `tool_result` blocks
in the next user turn (OpenAI: `tool` messages, which must directly follow the call), tool
inputs are objects (OpenAI: JSON strings), `tool_choice` is {"type": auto|any|tool|none},
images carry a `source`, and structured outputs are `output_config.format` (chat's
`response_format`), and `thinking` switches a thinking model's reasoning on or off as chat's
`chat_template_kwargs.enable_thinking` does (its budget_tokens has no local counterpart). The
body is validated first (api/anthropic_validate.py).
"""
from __future__ import annotations

import json

from .billing import strip_billing_line

SAMPLING_FIELDS = ("temperature", "top_p", "top_k")
THINKING = {"enabled": True, "adaptive": True, "disabled": False}     # thinking.type -> enable_thinking


def anthropic_to_chat(body: dict) -> dict:
    """The OpenAI chat body for an Anthropic Messages body (stream with usage when streaming)."""
    messages = _system_messages(body.get("system"))
    for message in body["messages"]:
        messages += _messages_of(message)
    out = {"model": body["model"], "messages": messages}
    if body.get("max_tokens") is not None:
        out["max_tokens"] = body["max_tokens"]
    for name in SAMPLING_FIELDS:
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("tools"):
        out["tools"] = [_tool(t) for t in body["tools"]]
    _tool_choice(body.get("tool_choice"), out)
    if body.get("thinking"):
        out["chat_template_kwargs"] = {"enable_thinking": THINKING[body["thinking"]["type"]]}
    fmt = (body.get("output_config") or {}).get("format") or body.get("output_format")
    if fmt:                                  # structured outputs: chat's json_schema response_format
        out["response_format"] = {"type": "json_schema",
                                  "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _system_messages(system) -> list[dict]:
    """The system prompt as one system message; the billing-header line leaves it here."""
    if not system:
        return []
    texts = [system] if isinstance(system, str) else [block["text"] for block in system]
    texts[0] = strip_billing_line(texts[0])
    text = "\n".join(t for t in texts if t)
    return [{"role": "system", "content": text}] if text else []


def _messages_of(message: dict) -> list[dict]:
    """One Anthropic turn as OpenAI messages: tool results first (as `tool` messages, each
    right after the assistant's calls), then the turn's own text, images and calls."""
    role, content = message["role"], message["content"]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    results = [_tool_message(b) for b in content if b["type"] == "tool_result"]
    parts = [part for b in content if b["type"] in ("text", "image", "document") for part in _parts(b)]
    calls = [_tool_call(b) for b in content if b["type"] == "tool_use"]
    reasoning = "".join(b["thinking"] for b in content if b["type"] == "thinking")
    if not (parts or calls or reasoning):
        return results
    out = {"role": role, "content": _joined(parts)}
    if calls:
        out["tool_calls"] = calls
    if reasoning:
        out["reasoning_content"] = reasoning
    return [*results, out]


def _joined(parts: list[dict]):
    """Text-only content as one string (what every chat template reads), else the parts."""
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _parts(block: dict) -> list[dict]:
    """A text, image or document block as chat's parts: a document is its title, context and
    text (source "text") or its own text and image blocks (source "content"), then a blank line."""
    if block["type"] != "document":
        return [_part(block)]
    source = block["source"]
    heading = [{"type": "text", "text": block[name] + "\n\n"} for name in ("title", "context") if block.get(name)]
    content = source["data"] if source["type"] == "text" else source["content"]
    body = [{"type": "text", "text": content}] if isinstance(content, str) else [_part(b) for b in content]
    return [*heading, *body, {"type": "text", "text": "\n\n"}]        # apart from what follows


def _part(block: dict) -> dict:
    if block["type"] == "text":
        return {"type": "text", "text": block["text"]}
    source = block["source"]
    url = source["url"] if source["type"] == "url" else f"data:{source['media_type']};base64,{source['data']}"
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_call(block: dict) -> dict:
    arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
    function = {"name": block["name"], "arguments": arguments}
    return {"id": block["id"], "type": "function", "function": function}


def _tool_message(block: dict) -> dict:
    content = block.get("content")
    if isinstance(content, list):
        parts = [_part(p) for p in content]
        content = _joined(parts)
    content = content or ""
    if block.get("is_error"):                # the model should know the call failed
        content = f"Error: {content}" if isinstance(content, str) else \
            [{"type": "text", "text": "Error:"}, *content]
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": content}


def _tool(tool: dict) -> dict:
    function = {"name": tool["name"], "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: dict | None, out: dict) -> None:
    if choice is None:
        return
    kind = choice["type"]
    if kind == "none":
        out["tool_choice"] = "none"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        out["tool_choice"] = "auto"
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
