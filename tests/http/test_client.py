"""The raw-socket client against a real server (ours, and raw sockets for odd framings)."""
import asyncio
import contextlib

import pytest

from tests.aio import FakeClock, run, serving, until
from velollmd.errors import BackendError, BackendTimeout
from velollmd.http.client import HTTPClient
from velollmd.http.message import Response
from velollmd.http.sse import sse_response


async def app(request):
    if request.path == "/stream":
        async def events():
            for i in range(3):
                yield {"i": i}
        return sse_response(events(), ping_s=5)
    if request.path == "/ndjson":
        async def lines():
            for i in range(3):
                yield b'{"n":%d}\n' % i
        return Response(200, [("content-type", "application/x-ndjson")], stream=lines())
    return Response.json({"path": request.path, "body": request.body.decode()})


@contextlib.asynccontextmanager
async def raw_server(answer: bytes, silent: bool = False):
    """A socket server that answers every request with fixed bytes and closes; a silent one
    never answers and closes once the client has gone."""
    async def handle(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            if silent:
                await reader.read()
                return
            writer.write(answer)
            await writer.drain()
        finally:
            writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def test_pooled_connection_is_reused_for_sequential_requests():
    async def main():
        async with serving(app) as server:
            client = HTTPClient(f"http://127.0.0.1:{server.port}")
            bodies = []
            for i in range(5):
                response = await client.request("POST", "/echo", json={"i": i})
                bodies.append((await response.json())["body"])
            await client.close()
            return bodies, client.num_connects
    bodies, connects = run(main())
    assert bodies == ['{"i":%d}' % i for i in range(5)]
    assert connects == 1


def test_concurrent_requests_open_several_connections_then_reuse_them():
    async def main():
        async with serving(app) as server:
            client = HTTPClient(f"http://127.0.0.1:{server.port}")

            async def one(i):
                response = await client.request("GET", f"/{i}")
                return (await response.json())["path"]
            first = await asyncio.gather(*(one(i) for i in range(4)))
            second = await asyncio.gather(*(one(i) for i in range(4)))
            await client.close()
            return first + second, client.num_connects
    paths, connects = run(main())
    assert paths == [f"/{i}" for i in range(4)] * 2
    assert connects == 4


def test_streaming_sse_and_ndjson_bodies():
    async def main():
        async with serving(app) as server:
            client = HTTPClient(f"http://127.0.0.1:{server.port}")
            response = await client.request("GET", "/stream")
            events = [e async for e in response.iter_sse()]
            response = await client.request("GET", "/ndjson")
            lines = [line async for line in response.iter_lines()]
            await client.close()
            return events, lines, client.num_connects
    events, lines, connects = run(main())
    assert events == [b'{"i":0}', b'{"i":1}', b'{"i":2}', b"[DONE]"]
    assert lines == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert connects == 1                   # chunked bodies read to the end keep the socket


def test_read_until_close_body():
    async def main():
        async with raw_server(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nno framing at all") as port:
            client = HTTPClient(f"http://127.0.0.1:{port}")
            response = await client.request("GET", "/")
            return await response.read()
    assert run(main()) == b"no framing at all"


def test_read_timeout_raises_backend_timeout():
    async def main():
        async with raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", silent=True) as port:
            client = HTTPClient(f"http://127.0.0.1:{port}", read_timeout=0.2)
            await client.request("GET", "/")
    with pytest.raises(BackendTimeout):
        run(main())


def test_refused_connection_raises_backend_error():
    async def main():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        await HTTPClient(f"http://127.0.0.1:{port}").request("GET", "/")
    with pytest.raises(BackendError) as info:
        run(main())
    assert info.value.status == 502 and info.value.code == "backend_unreachable"


def test_garbage_from_backend_is_a_backend_error():
    async def main():
        async with raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello") as port:
            await HTTPClient(f"http://127.0.0.1:{port}").request("GET", "/")
    with pytest.raises(BackendError):
        run(main())


def test_cancelling_a_streaming_read_closes_the_socket_at_once():
    async def main():
        closed = asyncio.Event()

        async def endless(request):
            async def events():
                try:
                    while True:
                        yield {"tick": 1}
                        await asyncio.sleep(0.01)
                finally:
                    closed.set()
            return sse_response(events(), ping_s=5)

        async with serving(endless) as server:
            client = HTTPClient(f"http://127.0.0.1:{server.port}")
            response = await client.request("GET", "/")

            reading = asyncio.Event()

            async def consume():
                async for _ in response.iter_raw():
                    reading.set()
            task = asyncio.ensure_future(consume())
            await reading.wait()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.wait_for(closed.wait(), 5)
            return closed.is_set(), len(client._idle)
    stopped, idle = run(main())
    assert stopped and idle == 0


def test_stale_pooled_connection_is_retried_on_a_fresh_one():
    async def main():
        clock = FakeClock()
        async with serving(app, clock=clock, keepalive_timeout_s=3) as server:
            client = HTTPClient(f"http://127.0.0.1:{server.port}")
            await (await client.request("GET", "/a")).read()
            clock.advance(4)                   # the server closes the idle connection
            server.expire_deadlines()
            await until(lambda: not server.connections, "the server closed the idle connection")
            body = await (await client.request("GET", "/b")).json()
            await client.close()
            return body["path"], client.num_connects
    assert run(main()) == ("/b", 2)


@pytest.mark.parametrize("stray,close", [
    (b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", True),  # Node, idle
    (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nSTALE", False),    # an answer nobody asked for
])
def test_bytes_a_pooled_connection_got_while_idle_are_never_the_next_answer(stray, close):
    """A server may write to a connection between requests (Node's http server sends a 408
    before closing an idle one); such a connection is not reused, the request goes out fresh."""
    pooled, sent = asyncio.Event(), asyncio.Event()

    async def handle(reader, writer):
        request = await reader.readuntil(b"\r\n\r\n")
        while request:
            path = request.split(b" ")[1]
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(path), path))
            if path == b"/first":
                await pooled.wait()                      # once the client has pooled the connection
                writer.write(stray)
                if close:
                    writer.close()
                sent.set()
            request = b""
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                request = await reader.readuntil(b"\r\n\r\n")

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        client = HTTPClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        first = await (await client.request("GET", "/first")).read()
        [conn] = client._idle
        pooled.set()
        await sent.wait()
        await until(lambda: conn.reader._buffer, "the stray bytes reached the pooled connection")
        second = await (await client.request("GET", "/second")).read()
        await client.close()
        server.close()
        return first, second, client.num_connects
    assert run(main()) == (b"/first", b"/second", 2)


def test_read_timeout_counts_silence_not_the_whole_answer():
    """A slow but steady stream outlives read_timeout; the watchdog only fires on silence."""
    async def slow_app(request):
        async def lines():
            for i in range(6):
                await asyncio.sleep(0.1)
                yield b"%d\n" % i
        return Response(200, [("content-type", "text/plain")], stream=lines())

    async def main():
        async with serving(slow_app) as server:
            client = HTTPClient(f"http://127.0.0.1:{server.port}", read_timeout=0.25)
            response = await client.request("GET", "/")
            lines = [line async for line in response.iter_lines()]
            again = await client.request("GET", "/")       # the pooled connection still works
            lines += [line async for line in again.iter_lines()]
            await client.close()
            return lines
    assert run(main()) == [b"%d" % i for i in range(6)] * 2


def test_a_stream_that_goes_silent_times_out():
    async def stalled_app(request):
        async def lines():
            yield b"first\n"
            await asyncio.sleep(5)
            yield b"never\n"
        return Response(200, [("content-type", "text/plain")], stream=lines())

    async def main():
        async with serving(stalled_app) as server:
            client = HTTPClient(f"http://127.0.0.1:{server.port}", read_timeout=0.2)
            response = await client.request("GET", "/")
            seen = []
            with pytest.raises(BackendTimeout):
                async for line in response.iter_lines():
                    seen.append(line)
            return seen
    assert run(main()) == [b"first"]


def test_the_chunks_of_one_read_go_up_as_one_piece_and_one_batch():
    """A backend read that carries several chunks (tokens, or the last one with `[DONE]`) is
    split and relayed once; the stream's events leave out blank ones and `[DONE]`."""
    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%b\r\n" % (len(data), data)
    frames = [b'data: {"i":0}\n\n', b"data: \n\n", b'data: {"i":1}\n\n', b"data: [DONE]\n\n"]
    answer = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
              + b"".join(map(chunk, frames)) + b"0\r\n\r\n")

    async def main():
        async with raw_server(answer) as port:
            client = HTTPClient(f"http://127.0.0.1:{port}")
            await asyncio.sleep(0)
            pieces = [piece async for piece in (await client.request("GET", "/")).iter_raw()]
            batches = [b async for b in (await client.request("GET", "/")).iter_sse_batches()]
            events = [b async for b in (await client.request("GET", "/")).iter_sse_batches(events=True)]
            return pieces, batches, events
    pieces, batches, events = run(main())
    assert pieces == [b"".join(frames)]
    assert batches == [[b'{"i":0}', b"", b'{"i":1}', b"[DONE]"]]
    assert events == [[b'{"i":0}', b'{"i":1}']]


def test_a_pooled_connection_keeps_its_watchdog_idle_and_still_times_out_later():
    """The watchdog outlives a request (no timer per request on a pooled connection): it spares
    the connection while it sits idle past read_timeout, and fires on silence in the next one."""
    gate = asyncio.Event()

    async def gated_app(request):
        if request.path == "/silent":
            await gate.wait()
        return Response.json({"path": request.path})

    async def main():
        async with serving(gated_app) as server:
            client = HTTPClient(f"http://127.0.0.1:{server.port}", read_timeout=0.2)
            await (await client.request("GET", "/a")).json()
            watchdog = client._idle[0].watchdog
            await (await client.request("GET", "/b")).json()
            same_timer = watchdog is not None and client._idle[0].watchdog is watchdog
            await asyncio.sleep(0.35)                  # idle past read_timeout: not aborted
            idle_kept = client.num_idle == 1 and client._idle[0].usable()
            with pytest.raises(BackendTimeout):
                await client.request("GET", "/silent")
            gate.set()
            await client.close()
            return same_timer, idle_kept, client.num_connects
    assert run(main()) == (True, True, 1)


@pytest.mark.parametrize("url, headers", [("http://127.0.0.1:9", None),
                                          ("http://h:81/base/", {"authorization": "Bearer k"}),
                                          ("http://h", {"content-type": "text/plain", "x-a": "b"})])
def test_a_json_request_is_encoded_as_the_general_encoder_would(url, headers):
    client = HTTPClient(url, headers=headers)
    body = b'{"model":"m"}'
    for method, target in (("POST", "/v1/chat/completions"), ("GET", "")):
        expected = client._encode_request(method, target, body, {"content-type": "application/json"})
        assert client._encode_json_request(method, target, body) == expected
