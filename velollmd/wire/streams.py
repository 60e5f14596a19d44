"""Closing async iterators deterministically.

An async generator that wraps another does not close it when it stops early (an error, a
client that went away): the inner one would hold its backend connection and its admission
slot until the garbage collector finalizes it, seconds later. Every wrapper iterates through
`closing(...)` instead, so cleanup runs at once, innermost last.
"""
from __future__ import annotations

import contextlib
from typing import AsyncIterator


async def aclose(iterator) -> None:
    """Close an async iterator if it can be closed (async generators can)."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


@contextlib.asynccontextmanager
async def closing(iterator) -> AsyncIterator:
    try:
        yield iterator
    finally:
        await aclose(iterator)


async def prime(stream: AsyncIterator) -> AsyncIterator:
    """Await the first item now (errors surface here), then return an iterator of all items."""
    iterator = stream.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:
        await aclose(iterator)
        raise
    return _chain(first, iterator)


async def _chain(first, iterator) -> AsyncIterator:
    async with closing(iterator) as source_iter:
        if first is not None:
            yield first
            async for item in source_iter:
                yield item
