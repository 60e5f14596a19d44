"""Single-flight: identical requests in flight at once share one upstream call.

The upstream is a scripted call on a real event loop: the test hands it each chunk (or an
error) through a queue and orders every step with events, never with sleeps."""
import asyncio

import pytest

from tests.aio import run as run_steps
from velollmd.core.flight import FlightTable
from velollmd.errors import BackendError
from velollmd.wire.outcome import Outcome

END = object()


class Upstream:
    """A backend call: counts its starts, answers when `answer` is set, streams what the test
    puts in `feed` (an exception there is raised), and notes how it ended."""

    def __init__(self, body: dict | None = None, error: BaseException | None = None):
        self.body, self.error = body, error
        self.num_calls = 0
        self.started, self.answer = asyncio.Event(), asyncio.Event()
        self.cancelled, self.closed = asyncio.Event(), asyncio.Event()
        self.feed: asyncio.Queue = asyncio.Queue()

    async def start(self) -> Outcome:
        self.num_calls += 1
        self.started.set()
        try:
            await self.answer.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        if self.error is not None:
            raise self.error
        if self.body is not None:
            return Outcome({"x-upstream": "1"}, body=self.body)
        return Outcome({"x-upstream": "1"}, chunks=self._chunks())

    async def _chunks(self):
        try:
            while (item := await self.feed.get()) is not END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.closed.set()

    def send(self, *items) -> None:
        for item in items:
            self.feed.put_nowait(item)


async def finished(flight) -> None:
    """Until the upstream task has ended and the table's bookkeeping for it has run: the
    table's done callback was added first, so it runs before this wait returns."""
    await asyncio.wait([flight._task])


def run(coro):
    """Run a test's steps; the limit is no timing, it only turns a hang into a failure."""
    return run_steps(asyncio.wait_for(coro, 10))


async def streaming(upstream: Upstream, num_consumers: int = 2):
    """A table with one streaming flight under way and the chunk iterators of
    `num_consumers` consumers that have its head."""
    table = FlightTable()
    upstream.answer.set()
    flight, _ = table.join_or_start("k", upstream.start)
    for _ in range(num_consumers):
        await flight.head()
    return table, flight, [flight.replay_chunks() for _ in range(num_consumers)]


async def rest(chunks) -> list[dict]:
    return [chunk async for chunk in chunks]


def test_a_consumer_joining_mid_stream_gets_every_chunk_from_the_start():
    async def main():
        table, upstream, other = FlightTable(), Upstream(), Upstream()
        flight, leader = table.join_or_start("k", upstream.start)
        upstream.answer.set()
        await flight.head()
        first = flight.replay_chunks()
        upstream.send({"n": 0}, {"n": 1})
        seen = [await anext(first), await anext(first)]        # the stream is under way
        joined, joined_leader = table.join_or_start("k", other.start)
        await joined.head()
        second = joined.replay_chunks()
        upstream.send({"n": 2}, END)
        seen += await rest(first)
        seen_late = await rest(second)
        await finished(flight)
        return (leader, joined_leader, joined is flight, seen, seen_late,
                upstream.num_calls, other.num_calls, table.num_coalesced, len(table))
    (leader, joined_leader, same, seen, seen_late,
     num_calls, other_calls, num_coalesced, num_flights) = run(main())
    assert (leader, joined_leader, same) == (True, False, True)
    assert seen == seen_late == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert (num_calls, other_calls, num_coalesced, num_flights) == (1, 0, 1, 0)


def test_each_consumer_gets_its_own_copy_of_a_chunk():
    async def main():
        upstream = Upstream()
        _, flight, (first, second) = await streaming(upstream)
        upstream.send({"n": 0}, END)
        mine = await anext(first)
        mine["n"] = "changed by the first consumer"
        return await rest(second), flight.chunks
    theirs, recorded = run(main())
    assert theirs == recorded == [{"n": 0}]


