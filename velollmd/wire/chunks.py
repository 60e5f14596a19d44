"""OpenAI stream chunks (`chat.completion.chunk`, `text_completion`): building them, merging
their tool-call fragments, and the usage rules.

Every layer that makes chunks (a translated Ollama stream, a cache replay, the tool-call
layer) builds them here, so they all carry the same fields in the same order."""
from __future__ import annotations

from typing import AsyncIterator

from .streams import closing


def usage_rules(chunk: dict, include_usage: bool) -> dict | None:
    """OpenAI's usage rules for one chunk, applied in place: the usage-only chunk (choices
    == []) only when the client asked for usage (None: drop it); usage on other chunks
    removed, or null when asked for, as OpenAI sends it only in that last chunk."""
    if not chunk.get("choices"):
        return chunk if include_usage and chunk.get("usage") is not None else None
    if not include_usage:
        chunk.pop("usage", None)
    elif chunk.get("usage") is not None:
        chunk["usage"] = None
    return chunk


async def strip_usage(chunks: AsyncIterator[dict], include_usage: bool) -> AsyncIterator[dict]:
    """`usage_rules` over a stream of chunk dicts."""
    async with closing(chunks) as source_iter:
        async for chunk in source_iter:
            if usage_rules(chunk, include_usage) is not None:
                yield chunk


def chunk_head(request_id: str, model: str, created: int, *, chat: bool = True) -> dict:
    """The fields every chunk of one stream shares."""
    return {"id": request_id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created, "model": model}


def chunk_choice(delta_or_text, finish_reason: str | None = None, *, chat: bool = True) -> dict:
    """Choice 0 of a chunk: a chat `delta` dict, or a completion's `text`."""
    return {"index": 0, "delta" if chat else "text": delta_or_text, "logprobs": None,
            "finish_reason": finish_reason}


def chunk_like(template: dict, delta: dict, finish_reason: str | None = None) -> dict:
    """A chat chunk with `template`'s head (id, created, model, ...), its choice's index and
    one new delta."""
    head = {k: v for k, v in template.items() if k not in ("choices", "usage")}
    choice = chunk_choice(delta, finish_reason)
    choice["index"] = (template.get("choices") or [{}])[0].get("index", 0)
    return {**head, "choices": [choice]}


def merge_tool_call_fragments(fragments: list[dict] | None, calls: dict[int, dict]) -> None:
    """Streamed tool-call fragments (`delta.tool_calls`) merged into whole calls by index:
    the name and the arguments arrive in pieces, the id once."""
    for fragment in fragments or []:
        call = calls.setdefault(fragment.get("index", len(calls)),
                                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        call["id"] = fragment.get("id") or call["id"]
        function = fragment.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""


def completion_logprobs(content: list[dict], offset: int = 0) -> dict:
    """A completion's logprobs in OpenAI's shape for completions (tokens, token_logprobs,
    top_logprobs, text_offset) from the chat shape's `content` entries, which llama.cpp sends
    for both; `offset`: where the first token starts in the choice's text."""
    tokens = [entry.get("token") or "" for entry in content]
    text_offset = []
    for token in tokens:
        text_offset.append(offset)
        offset += len(token)
    return {"tokens": tokens, "token_logprobs": [entry.get("logprob") for entry in content],
            "top_logprobs": [{top.get("token") or "": top.get("logprob") for top in entry.get("top_logprobs") or []}
                             for entry in content],
            "text_offset": text_offset}


def to_completion_logprobs(choices: list[dict], offsets: dict[int, int]) -> None:
    """Each choice's chat-shaped logprobs (llama.cpp's) in the completions shape, in place;
    `offsets`: the text length of each choice so far, kept across a stream's chunks. A stream's
    entry for the stop string's token, which llama-server sends blanked (no token, no bytes)
    in a chunk without text, is dropped: the text does not hold it."""
    for choice in choices:
        logprobs = choice.get("logprobs")
        if not isinstance(logprobs, dict) or not isinstance(logprobs.get("content"), list):
            continue
        index = choice.get("index", 0)
        content = logprobs["content"] if choice.get("text") else [e for e in logprobs["content"] if not _blank(e)]
        choice["logprobs"] = completion_logprobs(content, offsets.get(index, 0)) if content else None
        offsets[index] = offsets.get(index, 0) + len(choice.get("text") or "")


def _blank(entry) -> bool:
    return isinstance(entry, dict) and not entry.get("token") and not entry.get("bytes")
