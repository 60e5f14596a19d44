"""Small helpers for async tests without a pytest plugin."""
import asyncio
import contextlib

from velollmd.config import ServerConfig
from velollmd.http.server import HTTPServer


def run(coro):
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def serving(handler, **server_options):
    """An HTTPServer on 127.0.0.1 with a free port, shut down afterwards."""
    config = ServerConfig(port=0, **server_options)
    server = HTTPServer(handler, config)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(timeout=1.0)


async def raw_exchange(port: int, data: bytes, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes and read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(-1), read_timeout)
    finally:
        writer.close()