def test_a_whole_answer_is_shared_by_everyone_who_asked_while_it_was_coming():
    async def main():
        table, upstream, other = FlightTable(), Upstream(body={"answer": 42}), Upstream()
        flight, _ = table.join_or_start("k", upstream.start)
        first = asyncio.ensure_future(flight.head())
        await upstream.started.wait()
        joined, _ = table.join_or_start("k", other.start)
        second = asyncio.ensure_future(joined.head())
        upstream.answer.set()
        heads = await asyncio.gather(first, second)
        for _ in heads:
            flight.leave()
        await finished(flight)
        return heads, upstream.num_calls, other.num_calls, flight.error, len(table)
    (head1, head2), num_calls, other_calls, error, num_flights = run(main())
    assert head1 is head2 and head1.body == {"answer": 42}
    assert (num_calls, other_calls, error, num_flights) == (1, 0, None, 0)


def test_the_stream_goes_on_while_one_consumer_remains():
    async def main():
        upstream = Upstream()
        _, flight, (leaving, staying) = await streaming(upstream)
        upstream.send({"n": 0})
        await anext(leaving)
        await leaving.aclose()                 # one client disconnects
        upstream.send({"n": 1}, END)
        got = await rest(staying)
        await finished(flight)
        return got, upstream.cancelled.is_set(), flight.error
    got, cancelled, error = run(main())
    assert got == [{"n": 0}, {"n": 1}]
    assert (cancelled, error) == (False, None)


def test_the_last_consumer_leaving_cancels_the_upstream_and_closes_its_stream():
    async def main():
        upstream = Upstream()
        table, flight, (first, second) = await streaming(upstream)
        upstream.send({"n": 0})
        await anext(first)
        await anext(second)
        await first.aclose()
        await second.aclose()                  # the last client disconnects
        await finished(flight)
        return (upstream.cancelled.is_set(), upstream.closed.is_set(), flight._task.cancelled(),
                type(flight.error), len(table))
    assert run(main()) == (True, True, True, ConnectionAbortedError, 0)


def test_the_last_consumer_leaving_before_the_answer_cancels_the_call():
    async def main():
        table, upstream = FlightTable(), Upstream()
        flight, _ = table.join_or_start("k", upstream.start)
        waiting = asyncio.ensure_future(flight.head())
        await upstream.started.wait()
        waiting.cancel()                       # the only client gives up while waiting
        await asyncio.gather(waiting, return_exceptions=True)
        await finished(flight)
        return upstream.cancelled.is_set(), flight.num_consumers, flight.done, len(table)
    assert run(main()) == (True, 0, True, 0)


def test_an_error_before_the_answer_reaches_every_consumer():
    async def main():
        error = BackendError("backend down")
        table, upstream = FlightTable(), Upstream(error=error)
        flight, _ = table.join_or_start("k", upstream.start)
        heads = [asyncio.ensure_future(flight.head()) for _ in range(3)]
        await upstream.started.wait()
        upstream.answer.set()
        outcomes = await asyncio.gather(*heads, return_exceptions=True)
        await finished(flight)
        return error, outcomes, flight.num_consumers, len(table)
    error, outcomes, num_consumers, num_flights = run(main())
    assert outcomes == [error] * 3
    assert (num_consumers, num_flights) == (0, 0)


def test_an_error_mid_stream_reaches_every_consumer_after_the_chunks_before_it():
    async def main():
        error = BackendError("stream broke")
        upstream = Upstream()
        table, flight, consumers = await streaming(upstream)
        upstream.send({"n": 0}, error)
        results = []
        for chunks in consumers:
            got = []
            with pytest.raises(BackendError) as info:
                async for chunk in chunks:
                    got.append(chunk)
            results.append((got, info.value))
        await finished(flight)
        return error, results, upstream.closed.is_set(), len(table)
    error, results, closed, num_flights = run(main())
    assert results == [([{"n": 0}], error)] * 2
    assert (closed, num_flights) == (True, 0)


def test_a_request_after_the_flight_ended_starts_a_new_one_that_the_old_one_leaves_alone():
    """The old flight's cleanup runs after its last consumer wakes; a flight started by that
    consumer under the same key must stay in the table."""
    async def main():
        old, new = Upstream(), Upstream(body={"again": True})
        table, flight, _ = await streaming(old, num_consumers=1)
        old.send(END)
        await flight.wait_done()               # woken before the old flight's cleanup runs
        again, leader = table.join_or_start("k", new.start)
        flight.leave()
        await finished(flight)
        kept = len(table)
        new.answer.set()
        await again.head()
        again.leave()
        await finished(again)
        return leader, again is flight, kept, len(table), old.num_calls, new.num_calls
    assert run(main()) == (True, False, 1, 0, 1, 1)
