"""The engine backend's mailbox: events from the engine's thread reach the loop in order, with
one loop wake-up per burst instead of one per event."""
from __future__ import annotations

import asyncio
import threading

from velollmd.backends.engine import EngineBackend
from velollmd.backends.engine_mailbox import Inbox, Mailbox, deliverer
from velollmd.config import config_from_table
from velollmd.engine.runner import Event


def _counting(loop: asyncio.AbstractEventLoop) -> list:
    """Wrap loop.call_soon_threadsafe to record each cross-thread wake-up."""
    calls = []
    original = loop.call_soon_threadsafe

    def call_soon_threadsafe(callback, *args):
        calls.append(callback)
        return original(callback, *args)
    loop.call_soon_threadsafe = call_soon_threadsafe
    return calls


def test_a_burst_from_another_thread_wakes_the_loop_once_and_keeps_order():
    asyncio.run(_burst())


async def _burst():
    loop = asyncio.get_running_loop()
    wakeups = _counting(loop)
    mailbox = Mailbox(loop)
    inboxes = [Inbox() for _ in range(16)]
    deliverers = [deliverer(mailbox, inbox, index) for index, inbox in enumerate(inboxes)]

    def one_step(step: int) -> None:                    # the engine's thread: a token to every stream
        for index, deliver in enumerate(deliverers):
            deliver(Event(f"r{index}", text=f"{step}"))
    for step in range(3):
        # the loop is not running while the thread posts: one burst, however many events
        thread = threading.Thread(target=one_step, args=(step,))
        thread.start()
        thread.join()
        await asyncio.sleep(0)
    assert len(wakeups) == 3
    for index, inbox in enumerate(inboxes):
        got = await inbox.take()                        # all three steps' events at once
        assert got == [(index, Event(f"r{index}", text=f"{step}"), None) for step in range(3)]


def test_posts_after_a_drain_schedule_the_next_one():
    asyncio.run(_posts_after_drain())


async def _posts_after_drain():
    loop = asyncio.get_running_loop()
    mailbox = Mailbox(loop)
    inbox = Inbox()
    for step in range(5):
        await asyncio.to_thread(mailbox.post, inbox, (0, Event("r", text=str(step)), None))
        assert [event.text for _, event, _ in await asyncio.wait_for(inbox.take(), 30)] == [str(step)]


def test_a_closed_loop_swallows_posts():
    other = asyncio.new_event_loop()
    mailbox = Mailbox(other)
    other.close()
    mailbox.post(Inbox(), (0, Event("r"), None))             # no RuntimeError into the engine's thread
    mailbox.post(Inbox(), (0, Event("r"), None))


def test_the_backend_keeps_one_mailbox_per_loop(tmp_path):
    table = {"backends": [{"name": "e", "kind": "engine", "models_dir": str(tmp_path), "ollama_store": False}]}
    backend = EngineBackend(config_from_table(table).backends[0])
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        box = backend.mailbox(first)
        assert backend.mailbox(first) is box
        assert backend.mailbox(second) is not box and backend.mailbox(second).loop is second
    finally:
        first.close()
        second.close()
