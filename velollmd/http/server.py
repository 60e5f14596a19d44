"""HTTP/1.1 server over asyncio streams around the sans-IO parser.

One `Connection` per socket reads requests in order (pipelined requests are answered in
order), calls the application handler, and writes the response. Limits: a connection cap
(at it, a new connection closes the longest-idle one, as nginx does; 503 when none is
idle), an absolute deadline for each request head (408: defeats slowloris), a keep-alive
idle timeout, body size limits (413 before reading; a gzip or deflate body is decoded,
to no more than the limit: codings.py). While a handler runs, the
socket is watched: a client that goes away cancels the handler, so a disconnect stops the
backend's work. Every answer carries `x-request-id`: the client's (sanitised) or a new one,
the id of the `RequestTrace` that each request gets when its head is read (log.py); the trace
learns when the first byte and the last one went out. `HTTPServer.shutdown()` drains: stop accepting, close idle connections, let
in-flight requests finish up to a deadline, then cancel the rest.

Every deadline (idle, head, body, drain) is read from one injectable `clock` (seconds,
monotonic), so tests move time with a fake clock instead of sleeping; the sweeper only
decides how often the clock is looked at.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Awaitable, Callable

from ..config import ServerConfig
from ..errors import VeloError
from ..log import REQUEST_ID_HEADER, RequestTrace, begin_request, new_request_id, request_id_from
from ..wire.headers import header_value
from ..wire.streams import aclose
from .codings import decoded_body
from .message import Request, Response
from .parser import EndOfMessage, Head, HTTPParser, ProtocolError
from .writer import (
    READ_SIZE,
    WRITE_HIGH_WATER,
    CorkedBody,
    IdlePinger,
    encode_head,
    error_response,
    refusal,
    send_final_response,
)

log = logging.getLogger("velollmd.http")
# The field lines the server adds to answers, after the handler's own headers.
REQUEST_ID_NAME = REQUEST_ID_HEADER.encode("latin-1")
CLOSE_FIELD = b"connection: close\r\n"
KEEP_ALIVE_FIELD = b"connection: keep-alive\r\n"        # an HTTP/1.0 client's kept connection
CHUNKED_FIELD = b"transfer-encoding: chunked\r\n"

Handler = Callable[[Request], Awaitable[Response]]
# The answer to a request refused before any handler ran: (its head if parsed, status, message).
ErrorRenderer = Callable[[Head | None, int, str], Response]


def default_error(head: Head | None, status: int, message: str) -> Response:
    return Response.error(refusal(status, message))


class _WatchedReader(asyncio.StreamReader):
    """A StreamReader that tells its connection when the client goes away.

    Pipelined bytes that arrive while a handler runs simply wait in the buffer (the stream's
    own flow control pauses the socket when it fills); only EOF or a reset calls `on_close`.
    """
    on_close = None

    def feed_eof(self) -> None:
        super().feed_eof()
        if self.on_close is not None:
            self.on_close()

    def set_exception(self, exc) -> None:
        super().set_exception(exc)
        if self.on_close is not None:
            self.on_close()

    @property
    def has_unread(self) -> bool:
        """Bytes arrived that no read has taken yet (a request its connection is about to see)."""
        return bool(self._buffer)


ANY_IPV6 = ("::", "[::]")


def dual_stack_socket(port: int) -> socket.socket:
    """A listening socket on every IPv6 and IPv4 address (`host = "::"`, as Go's listener and
    so Ollama's takes it): asyncio's own would be IPv6 only (it sets IPV6_V6ONLY)."""
    return socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=1024)


class HTTPServer:
    def __init__(self, handler: Handler, config: ServerConfig,
                 clock: Callable[[], float] = time.monotonic, render_error: ErrorRenderer = default_error):
        self.handler = handler
        self.render_error = render_error
        self.config = config
        self.clock = clock
        self.draining = False
        self.hurried = False                  # shutdown(): stop waiting for in-flight requests now
        self._woken: asyncio.Future | None = None  # the drain's wait, which hurry() ends
        self.connections: set[Connection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._port: int | None = None
        self._sweeper: asyncio.Task | None = None

    @property
    def tick(self) -> float:
        """How often deadlines are checked (real seconds): a fraction of the shortest timeout,
        of the configuration now (a reload replaces `config`)."""
        config = self.config
        shortest = min(config.header_timeout_s, config.keepalive_timeout_s, config.send_timeout_s)
        return min(max(shortest / 4, 0.01), 1.0)

    async def start(self, sock=None) -> None:
        """Listen on `sock` (socket activation) or on the configured host and port."""
        loop = asyncio.get_running_loop()

        def protocol_factory():
            reader = _WatchedReader(limit=READ_SIZE, loop=loop)
            return asyncio.StreamReaderProtocol(reader, self._accept, loop=loop)

        if sock is None and self.config.host in ANY_IPV6:
            sock = dual_stack_socket(self.config.port)
        if sock is not None:
            self._server = await loop.create_server(protocol_factory, sock=sock, backlog=1024)
        else:
            self._server = await loop.create_server(
                protocol_factory, self.config.host, self.config.port,
                reuse_address=True, backlog=1024)
        self._port = self.port
        self._sweeper = loop.create_task(self._sweep_deadlines())

    async def _sweep_deadlines(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            self.expire_deadlines()

    def expire_deadlines(self) -> int:
        """Expire connections past their idle / head / body deadline; how many were."""
        now = self.clock()
        overdue = [c for c in self.connections if 0.0 < c.deadline <= now]
        for connection in overdue:
            connection.expire()
        return len(overdue)

    @property
    def sockets(self):
        return self._server.sockets if self._server else []

    @property
    def port(self) -> int | None:
        """The bound port (kept after the listening socket closes); None on a UNIX socket."""
        if self._port is None and self.sockets:
            address = self.sockets[0].getsockname()
            self._port = address[1] if isinstance(address, tuple) else None
        return self._port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.draining or not self._make_room():
            await self.send_refusal(reader, writer, 503, "server is at its connection limit" if not self.draining
                                    else "server is shutting down", headers={"retry-after": "1"})
            return
        connection = Connection(self, reader, writer)
        self.connections.add(connection)
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)

    async def send_refusal(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int,
                           message: str, head: Head | None = None, headers: dict[str, str] | None = None,
                           trace: RequestTrace | None = None) -> None:
        """A refusal before any handler ran (a 503 to a connection not taken; a protocol error:
        400, 408, 413, 415, 431...) in the shape of the route it was sent to (render_error), with
        `headers` and the request's id, then the close; traced as a request (the access log, the
        metrics), under `trace` when the request has one."""
        trace = begin_request(trace or RequestTrace(new_request_id()))
        response = self.render_error(head, status, message)
        response.headers += [*(headers or {}).items(), (REQUEST_ID_HEADER, trace.request_id)]
        await send_final_response(reader, writer, response)
        trace.finish(status)

    def _make_room(self) -> bool:
        """Whether one more connection fits under max_connections, once the longest-idle
        connections (between requests: kept alive, or not yet sent anything) are closed to make
        room, as nginx does; False when every connection is busy with a request."""
        while len(self.connections) >= self.config.max_connections:
            idle = [c for c in self.connections if c.between_requests]
            if not idle:
                return False
            oldest = min(idle, key=lambda c: c.idle_since)
            oldest.expire()                        # closed quietly, as at its idle timeout
            self.connections.discard(oldest)
        return True

    async def shutdown(self, timeout: float | None = None) -> None:
        """Graceful drain: stop accepting, finish in-flight requests, cancel the rest."""
        timeout = self.config.drain_timeout_s if timeout is None else timeout
        self.draining = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close_if_idle()
        tasks = [c.task for c in self.connections if c.task is not None]
        if tasks:
            pending = await self._wait_until(tasks, self.clock() + timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def _wait_until(self, tasks, deadline: float) -> set[asyncio.Task]:
        """Wait for `tasks` until `deadline` on the server's clock; the ones still running.
        The clock is read again at least every tick, so a fake clock's jumps are seen."""
        pending = {task for task in tasks if not task.done()}
        self._woken = asyncio.get_running_loop().create_future()
        while pending and not self.hurried:
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            await asyncio.wait(pending | {self._woken}, timeout=min(remaining, self.tick),
                               return_when=asyncio.FIRST_COMPLETED)
            pending = {task for task in pending if not task.done()}
        return pending

    def hurry(self) -> None:
        """Stop waiting for the requests in flight: shutdown() cancels them now."""
        self.hurried = True
        if self._woken is not None and not self._woken.done():
            self._woken.set_result(None)


