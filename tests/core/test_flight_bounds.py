"""A flight's recording stays bounded under a backend's endless stream: once it passes
MAX_SHARED_CHUNKS, nobody new joins it and the chunks every reader has passed are dropped."""
import asyncio

from tests.aio import run
from velollmd.core import flight as flight_module
from velollmd.core.flight import FlightTable
from velollmd.errors import BackendError
from velollmd.wire.outcome import Outcome

LIMIT = 4


def endless(num_chunks: int, sizes: list):
    """An upstream of `num_chunks` chunks that notes the recording's size as it goes."""
    async def start():
        async def chunks():
            for i in range(num_chunks):
                sizes.append(len(table_flight[0].chunks))
                yield {"i": i}
                await asyncio.sleep(0)
        return Outcome({}, chunks=chunks())
    table_flight: list = []
    return start, table_flight


def test_a_long_stream_is_trimmed_and_no_longer_shared(monkeypatch):
    monkeypatch.setattr(flight_module, "MAX_SHARED_CHUNKS", LIMIT)

    async def scenario():
        table, sizes = FlightTable(), []
        start, holder = endless(50, sizes)
        flight, leader = table.join_or_start("k", start)
        holder.append(flight)
        await flight.head()
        received = [chunk["i"] async for chunk in flight.replay_chunks()]
        assert received == list(range(50))                        # nothing lost for the reader
        assert max(sizes) <= 2 * LIMIT + 1 and flight.base > 0 and not flight.shareable
        return table, flight

    run(scenario())


def test_a_trimmed_flight_gets_no_new_readers_and_fails_a_whole_answer_waiter(monkeypatch):
    monkeypatch.setattr(flight_module, "MAX_SHARED_CHUNKS", LIMIT)

    async def scenario():
        table, sizes = FlightTable(), []
        start, holder = endless(30, sizes)
        flight, _ = table.join_or_start("k", start)
        holder.append(flight)
        await flight.head()
        reader = flight.replay_chunks()
        for _ in range(3 * LIMIT):
            await reader.__anext__()
        assert not flight.shareable
        other, leader = table.join_or_start("k", lambda: asyncio.sleep(0, Outcome({}, body={})))
        assert leader and other is not flight                     # a new identical request starts afresh
        flight.num_consumers += 1                                  # a non-stream follower joined before
        waiting = asyncio.ensure_future(flight.wait_done())
        async for _ in reader:
            pass
        try:
            await waiting
        except BackendError as exc:
            assert "too long to record" in str(exc)
        else:
            raise AssertionError("a trimmed recording must not be read as a whole answer")
        await other.head()

    run(scenario())
