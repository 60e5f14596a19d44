"""A prompt over its context, cut to fit as Ollama cuts it (its /api/chat and /api/generate
with `truncate`, Ollama's default).

Ollama's chatPrompt (server/prompt.go) keeps the system messages and the latest message and
drops the oldest others until the prompt fits; a prompt that still does not fit (one long
message, or /api/generate's prompt) is cut by its runner to its first num_keep tokens and its
latest ones. Ollama then shifts the context as the answer grows (half of it freed); the engine
does not shift, so a cut prompt leaves that room for the answer up front: max_tokens, at most
half the context.
"""
from __future__ import annotations

from typing import Awaitable, Callable, Generator

DEFAULT_NUM_KEEP = 4            # Ollama's num_keep: the prompt's first tokens always kept


def prompt_limit(num_ctx: int, max_tokens: int | None) -> int:
    """The most tokens a cut prompt keeps in a context of `num_ctx` (one at least: a context
    too small for it is check_prompt's 400, not an empty prompt)."""
    half = num_ctx // 2
    return max(1, num_ctx - max(1, min(max_tokens or half, half)))


def kept_tokens(ids: list[int], limit: int, num_keep: int | None = None) -> list[int]:
    """The first `num_keep` tokens (None: Ollama's default, 4; negative: as many as fit; a whole
    float, as JSON may spell it, as its integer) and the latest ones, `limit` in all (Ollama's runner)."""
    num_keep = DEFAULT_NUM_KEEP if num_keep is None else len(ids) if num_keep < 0 else int(num_keep)
    keep = max(0, min(num_keep, limit - 1))
    return ids[:keep] + ids[len(ids) - (limit - keep):]


def kept_messages(messages: list[dict], fits: Callable[[list[dict]], bool]) -> list[dict]:
    """The system messages, the latest message and the most recent turns before it that `fits`
    together with them (kept_messages_search, answered by `fits`)."""
    search = kept_messages_search(messages)
    try:
        candidate = next(search)
        while True:
            candidate = search.send(fits(candidate))
    except StopIteration as done:
        return done.value


async def kept_messages_counted(messages: list[dict], fits: Callable[[list[dict]], Awaitable[bool]]) -> list[dict]:
    """kept_messages for a `fits` that asks a server (a coroutine: llama-server counts tokens)."""
    search = kept_messages_search(messages)
    try:
        candidate = next(search)
        while True:
            candidate = search.send(await fits(candidate))
    except StopIteration as done:
        return done.value


def kept_messages_search(messages: list[dict]) -> Generator[list[dict], bool, list[dict]]:
    """The search of kept_messages as a generator, whichever way `fits` is asked: it yields the
    messages to try and is sent whether they fit; it returns what is kept. Whole turns (each from a user message) are dropped, so that templates
    that want alternating roles still render; the latest message is kept even when alone it
    does not fit."""
    starts = [i for i, m in enumerate(messages[:-1]) if m.get("role") == "user"] + [len(messages) - 1]
    low, high = 0, len(starts) - 1          # a later start keeps fewer tokens: search the earliest that fits
    while low < high:
        middle = (low + high) // 2
        if (yield _from(messages, starts[middle])):
            high = middle
        else:
            low = middle + 1
    return _from(messages, starts[low])


def _from(messages: list[dict], start: int) -> list[dict]:
    """The system messages before `start`, and every message from it on."""
    return [m for m in messages[:start] if m.get("role") == "system"] + messages[start:]
