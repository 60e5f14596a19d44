"""Single-flight: identical requests in flight at the same time share one backend call.

A `Flight` runs the upstream call in a task of its own and records what it produces: the
whole answer, or every stream chunk in order. Each client (the first one included) is a
consumer that reads from the recording, so a client that joins mid-stream still gets the
stream from its start. When the last consumer goes away the upstream call is cancelled,
which is how a client disconnect still stops the backend's work.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, Callable

from ..wire.outcome import Outcome
from ..wire.streams import closing


class Flight:
    def __init__(self, start: Callable[[], Awaitable[Outcome]]):
        self.chunks: list[dict] = []          # recorded stream chunks, in order
        self.outcome: Outcome | None = None   # set once the upstream answered (head)
        self.error: BaseException | None = None
        self.done = False
        self.num_consumers = 0
        self._changed = asyncio.Event()
        self._head = asyncio.get_running_loop().create_future()
        self._head.add_done_callback(_mark_retrieved)    # every client may have left already
        self._task = asyncio.ensure_future(self._run(start))

    async def _run(self, start) -> None:
        try:
            outcome = await start()
            self.outcome = outcome
            self._head.set_result(outcome)
            if outcome.chunks is not None:
                async with closing(outcome.chunks) as source_iter:
                    async for chunk in source_iter:
                        self.chunks.append(chunk)
                        self._wake()
        except asyncio.CancelledError:
            self.error = self.error or ConnectionAbortedError("all clients left")
            raise
        except BaseException as exc:           # surfaced to every consumer
            self.error = exc
            if not self._head.done():
                self._head.set_exception(exc)
        finally:
            self.done = True
            if not self._head.done():
                self._head.set_exception(self.error or ConnectionAbortedError("flight ended"))
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def head(self) -> Outcome:
        """The upstream's answer head: raises what the upstream raised before its first byte."""
        self.num_consumers += 1
        try:
            return await asyncio.shield(self._head)
        except BaseException:
            self.leave()
            raise

    async def replay_chunks(self) -> AsyncIterator[dict]:
        """Every chunk from the first, then the live ones; ends when the upstream ends."""
        index = 0
        try:
            while True:
                while index < len(self.chunks):
                    yield dict(self.chunks[index])
                    index += 1
                if self.done:
                    if self.error is not None:
                        raise self.error
                    return
                await self._changed.wait()
        finally:
            self.leave()

    async def wait_done(self) -> None:
        while not self.done:
            await self._changed.wait()
        if self.error is not None:
            raise self.error

    def leave(self) -> None:
        self.num_consumers -= 1
        if self.num_consumers <= 0 and not self.done:
            self._task.cancel()


def _mark_retrieved(future: asyncio.Future) -> None:
    """An error no consumer is left to read is expected (all clients left), not a leak for
    asyncio to log as "Future exception was never retrieved"."""
    if not future.cancelled():
        future.exception()


class FlightTable:
    """Flights by cache key; a finished flight leaves the table."""

    def __init__(self):
        self._flights: dict[str, Flight] = {}
        self.num_coalesced = 0

    def join_or_start(self, key: str, start) -> tuple[Flight, bool]:
        flight = self._flights.get(key)
        if flight is not None and not flight.done:
            self.num_coalesced += 1
            return flight, False
        flight = Flight(start)
        self._flights[key] = flight
        flight._task.add_done_callback(lambda _: self._flights.pop(key, None)
                                       if self._flights.get(key) is flight else None)
        return flight, True

    def __len__(self) -> int:
        return len(self._flights)
