"""Closing async iterators deterministically.

An async generator that wraps another does not close it when it stops early (an error, a
client that went away): the inner one would hold its backend connection and its admission
slot until the garbage collector finalizes it, seconds later. Every wrapper iterates through
`closing(...)` instead, so cleanup runs at once, innermost last.

Both helpers are classes rather than generators: a stream passes through several of them,
and every generator level costs each of its chunks a frame resumed on the way up.
"""
from __future__ import annotations

from typing import AsyncIterator


async def aclose(iterator) -> None:
    """Close an async iterator if it can be closed (async generators can)."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


class closing:
    """`async with closing(iterator) as it:` closes `iterator` on the way out, however the
    block ends."""
    __slots__ = ("iterator",)

    def __init__(self, iterator):
        self.iterator = iterator

    async def __aenter__(self):
        return self.iterator

    async def __aexit__(self, *exc_info) -> None:
        await aclose(self.iterator)


async def prime(stream: AsyncIterator) -> AsyncIterator:
    """Await the first item now (errors surface here), then return an iterator of all items."""
    iterator = stream.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        return Primed(None, iterator)
    except BaseException:
        await aclose(iterator)
        raise
    return Primed(first, iterator)


class Primed:
    """`first` (None: nothing at all), then the rest of `iterator`, whose own `__anext__`
    serves every later item: no generator level in between for the length of the stream."""
    __slots__ = ("first", "iterator", "ended")

    def __init__(self, first, iterator):
        self.first, self.iterator, self.ended = first, iterator, first is None

    def __aiter__(self) -> Primed:
        return self

    def __anext__(self):
        if self.ended:
            raise StopAsyncIteration
        first = self.first
        if first is None:
            return self.iterator.__anext__()
        self.first = None
        return _ready(first)

    async def aclose(self) -> None:
        self.ended = True
        await aclose(self.iterator)


async def _ready(item):
    return item


class Deferred:
    """The items of the async iterator that `opener()` (a coroutine) returns, opened on the
    first `__anext__` (where its errors surface); every later item comes straight from that
    iterator's own `__anext__`. Closed before it was opened, it opens nothing."""
    __slots__ = ("opener", "iterator")

    def __init__(self, opener):
        self.opener, self.iterator = opener, None

    def __aiter__(self) -> Deferred:
        return self

    def __anext__(self):
        if self.iterator is None:
            return self._open_first()
        return self.iterator.__anext__()

    async def _open_first(self):
        opener, self.opener = self.opener, None
        if opener is None:                  # closed, or its opening failed
            raise StopAsyncIteration
        self.iterator = (await opener()).__aiter__()
        return await self.iterator.__anext__()

    async def aclose(self) -> None:
        self.opener = None
        if self.iterator is not None:
            await aclose(self.iterator)
