"""Small helpers for async tests without a pytest plugin.

One way to run a coroutine: `run(coro)` (a fresh loop, closed afterwards). A module that keeps
one loop across tests holds an `asyncio.Runner` in a fixture, so the loop is closed as well.
"""
import asyncio
import contextlib
import time

from velollmd.config import ServerConfig
from velollmd.http.server import HTTPServer


def run(coro):
    return asyncio.run(coro)


class FakeClock:
    """A monotonic clock that moves only when a test says so: `clock()` reads, `advance(s)` moves."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.asynccontextmanager
async def serving(handler, clock=time.monotonic, **server_options):
    """An HTTPServer on 127.0.0.1 with a free port, shut down afterwards.

    With a fake clock the closing drain does not wait: that clock never reaches a deadline."""
    config = ServerConfig(port=0, **server_options)
    server = HTTPServer(handler, config, clock=clock)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(timeout=1.0 if clock is time.monotonic else 0.0)


async def until(predicate, what: str, limit_s: float = 5.0) -> None:
    """Let the loop run (socket I/O included) until `predicate()` holds; fail naming `what`.

    A bound against hanging, not a timing: nothing is asserted about how long it took."""
    for _ in range(int(limit_s / 0.001)):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never happened: {what}")


async def raw_exchange(port: int, data: bytes, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes and read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(-1), read_timeout)
    finally:
        writer.close()
