"""Single-flight: identical requests in flight at the same time share one backend call.

A `Flight` runs the upstream call in a task of its own and records what it produces: the
whole answer, or every stream chunk in order. Each client (the first one included) is a
consumer that reads from the recording, so a client that joins mid-stream still gets the
stream from its start. When the last consumer goes away the upstream call is cancelled,
which is how a client disconnect still stops the backend's work.

The recording is bounded: past MAX_SHARED_CHUNKS a stream stops being shared (no new client
joins it) and the chunks every reader has passed are dropped, so a backend's endless stream
costs the memory of the readers' lag, not of its length.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, Callable

from ..errors import BackendError
from ..wire.outcome import Outcome
from ..wire.streams import closing

MAX_SHARED_CHUNKS = 8192


class Flight:
    def __init__(self, start: Callable[[], Awaitable[Outcome]]):
        self.chunks: list[dict] = []          # recorded stream chunks, in order, from number `base`
        self.base = 0                         # chunks before this one were dropped (all readers passed)
        self.shareable = True                 # False once the recording was trimmed
        self._positions: dict[object, int] = {}   # reader -> number of the next chunk it reads
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
                        if len(self.chunks) > 2 * MAX_SHARED_CHUNKS:
                            self._trim()
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

    def _trim(self) -> None:
        """Drop the chunks every reader has passed; from now on nobody new may join."""
        self.shareable = False
        low = min(self._positions.values(), default=self.base + len(self.chunks))
        if low > self.base:
            del self.chunks[:low - self.base]
            self.base = low

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
        reader = object()
        self._positions[reader] = 0
        try:
            while True:
                while self._positions[reader] < self.base + len(self.chunks):
                    index = self._positions[reader]
                    self._positions[reader] = index + 1
                    yield dict(self.chunks[index - self.base])
                if self.done:
                    if self.error is not None:
                        raise self.error
                    return
                await self._changed.wait()
        finally:
            del self._positions[reader]
            self.leave()

    async def wait_done(self) -> None:
        """Until the upstream ended, which the caller reads whole from `chunks` (a recording
        that had to be trimmed cannot give it: an error, as for a stream cut short)."""
        while not self.done:
            await self._changed.wait()
        if self.error is not None:
            raise self.error
        if self.base > 0:
            raise BackendError("the shared upstream stream was too long to record")

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
        if flight is not None and not flight.done and flight.shareable:
            self.num_coalesced += 1
            return flight, False
        flight = Flight(start)
        self._flights[key] = flight
        flight._task.add_done_callback(lambda _: self._flights.pop(key, None)
                                       if self._flights.get(key) is flight else None)
        return flight, True

    def __len__(self) -> int:
        return len(self._flights)
