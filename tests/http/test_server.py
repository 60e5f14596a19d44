"""The HTTP server over real loopback sockets."""
import asyncio
import dataclasses
import gzip
import json
import socket
import tracemalloc
import zlib

import pytest

from tests.aio import FakeClock, raw_exchange, run, serving, until
from velollmd.config import ServerConfig
from velollmd.errors import BadRequest
from velollmd.http.message import Response
from velollmd.http.server import HTTPServer
from velollmd.http.sse import sse_response
from velollmd.http.writer import WRITE_HIGH_WATER


async def echo(request):
    if request.path == "/fail":
        raise RuntimeError("boom")
    if request.path == "/bad":
        raise BadRequest("field x is wrong", param="x")
    return Response.json({"method": request.method, "path": request.path, "body": request.body.decode()})


def responses(raw: bytes) -> list[tuple[int, bytes]]:
    """Split a byte stream of Content-Length responses into (status, body)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(l.split(b":")[1]) for l in lines if l.lower().startswith(b"content-length"))
        out.append((int(lines[0].split()[1]), rest[:length]))
        raw = rest[length:]
    return out


def test_keep_alive_serves_many_requests_on_one_connection():
    async def main():
        async with serving(echo) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            bodies = []
            for i in range(5):
                writer.write(b"POST /k HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n%d" % i)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                bodies.append(json.loads(await reader.readexactly(length))["body"])
            writer.close()
            return bodies
    assert run(main()) == ["0", "1", "2", "3", "4"]


def test_host_any_ipv6_address_serves_ipv4_clients_too():
    """host = "::" (Ollama's OLLAMA_HOST=[::] listens on both): asyncio alone bound IPv6 only."""
    async def main():
        async with serving(echo, host="::") as server:
            answers = []
            for address in ("127.0.0.1", "::1"):
                reader, writer = await asyncio.open_connection(address, server.port)
                writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                answers.append((await reader.read()).split(b" ")[1])
                writer.close()
            return answers
    assert run(main()) == [b"200", b"200"]


def test_pipelined_requests_are_answered_in_order():
    raw = b"".join(b"GET /p%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(4))
    raw += b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"

    async def main():
        async with serving(echo) as server:
            return await raw_exchange(server.port, raw)
    got = [json.loads(body)["path"] for _, body in responses(run(main()))]
    assert got == ["/p0", "/p1", "/p2", "/p3", "/last"]


def test_chunked_request_body_and_expect_continue():
    raw = (b"POST /c HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n"
           b"Connection: close\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n")

    async def main():
        async with serving(echo) as server:
            return await raw_exchange(server.port, raw)
    out = run(main())
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert json.loads(out.split(b"\r\n\r\n", 2)[2])["body"] == "wikipedia"


def test_head_has_headers_but_no_body():
    async def main():
        async with serving(echo) as server:
            return await raw_exchange(server.port, b"HEAD /h HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    out = run(main())
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"content-length: " in head and body == b""


@pytest.mark.parametrize("raw,status", [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505),
    (b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 5000 + b"\r\n\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2048\r\n\r\n", 413),
])
def test_bad_requests_get_an_openai_error_and_the_connection_closes(raw, status):
    async def main():
        async with serving(echo, max_header_bytes=4096, max_body_bytes=1024) as server:
            return await raw_exchange(server.port, raw + b"GET /never HTTP/1.1\r\nHost: a\r\n\r\n")
    raw_answer = run(main())
    [(got_status, body)] = responses(raw_answer)
    error = json.loads(body)["error"]
    assert got_status == status
    assert set(error) == {"message", "type", "param", "code", "request_id"}
    assert f"x-request-id: {error['request_id']}\r\n".encode() in raw_answer


def test_handler_errors_are_json_never_tracebacks_and_the_connection_survives():
    raw = (b"GET /fail HTTP/1.1\r\nHost: a\r\n\r\n"
           b"GET /bad HTTP/1.1\r\nHost: a\r\n\r\n"
           b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")

    async def main():
        async with serving(echo) as server:
            return await raw_exchange(server.port, raw)
    out = responses(run(main()))
    assert [status for status, _ in out] == [500, 400, 200]
    assert b"Traceback" not in out[0][1] and b"boom" not in out[0][1]
    assert json.loads(out[1][1])["error"]["param"] == "x"


def only_connection(server):
    [connection] = server.connections
    return connection


def phase(server) -> str | None:
    """What the one open connection is waiting for (idle | head | body), None if none is open."""
    return only_connection(server).phase if len(server.connections) == 1 else None


def test_slowloris_gets_408_at_the_absolute_header_deadline():
    """Each trickled byte is read before the clock moves on; the head's deadline still holds."""
    async def main():
        clock = FakeClock()
        async with serving(echo, clock=clock, header_timeout_s=10) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\n")
            expired = []
            for num_sent in range(1, 4):          # one header byte every 4 s: never completes
                writer.write(b"X")
                await until(lambda: phase(server) == "head"
                            and only_connection(server).parser.buffered == 16 + num_sent, "the byte is read")
                clock.advance(4)
                expired.append(server.expire_deadlines())
            out = await asyncio.wait_for(reader.read(-1), 5)
            writer.close()
            return expired, out
    expired, out = run(main())
    assert expired == [0, 0, 1]
    assert out.startswith(b"HTTP/1.1 408 ") and b"request head not received in time" in out


@pytest.mark.parametrize("sent,waiting_for,timeout_s,answers", [
    (b"", "idle", 10, []),                                        # no first request: header timeout
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "idle", 3, [b"HTTP/1.1 200 OK"]),   # then keep-alive timeout
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc", "body", 10,
     [b"HTTP/1.1 408 Request Timeout"]),
], ids=["fresh", "keep-alive", "stalled body"])
def test_a_connection_is_expired_at_the_timeout_of_what_it_waits_for(sent, waiting_for, timeout_s, answers):
    """An idle connection is closed silently; a request cut short gets a 408."""
    async def main():
        clock = FakeClock()
        async with serving(echo, clock=clock, header_timeout_s=10, keepalive_timeout_s=3) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(sent)
            answered = await reader.readuntil(b"}") if sent.startswith(b"GET") else b""
            await until(lambda: phase(server) == waiting_for, f"the connection waits for its {waiting_for}")
            clock.advance(timeout_s - 0.5)
            early = server.expire_deadlines()
            clock.advance(1)
            late = server.expire_deadlines()
            out = answered + await asyncio.wait_for(reader.read(-1), 5)
            writer.close()
            return early, late, out
    early, late, out = run(main())
    assert (early, late) == (0, 1)
    assert [line for line in out.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")] == answers


async def kept_alive(port: int):
    """A connection that had one request answered and now sits idle, kept alive."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await reader.readuntil(b"}")
    return reader, writer


def test_a_new_connection_at_the_cap_closes_the_longest_idle_keep_alive_one():
    """As nginx does: an idle keep-alive connection makes room; the newer idle one stays."""
    async def main():
        clock = FakeClock()
        async with serving(echo, clock=clock, max_connections=2) as server:
            oldest = await kept_alive(server.port)
            await until(lambda: all(c.phase == "idle" for c in server.connections), "the first waits")
            clock.advance(1)
            newer = await kept_alive(server.port)
            await until(lambda: len(server.connections) == 2 and all(c.phase == "idle" for c in server.connections),
                        "both wait")
            out = await raw_exchange(server.port, b"GET /new HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            closed = await asyncio.wait_for(oldest[0].read(), 5)
            newer[1].write(b"GET /again HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            again = await asyncio.wait_for(newer[0].read(-1), 5)
            for _, writer in (oldest, newer):
                writer.close()
            return out, closed, again
    out, closed, again = run(main())
    assert out.startswith(b"HTTP/1.1 200 ") and b'"/new"' in out
    assert closed == b""                         # closed quietly, between requests
    assert again.startswith(b"HTTP/1.1 200 ") and b'"/again"' in again


def test_connection_cap_full_of_busy_connections_answers_503():
    async def main():
        started, release = asyncio.Event(), asyncio.Event()

        async def slow(request):
            started.set()
            await release.wait()
            return Response.json({})

        async with serving(slow, max_connections=1) as server:
            r1, w1 = await asyncio.open_connection("127.0.0.1", server.port)
            w1.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            await started.wait()
            out = await raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            release.set()
            first = await r1.readuntil(b"}")
            w1.close()
            return out, first
    out, first = run(main())
    assert out.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1\r\n" in out
    assert first.startswith(b"HTTP/1.1 200 ")          # the busy request was not cut


def test_connection_cap_does_not_close_a_connection_in_the_middle_of_a_request_head():
    async def main():
        async with serving(echo, max_connections=1) as server:
            r1, w1 = await asyncio.open_connection("127.0.0.1", server.port)
            w1.write(b"GET /half HTTP/1.1\r\n")
            await until(lambda: phase(server) == "head", "the head is being read")
            out = await raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            w1.write(b"Host: a\r\nConnection: close\r\n\r\n")
            first = await asyncio.wait_for(r1.read(-1), 5)
            w1.close()
            return out, first
    out, first = run(main())
    assert out.startswith(b"HTTP/1.1 503 ")
    assert first.startswith(b"HTTP/1.1 200 ") and b'"/half"' in first


def test_client_disconnect_cancels_the_handler():
    async def main():
        cancelled = asyncio.Event()
        started = asyncio.Event()

        async def slow(request):
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return Response.json({})

        async with serving(slow) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            await started.wait()
            writer.close()
            await asyncio.wait_for(cancelled.wait(), 5)
            return cancelled.is_set()
    assert run(main())


def test_drain_finishes_in_flight_requests_and_refuses_new_ones():
    """The clock never reaches the drain deadline, so only the handler decides when it ends."""
    async def main():
        started, release = asyncio.Event(), asyncio.Event()

        async def slow(request):
            started.set()
            await release.wait()
            return Response.json({"done": True})

        async with serving(slow, clock=FakeClock()) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            await started.wait()
            drain = asyncio.ensure_future(server.shutdown(timeout=5))
            await until(lambda: server.draining, "the drain begins")
            try:
                refused = await raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            except OSError:
                refused = b"refused"
            release.set()
            answer = await asyncio.wait_for(reader.read(-1), 5)
            writer.close()
            await drain
            return answer, refused
    answer, refused = run(main())
    assert answer.startswith(b"HTTP/1.1 200 ") and b"connection: close" in answer
    assert answer.endswith(b'{"done":true}')
    assert refused == b"refused" or refused.startswith(b"HTTP/1.1 503")


def test_drain_cancels_requests_past_the_deadline():
    async def main():
        started, cancelled = asyncio.Event(), asyncio.Event()

        async def forever(request):
            started.set()
            try:
                await asyncio.Event().wait()
            finally:
                cancelled.set()

        clock = FakeClock()
        # header_timeout_s sets the tick: the drain reads the clock every 10 ms
        async with serving(forever, clock=clock, header_timeout_s=0.04) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            await started.wait()
            drain = asyncio.ensure_future(server.shutdown(timeout=30))
            await until(lambda: server.draining, "the drain begins")
            clock.advance(29)
            before = cancelled.is_set()
            clock.advance(2)
            await asyncio.wait_for(drain, 5)
            out = await asyncio.wait_for(reader.read(-1), 5)
            writer.close()
            return before, cancelled.is_set(), out, len(server.connections)
    assert run(main()) == (False, True, b"", 0)


def test_streamed_response_uses_chunked_framing():
    async def events():
        yield {"n": 1}
        yield {"n": 2}

    async def handler(request):
        return sse_response(events(), ping_s=5)

    async def main():
        async with serving(handler) as server:
            return await raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    out = run(main())
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head and b"text/event-stream" in head
    assert body == (b'f\r\ndata: {"n":1}\n\n\r\nf\r\ndata: {"n":2}\n\n\r\n'
                    b'e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n')


def test_sse_pings_fill_long_silences_without_losing_events():
    async def main():
        release = asyncio.Event()

        async def events():
            yield {"early": True}
            await release.wait()
            yield {"late": True}

        async def handler(request):
            return sse_response(events(), ping_s=0.05)

        async with serving(handler) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            out = b""
            for _ in range(2):                    # the silence lasts until two pings came
                out += await asyncio.wait_for(reader.readuntil(b": ping\n\n"), 5)
            release.set()
            out += await asyncio.wait_for(reader.read(-1), 5)
            writer.close()
            return out
    body = run(main()).partition(b"\r\n\r\n")[2]
    frames = [line for line in body.split(b"\r\n") if line and not line.rstrip(b"0123456789abcdef") == b""]
    assert frames[0] == b'data: {"early":true}\n\n'
    assert frames[-2:] == [b'data: {"late":true}\n\n', b"data: [DONE]\n\n"]
    pings = frames[1:-2]
    assert len(pings) >= 2 and set(pings) == {b": ping\n\n"}


async def _fixed_answer(request):
    async def pieces():
        yield b"ab"
    headers = [("content-type", "text/plain"), ("connection", "upgrade")]
    if request.path == "/stream":
        return Response(200, headers, stream=pieces())
    return Response(201, headers[:1], b"whole")


@pytest.mark.parametrize("raw,head", [
    (b"GET /w HTTP/1.1\r\nHost: a\r\nx-request-id: r1\r\nConnection: close\r\n\r\n",
     b"HTTP/1.1 201 Created\r\ncontent-type: text/plain\r\nx-request-id: r1\r\nconnection: close\r\n"
     b"content-length: 5\r\n"),
    (b"GET /w HTTP/1.0\r\nx-request-id: r2\r\nConnection: keep-alive\r\n\r\n"
     b"GET /w HTTP/1.0\r\nx-request-id: r3\r\n\r\n",
     b"HTTP/1.1 201 Created\r\ncontent-type: text/plain\r\nx-request-id: r2\r\nconnection: keep-alive\r\n"
     b"content-length: 5\r\n"),
    (b"GET /stream HTTP/1.1\r\nHost: a\r\nx-request-id: r4\r\nConnection: close\r\n\r\n",
     b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: upgrade\r\nx-request-id: r4\r\n"
     b"connection: close\r\ntransfer-encoding: chunked\r\n"),
    (b"GET /stream HTTP/1.0\r\nx-request-id: r5\r\n\r\n",
     b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-request-id: r5\r\nconnection: close\r\n"),
], ids=["close", "1.0 keep-alive", "chunked stream", "1.0 stream"])
def test_answer_heads_are_the_handlers_fields_then_the_servers(raw, head):
    """The exact head: the handler's fields, then x-request-id, connection and the framing,
    then the date (a 1.0 stream drops the handler's connection field: its end is the close)."""
    async def main():
        async with serving(_fixed_answer) as server:
            return await raw_exchange(server.port, raw)
    assert run(main()).startswith(head + b"date: ")


def test_a_streamed_answer_to_http_1_0_keep_alive_ends_with_the_close():
    """HTTP/1.0 has no chunked framing, so a streamed body ends where the connection closes:
    the server must close it after the stream even when the client asked for keep-alive (it
    says `connection: close`), or the client waits for the end until the idle timeout."""
    async def main():
        async with serving(_fixed_answer) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            out = await asyncio.wait_for(reader.read(-1), 5)     # EOF: the server closed
            writer.close()
            return out
    head, _, body = run(main()).partition(b"\r\n\r\n")
    assert b"connection: close" in head and body == b"ab"


def test_an_absolute_form_target_is_served_on_its_path():
    """What a client configured to use us as its HTTP proxy sends (RFC 9112 3.2.2: MUST accept)."""
    raw = b"GET http://127.0.0.1:8000/v1/models?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nConnection: close\r\n\r\n"

    async def main():
        async with serving(echo) as server:
            return await raw_exchange(server.port, raw)
    [(status, body)] = responses(run(main()))
    assert (status, json.loads(body)["path"]) == (200, "/v1/models")


def test_a_body_of_many_tiny_chunks_takes_memory_for_its_bytes_not_per_chunk():
    """A chunked body of 1-byte chunks (a hostile client's cheap way to multiply the memory a
    body takes): its memory stays a small multiple of its size, not ~40 bytes per chunk."""
    num_bytes = 200_000
    raw = (b"POST /m HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           + b"1\r\nx\r\n" * num_bytes + b"0\r\n\r\n")
    seen = []

    async def measure(request):
        seen.append((len(request.body), tracemalloc.get_traced_memory()[1]))
        return Response.json({})

    async def main():
        async with serving(measure) as server:
            tracemalloc.start()
            try:
                await raw_exchange(server.port, raw, read_timeout=120)   # slow under tracemalloc: a bound, not a timing
            finally:
                tracemalloc.stop()
    run(main())
    [(body_size, peak)] = seen
    assert body_size == num_bytes
    assert peak < 20 * num_bytes, f"reading a {num_bytes} B body peaked at {peak} B"


def compressed(data: bytes, *codings: str) -> bytes:
    """`data` with the content codings applied in the order named."""
    for coding in codings:
        data = gzip.compress(data) if coding == "gzip" else zlib.compress(data)
    return data


async def echo_fields(request):
    return Response.json({"body": request.body.decode(), "fields": [name for name, _ in request.headers]})


def send_encoded(body: bytes, coding: str, **limits) -> bytes:
    raw = (b"POST /z HTTP/1.1\r\nHost: a\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n"
           b"Connection: close\r\n\r\n%s" % (coding.encode(), len(body), body))

    async def main():
        async with serving(echo_fields, **limits) as server:
            return await raw_exchange(server.port, raw)
    return run(main())


@pytest.mark.parametrize("codings,field", [
    (("gzip",), "gzip"), (("gzip",), "X-GZIP"), (("deflate",), "deflate"),
    (("deflate", "gzip"), "deflate, gzip"), (("gzip",), "identity, gzip"), ((), "identity"),
])
def test_a_gzip_or_deflate_body_reaches_the_handler_decoded(codings, field):
    text = '{"messages": [{"role": "user", "content": "%s"}]}' % ("hello " * 500)
    [(status, body)] = responses(send_encoded(compressed(text.encode(), *codings), field))
    assert status == 200
    fields = ["host", "content-encoding", "content-length", "connection"]
    if codings:                                         # the body the handler gets has none
        fields.remove("content-encoding")
    assert json.loads(body) == {"body": text, "fields": fields}


def test_gzip_members_back_to_back_are_one_body():
    [(status, body)] = responses(send_encoded(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip"))
    assert (status, json.loads(body)["body"]) == (200, "abcd")


@pytest.mark.parametrize("sent,coding,status,says", [
    (gzip.compress(b"x" * 100)[:-9], "gzip", 400, "cut short"),
    (b"not gzip at all", "gzip", 400, "not valid gzip data"),
    (gzip.compress(b"x" * 100) + b"junk", "gzip", 400, "not valid gzip data"),
    (b"{}", "br", 415, "'br' is not supported"),
    (b"{}", "gzip, zstd", 415, "'zstd' is not supported"),
], ids=["truncated", "garbage", "trailing-junk", "br", "zstd"])
def test_a_body_that_cannot_be_decoded_is_a_400_and_an_unknown_coding_a_415(sent, coding, status, says):
    out = send_encoded(sent, coding)
    [(got, body)] = responses(out)
    assert got == status and says in json.loads(body)["error"]["message"]
    assert (b"\r\naccept-encoding: gzip, deflate\r\n" in out) is (status == 415)


def test_a_zip_bomb_is_a_413_once_its_decoded_bytes_pass_the_body_limit_without_taking_its_memory():
    """100 MB of zeros in ~100 KB of gzip, under a 1 MB limit: decoding stops past the limit."""
    bomb = gzip.compress(bytes(100 * 1024 * 1024), 9)
    limit = 1024 * 1024
    assert len(bomb) < limit
    tracemalloc.start()
    try:
        out = send_encoded(bomb, "gzip", max_body_bytes=limit)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    [(status, body)] = responses(out)
    assert status == 413 and "too large once decoded" in json.loads(body)["error"]["message"]
    assert peak < 10 * limit, f"decoding the bomb peaked at {peak} B"


def stuck(server) -> bool:
    """The server's one connection holds more unsent bytes than it lets pile up."""
    return any(c.writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER for c in server.connections)


def test_a_client_that_stops_reading_a_stream_is_dropped_after_send_timeout_and_the_stream_stops():
    """A client that keeps its connection open but takes nothing (a laptop gone to sleep, a
    stalled reader): past send_timeout_s without room in the socket, the connection is dropped
    and the stream closed, so the backend's work stops instead of waiting forever."""
    clock = FakeClock()
    closed = asyncio.Event()

    async def endless(request):
        async def pieces():
            try:
                while True:
                    await asyncio.sleep(0)
                    yield b"x" * 4096
            finally:
                closed.set()
        return Response(200, [("content-type", "text/plain")], stream=pieces())

    async def main():
        async with serving(endless, clock=clock, send_timeout_s=60) as server:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")            # and never reads
            await until(lambda: stuck(server), "the answer fills the server's buffer")
            clock.advance(61)
            await until(lambda: server.expire_deadlines() == 1, "the connection is past its send deadline")
            await until(closed.is_set, "the stream was closed")
            await until(lambda: not server.connections, "the connection was dropped")
            sock.close()
    run(main())


def test_the_deadline_check_follows_a_reloaded_configuration():
    """A reload replaces the server's config: deadlines lowered by it are checked as often as
    they need (the interval was fixed at start, so a 0.2 s header timeout fired up to 1 s late)."""
    server = HTTPServer(lambda request: None, ServerConfig())
    assert server.tick == 1.0
    server.config = dataclasses.replace(server.config, header_timeout_s=0.2)
    assert server.tick == pytest.approx(0.05)
    server.config = dataclasses.replace(server.config, header_timeout_s=30.0, send_timeout_s=2.0)
    assert server.tick == pytest.approx(0.5)