class Connection:
    """Serves the requests of one client socket, one at a time, in order."""

    def __init__(self, server: HTTPServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.server = server
        self.config = server.config
        self.reader = reader
        self.writer = writer
        self.parser = HTTPParser("server", max_header_bytes=self.config.max_header_bytes,
                                 max_body_bytes=self.config.max_body_bytes)
        self.task = asyncio.current_task()
        self.loop = asyncio.get_running_loop()
        self.clock = server.clock
        self.idle = True
        self.phase: str | None = None     # idle | head | body: what the deadline is for
        self.deadline = 0.0               # server clock time; 0 = none
        self.idle_since = 0.0             # server clock time the connection last went idle
        self.expired: str | None = None
        self.client = writer.get_extra_info("peername")
        self.trace: RequestTrace | None = None   # the request being read or answered

    @property
    def between_requests(self) -> bool:
        """Waiting for a request of which nothing has come: closing it loses nothing."""
        return self.phase == "idle" and not self.reader.has_unread

    def close_if_idle(self) -> None:
        if self.idle and self.task is not None:
            self.task.cancel()

    def set_deadline(self, phase: str | None, seconds: float = 0.0) -> None:
        """Arm (or with None, disarm) the timeout of the current phase; the server's
        sweeper enforces it. Cheaper than an asyncio timer per read on the hot path."""
        self.phase = phase
        self.deadline = self.clock() + seconds if phase else 0.0

    def expire(self) -> None:
        """Called by the sweeper once the deadline has passed."""
        self.expired, self.deadline = self.phase, 0.0
        self.task.cancel()

    async def run(self) -> None:
        first = True
        try:
            while True:
                head = None                        # a head refused as it is read is not the last one
                head = await self._read_head(first)
                if head is None:
                    return
                first = False
                self._begin(head)
                body = self.parser.take_body()     # all of it came with the head: no coroutine
                if body is None:
                    body = await self._read_body(head)
                headers = head.headers
                if head.content_codings is not None:
                    headers, body = decoded_body(headers, head.content_codings, body, self.config.max_body_bytes)
                request = Request(head.method, head.target, headers, body, head.version, self.client)
                keep_alive = head.keep_alive and not self.server.draining
                if not await self._respond(request, keep_alive):
                    return
        except ProtocolError as exc:
            if exc.head is not None and self.trace is None:
                self._begin(exc.head)                  # e.g. a 413: the head is there
            await self._send_error_and_close(exc.status, exc.message, exc.head or head, exc.headers)
        except asyncio.CancelledError:
            if self.expired in ("head", "body"):
                self.task.uncancel()
                await self._send_error_and_close(408, f"request {self.expired} not received in time", head)
            elif self.expired == "send":
                self.writer.transport.abort()      # a close would wait for the client to take the rest
        except ConnectionError:
            pass
        finally:
            self.writer.close()

    # -- reading -------------------------------------------------------------------------

    def _begin(self, head: Head) -> None:
        """A trace for the request whose head was just read, current for its task."""
        request_id = request_id_from(header_value(head.headers, REQUEST_ID_HEADER))
        self.trace = begin_request(RequestTrace(request_id, head.method, head.target.partition("?")[0]))

    async def _read_head(self, first: bool) -> Head | None:
        """The next request head, or None when the client closed or stayed idle too long."""
        event = self.parser.next_event()
        if event is not None:
            return event
        self.idle = self.parser.between_messages
        if self.server.draining and self.idle:
            return None
        config = self.config
        try:
            if self.idle:
                self.set_deadline("idle", config.header_timeout_s if first else config.keepalive_timeout_s)
                self.idle_since = self.clock()
                if not self._fed(await self.reader.read(READ_SIZE)):     # _fill, a coroutine fewer
                    return None
                self.idle = False
                event = self.parser.next_event()
                if event is not None:
                    return event
            self.set_deadline("head", config.header_timeout_s)     # absolute: defeats slowloris
            return await self._next_event_or_none()
        except asyncio.CancelledError:
            if self.expired == "idle":
                self.task.uncancel()
                return None
            raise
        finally:
            self.idle = False
            self.set_deadline(None)

    async def _next_event_or_none(self):
        while True:
            event = self.parser.next_event()
            if event is not None:
                return event
            if not await self._fill():
                self.parser.next_event()      # raises if the message was cut short
                return None

    async def _fill(self) -> bool:
        return self._fed(await self.reader.read(READ_SIZE))

    def _fed(self, data: bytes) -> bool:
        """A read's bytes to the parser; False (and EOF to the parser) when the client closed."""
        if not data:
            self.parser.feed_eof()
            return False
        self.parser.feed(data)
        return True

    async def _read_body(self, head: Head) -> bytes:
        """The body of the request, read as it comes (run takes one that came with the head)."""
        event = self.parser.next_event()
        if isinstance(event, EndOfMessage):           # no body, or all of it already here
            return b""
        if head.expect_continue:
            self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # One growing buffer, not a list of pieces: a body of 1-byte chunks took ~40 bytes of
        # memory per byte of body as a list (a 32 MB body over 1 GB).
        body = bytearray() if event is None else bytearray(event.data)
        self.set_deadline("body", self.config.header_timeout_s)
        try:
            while True:
                event = await self._next_event_or_none()
                if event is None:
                    raise ConnectionResetError("client closed during the body")
                if isinstance(event, EndOfMessage):
                    return bytes(body)
                body += event.data
        finally:
            self.set_deadline(None)

    # -- responding ----------------------------------------------------------------------

    async def _respond(self, request: Request, keep_alive: bool) -> bool:
        """Run the handler and write its response; False when the connection must close."""
        self.reader.on_close = self.task.cancel     # a client that leaves cancels its request
        trace, status = self.trace, 499             # nginx's "client closed request"
        try:
            response = await self._call_handler(request)
            keep_alive = keep_alive and not self.server.draining
            if response.stream is not None:
                keep_alive = keep_alive and request.version != "1.0"   # 1.0: the close ends the body
                await self._write_stream_response(request, response, keep_alive)
            elif self._write_whole_response(request, response, keep_alive):
                await self._drain()
            status = response.status
        finally:
            self.reader.on_close = None
            trace.finish(status)
            self.trace = begin_request(None)
        return keep_alive

    async def _call_handler(self, request: Request) -> Response:
        try:
            return await self.server.handler(request)
        except VeloError as exc:
            return Response.error(exc)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("handler failed for %s %s", request.method, request.path)
            return error_response(500, "internal server error", "server_error")

    def _write_whole_response(self, request: Request, response: Response, keep_alive: bool) -> bool:
        """Write an answer with a whole body (a plain function: it seldom has to wait); True
        when the transport's buffer is past its high-water mark and the caller must drain."""
        connection = KEEP_ALIVE_FIELD if request.version == "1.0" else b""
        body = response.body
        if response.status == 204:             # RFC 9110 8.6: a 204 has no Content-Length (a CORS preflight)
            fields = self._request_id_field() + (connection if keep_alive else CLOSE_FIELD)
        else:
            fields = b"%s%scontent-length: %d\r\n" % (
                self._request_id_field(), connection if keep_alive else CLOSE_FIELD, len(body))
        out = encode_head(response.status, response.headers, fields)
        self.writer.write(out if request.method == "HEAD" else out + body)
        self.trace.note_first_byte()
        return self.writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER

    async def _write_stream_response(self, request: Request, response: Response, keep_alive: bool) -> None:
        if request.version == "1.0":            # no chunked framing: the end is the close
            headers = [h for h in response.headers if h[0] != "connection"]
            fields = self._request_id_field() + CLOSE_FIELD
        else:
            headers = response.headers
            fields = self._request_id_field() + (b"" if keep_alive else CLOSE_FIELD) + CHUNKED_FIELD
        head = encode_head(response.status, headers, fields)
        self.trace.note_first_byte()
        if request.method == "HEAD":
            self.writer.write(head)
            await aclose(response.stream)
            return
        await self._write_stream(response, chunked=request.version != "1.0", head=head)

    def _request_id_field(self) -> bytes:
        """The x-request-id field line of the request's answer (the id is sanitised ASCII)."""
        return b"%s: %s\r\n" % (REQUEST_ID_NAME, self.trace.request_id.encode("latin-1"))

    async def _write_stream(self, response: Response, chunked: bool, head: bytes) -> None:
        out = CorkedBody(self.loop, self.writer, chunked, head)
        pinger = IdlePinger(self.loop, out, response) if response.idle_ping else None
        try:
            async for piece in response.stream:
                if piece:
                    out.write(piece)
                    if out.must_drain():
                        await self._drain()
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            # The head is gone already: the only honest signal left is to cut the stream.
            log.exception("stream failed mid-response")
            out.flush()                            # the head, if it still waits in the cork
            self.writer.transport.abort()
            raise ConnectionResetError("stream failed") from None
        finally:
            if pinger is not None:
                pinger.cancel()
            await aclose(response.stream)
        out.finish()
        if out.must_drain():
            await self._drain()

    async def _drain(self) -> None:
        """Wait until the client has taken enough of the answer, for send_timeout_s at most: a
        client that stops reading (gone to sleep, stalled) is dropped, and the stream it
        stopped, instead of holding its backend slot forever."""
        self.set_deadline("send", self.config.send_timeout_s)
        try:
            await self.writer.drain()
        finally:
            self.set_deadline(None)

    async def _send_error_and_close(self, status: int, message: str, head: Head | None = None,
                                    headers: dict[str, str] | None = None) -> None:
        """A protocol error on this connection, under the trace of its request if one began."""
        await self.server.send_refusal(self.reader, self.writer, status, message, head, headers, self.trace)
