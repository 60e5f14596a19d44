"""The backend client bounds what a broken backend can make it hold: an endless body, an
endless NDJSON line and an endless SSE event are each a BackendError with the socket closed."""
import asyncio

import pytest

from tests.aio import run
from velollmd.errors import BackendError
from velollmd.http import client as client_module
from velollmd.http.client import HTTPClient

HEADS = {"body": b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999\r\n\r\n",
         "line": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
         "event": b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"}


async def endless_backend(kind: str, stats: dict):
    """A real server that answers any request with `kind`'s head and then bytes forever."""
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEADS[kind])
        piece = b"x" * 65536 if kind == "body" else b"10000\r\n" + b"d" * 65536 + b"\r\n"
        if kind == "event":
            writer.write(b"6\r\ndata: \r\n")
        try:
            while True:
                writer.write(piece)
                stats["sent"] = stats.get("sent", 0) + 65536
                await writer.drain()
        except ConnectionError:
            stats["closed"] = True
    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize("kind", ["body", "line", "event"])
def test_endless_answers_are_cut_at_the_limit(monkeypatch, kind):
    monkeypatch.setattr(client_module, "MAX_EVENT_BYTES", 1 << 20)

    async def scenario():
        stats: dict = {}
        server = await endless_backend(kind, stats)
        client = HTTPClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        response = await client.request("GET", "/")
        with pytest.raises(BackendError, match="over 1 MiB; connection closed"):
            if kind == "body":
                await response.read(limit=1 << 20)
            elif kind == "line":
                async for _ in response.iter_lines():
                    pass
            else:
                async for _ in response.iter_sse():
                    pass
        for _ in range(200):                       # the backend sees the close at its next write
            if stats.get("closed"):
                break
            await asyncio.sleep(0.01)
        assert stats.get("closed") and stats["sent"] < 64 << 20
        await client.close()
        server.close()
        await server.wait_closed()

    run(scenario())


def test_a_whole_body_over_the_limit_in_one_read_closes_the_connection():
    async def scenario():
        async def handle(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n" + b"x" * 20)
            await writer.drain()
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        client = HTTPClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        response = await client.request("GET", "/")
        await asyncio.sleep(0.05)                  # the whole body is in the client's buffer
        with pytest.raises(BackendError, match="connection closed"):
            await response.read(limit=10)
        assert client.num_idle == 0                # not pooled
        response = await client.request("GET", "/")
        assert await response.read() == b"x" * 20 and client.num_idle == 1
        await client.close()
        server.close()
        await server.wait_closed()
    run(scenario())
