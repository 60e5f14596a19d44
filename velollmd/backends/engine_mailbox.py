"""Events from the engine's worker thread to the event loop's request tasks: a Mailbox per
loop (one wake-up per burst of events) and an Inbox per request (all its waiting events taken
at once)."""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

from ..engine.runner import Event

Prepare = Callable[[int, Event], Any]       # (choice index, event) -> what the stream makes of it
Item = tuple[int, Event, Any]               # choice index, event, what `prepare` made of it (or None)


class Inbox:
    """One request's events on the loop: the mailbox's drain puts them in, the request's task
    takes all that wait at once (one wake-up per drain, however many choices or tokens)."""

    def __init__(self):
        self.items: list[Item] = []
        self._waiter: asyncio.Future | None = None

    def put_nowait(self, item: Item) -> None:
        self.items.append(item)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> list[Item]:
        while not self.items:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        items, self.items = self.items, []
        return items


class Mailbox:
    """Events from the engine's thread to the event loop: one loop wake-up per burst.

    `loop.call_soon_threadsafe` per event writes the loop's self-pipe once per token per stream
    (16 streams: 16 wake-ups a step, each a GIL hand-over). Here the worker appends under a lock
    and only the post that finds the box empty schedules a drain; the drain, on the loop, hands
    everything waiting to its request's inbox, in the order posted.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[Inbox, Item]] = []

    def post(self, inbox: Inbox, item: Item) -> None:
        """Called in the engine's thread."""
        with self._lock:
            self._items.append((inbox, item))
            if len(self._items) > 1:
                return                                  # a drain is scheduled already
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:                            # the loop is closed: nobody listens
            pass

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for inbox, item in items:
            inbox.put_nowait(item)


def deliverer(mailbox: Mailbox, inbox: Inbox, index: int, prepare: Prepare | None = None):
    def deliver(event: Event) -> None:                  # called in the engine's thread
        mailbox.post(inbox, (index, event, None if prepare is None else prepare(index, event)))
    return deliver
