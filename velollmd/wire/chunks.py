"""OpenAI chat/completion chunks: usage rules for streams."""
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
