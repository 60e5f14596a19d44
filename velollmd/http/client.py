"""HTTP/1.1 client over raw asyncio sockets, using the same sans-IO parser in client role.

`HTTPClient` keeps a pool of keep-alive connections to one backend. A response body is read
whole (`read`, `json`) or streamed (`iter_raw`, `iter_lines` for NDJSON, `iter_sse` for SSE).
A response whose body was read to the end goes back to the pool; one abandoned halfway, or
whose reader was cancelled, closes its socket at once, so a client that goes away stops the
backend's work.

Every buffer is bounded: a whole body over MAX_BODY_BYTES, or one NDJSON line or SSE event over
MAX_EVENT_BYTES, is a BackendError (a 502 or an error event), never a daemon that grows until
the OOM killer comes: a broken backend may answer an endless body.
"""
from __future__ import annotations

import asyncio
import json as jsonlib
import ssl
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator
from urllib.parse import urlsplit

from ..errors import BackendError, BackendTimeout
from ..wire import wirejson
from ..wire.streams import closing
from .message import READ_SIZE
from .parser import Head, HTTPParser, ProtocolError
from .sse import SSEDecoder

MAX_BODY_BYTES = 64 * 1024 * 1024           # a whole (non-streamed) response body
MAX_EVENT_BYTES = 16 * 1024 * 1024          # one NDJSON line or one SSE event of a stream


def _too_big(what: str, limit: int) -> BackendError:
    return BackendError(f"backend sent {what} over {limit // (1024 * 1024)} MiB; connection closed")


def take_usable(idle: list):
    """The most recently pooled connection that is still usable, or None; the dead ones met on
    the way are aborted and dropped. Any pool of connections with usable() and abort()."""
    while idle:
        conn = idle.pop()
        if conn.usable():
            return conn
        conn.abort()
    return None


async def open_stream(host: str, port: int, *, tls: bool = False, timeout: float, unix_path: str = ""):
    """A connected (reader, writer) pair: TCP, TLS (the system's CA store, the host name checked)
    or a Unix socket. Raises TimeoutError after `timeout` s, OSError when it cannot connect."""
    async with asyncio.timeout(timeout):
        if unix_path:
            return await asyncio.open_unix_connection(unix_path, limit=READ_SIZE)
        context = ssl.create_default_context() if tls else None
        return await asyncio.open_connection(host, port, ssl=context, limit=READ_SIZE)


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int
    base_path: str

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class _Conn:
    """One keep-alive connection, with a read watchdog while a request is out.

    The watchdog is one timer per connection, moved lazily: a read only records its time, where an
    `asyncio.timeout` around every read would arm and cancel a timer per streamed chunk. Between
    requests the timer is left to run out (it finds the connection idle and stops), so a request on
    a pooled connection usually finds it still pending and arms no timer of its own."""
    __slots__ = ("reader", "writer", "parser", "last_chunked", "loop", "last_read", "timeout",
                 "timed_out", "watchdog", "watching")

    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer
        self.parser = HTTPParser("client", max_header_bytes=65536, max_body_bytes=1 << 40)
        self.last_chunked = False           # did the last response on it stream (chunked)?
        self.loop = asyncio.get_running_loop()
        self.last_read = 0.0
        self.timeout = 0.0
        self.timed_out = False
        self.watching = False               # a request is out: silence past `timeout` aborts
        self.watchdog: asyncio.TimerHandle | None = None

    def arm(self, timeout: float) -> None:
        """Start watching: from now on, `timeout` seconds without a byte abort the connection."""
        self.timeout, self.timed_out, self.watching = timeout, False, True
        self.last_read = self.loop.time()
        due = self.last_read + timeout
        watchdog = self.watchdog
        if watchdog is not None and watchdog.when() > due:      # a shorter timeout than before
            watchdog.cancel()
            watchdog = None
        if watchdog is None:
            self.watchdog = self.loop.call_at(due, self._check)

    def disarm(self) -> None:
        """Stop watching; the pending timer, if any, stays and finds the connection idle."""
        self.watching = False

    def _check(self) -> None:
        if not self.watching:
            self.watchdog = None
            return
        due = self.last_read + self.timeout
        if self.loop.time() < due:
            self.watchdog = self.loop.call_at(due, self._check)
            return
        self.watchdog, self.timed_out = None, True
        self.abort()                        # the pending read sees EOF and reports the timeout

    def usable(self) -> bool:
        """Open, between responses, and with nothing unread: bytes that came while it was idle
        (a server's stray 408 before its close, the rest of an over-long body) would be taken
        for the answer to the next request. (StreamReader has no public count of its buffer.)"""
        return not self.reader._buffer and not self.reader.at_eof() \
            and not self.writer.transport.is_closing() and self.parser.between_messages

    def abort(self) -> None:
        self.watching = False
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        self.writer.transport.abort()


class ClientResponse:
    """A response head plus a body that is read on demand."""

    def __init__(self, client: HTTPClient, conn: _Conn, head: Head):
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers
        self._head = head
        self._client = client
        self._conn: _Conn | None = conn
        self._done = False

    def header(self, name: str, default: str | None = None) -> str | None:
        return self._head.get(name, default)

    def iter_raw(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (chunk framing removed), one piece per socket read."""
        return _each(_BodyBatches(self, _RawPieces()))

    async def _next_data(self) -> bytes | None:
        """The body bytes that the next socket read brings (every chunk of it, joined), or
        None at the end of the body. A read often carries several chunks of a stream (several
        tokens, or the last one with the usage and `[DONE]`): they go up as one piece, so the
        layers above split and relay them once per read, not once per chunk."""
        try:
            while (data := self._take_data()) == b"":        # what the last read brought needs no await
                await self._client._read_more(self._conn)
        except BaseException:
            self.close()
            raise
        return data

    def _take_data(self) -> bytes | None:
        """The body bytes the buffer holds (every chunk in it, joined), b"" when it holds none,
        None once the body has ended (a body's last bytes come first, the end on the next call)."""
        if self._done:
            return None
        parts = []
        if self._client._take_data(self._conn, parts):
            self._finish(reusable=self._head.keep_alive)
            if not parts:
                return None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def iter_lines(self) -> AsyncIterator[bytes]:
        """Body split into lines (without line endings); blank lines are kept."""
        return _each(self.iter_line_batches())

    def iter_line_batches(self, events: bool = False) -> AsyncIterator[list[bytes]]:
        """The lines completed by each read of the body (never an empty list); `events`:
        the events of a stream only (blank lines and `[DONE]` left out)."""
        return _BodyBatches(self, _LineSplitter(events))

    def iter_sse(self) -> AsyncIterator[bytes]:
        """The payload of each Server-Sent Event of the body (comments skipped)."""
        return _each(self.iter_sse_batches())

    def iter_sse_batches(self, events: bool = False) -> AsyncIterator[list[bytes]]:
        """The event payloads completed by each read of the body (never an empty list);
        `events`: a stream's events only (blank ones and `[DONE]` left out)."""
        return _BodyBatches(self, SSEDecoder(events))

    async def read(self, limit: int = MAX_BODY_BYTES) -> bytes:
        body = self._buffered_body(limit)
        return await self._read_rest(limit) if body is None else body

    def _buffered_body(self, limit: int) -> bytes | None:
        """The whole body when all of it came with the head (the response is then done), else
        None: `read` and `json` take it without a coroutine of their own."""
        body = None if self._done else self._conn.parser.take_body()
        if body is not None:
            self._finish(reusable=self._head.keep_alive and len(body) <= limit)
            if len(body) > limit:
                raise _too_big("a body", limit)
        return body

    async def _read_rest(self, limit: int) -> bytes:
        """The body as the reads bring it, up to its end (or none once the response is done)."""
        parts, size = [], 0
        try:
            while not self._done and (data := await self._next_data()) is not None:
                size += len(data)
                if size > limit:
                    raise _too_big("a body", limit)
                parts.append(data)
        finally:
            self.close()
        return b"".join(parts)

    async def json(self):
        body = self._buffered_body(MAX_BODY_BYTES)
        if body is None:
            body = await self._read_rest(MAX_BODY_BYTES)
        try:
            return jsonlib.loads(body)
        except (ValueError, RecursionError):     # not JSON, or nested past any decoder
            raise BackendError(f"backend sent invalid JSON (status {self.status}): {body[:200]!r}") from None

    def _finish(self, reusable: bool) -> None:
        self._done = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.last_chunked = self._head.chunked
            self._client._release(conn, reusable)

    def close(self) -> None:
        """Abandon the body: the socket is closed at once (stops the backend's work)."""
        if not self._done:
            self._finish(reusable=False)

    async def __aenter__(self) -> ClientResponse:
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()


class _BodyBatches:
    """The items that each read of a streamed body completes (never an empty list), split by
    `splitter` (`feed(data)` -> items, `end()` -> the items cut short by the body's end).

    A class, not an async generator over `_next_data`: a stream's every read resumes one frame
    here (the socket read's own await included) instead of three. The body is closed (its
    connection dropped unless read to the end) on any error, and by `aclose()`."""
    __slots__ = ("response", "splitter", "starved", "ended")

    def __init__(self, response: ClientResponse, splitter):
        self.response, self.splitter = response, splitter
        self.starved = False            # the buffer holds no body byte left to take: read first
        self.ended = False

    def __aiter__(self) -> _BodyBatches:
        return self

    async def __anext__(self) -> list:
        response = self.response
        try:
            while not self.ended:
                if self.starved and not response._done:     # the socket read, inlined: no frame more
                    conn = response._conn
                    try:
                        read = await conn.reader.read(READ_SIZE)
                    except ConnectionError:
                        raise response._client._reset(conn) from None
                    response._client._fed(conn, read)
                self.starved = True
                data = response._take_data()
                if data is None:                        # the body's end
                    self.ended = True
                    items = self.splitter.end()
                else:
                    items = self.splitter.feed(data)
                    if self.splitter.num_pending > MAX_EVENT_BYTES:
                        raise _too_big(self.splitter.unit, MAX_EVENT_BYTES)
                if items:
                    return items
        except BaseException:
            response.close()
            raise
        response.close()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.ended = True
        self.response.close()


class _RawPieces:
    """Splits nothing: each read's body bytes are one item."""
    __slots__ = ()
    num_pending = 0

    @staticmethod
    def feed(data: bytes) -> list[bytes]:
        return [data] if data else []

    @staticmethod
    def end() -> list[bytes]:
        return []


class _LineSplitter:
    """A body's lines (without line endings), as the reads complete them; `events`: the
    events of a stream only (blank lines and `[DONE]` left out)."""
    __slots__ = ("events", "parts", "num_pending")
    unit = "a line"

    def __init__(self, events: bool):
        self.events = events
        self.parts: list[bytes] = []                  # the unfinished line, never re-scanned
        self.num_pending = 0

    def feed(self, data: bytes) -> list[bytes]:
        if b"\n" not in data:
            self.parts.append(data)
            self.num_pending += len(data)
            return []
        *lines, pending = (b"".join(self.parts) + data if self.parts else data).split(b"\n")
        self.parts, self.num_pending = ([pending] if pending else []), len(pending)
        return _kept([line[:-1] if line.endswith(b"\r") else line for line in lines], self.events)

    def end(self) -> list[bytes]:
        lines = [b"".join(self.parts)] if self.parts else []
        self.parts, self.num_pending = [], 0
        return _kept(lines, self.events)


def _broke_http(conn: _Conn, exc: ProtocolError) -> BackendError:
    """The backend's answer broke HTTP/1.1: its connection dropped, the error to raise."""
    conn.abort()
    return BackendError(f"backend broke HTTP: {exc.message}")


def _kept(payloads: list[bytes], events: bool) -> list[bytes]:
    """`payloads`; with `events`, a stream's JSON events only: blank payloads and OpenAI's
    `[DONE]` terminator dropped."""
    if not events or not payloads:
        return payloads
    return [data for data in payloads if data and not data.isspace() and data != b"[DONE]"]


async def _each(batches: AsyncIterator[list]) -> AsyncIterator:
    async with closing(batches) as source_iter:
        async for batch in source_iter:
            for item in batch:
                yield item


class HTTPClient:
    """A keep-alive connection pool to one backend origin."""

    def __init__(self, url: str, *, connect_timeout: float = 5.0, read_timeout: float = 600.0,
                 max_idle: int = 64, headers: dict[str, str] | None = None):
        self.origin = Origin.parse(url)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle
        self.default_headers = {"host": self.origin.host_header, **(headers or {})}
        # The header block of a JSON request with no headers of its own (every backend call):
        # the fields _encode_request would write before content-length, encoded once.
        self._json_fields = "".join(f"{name}: {value}\r\n" for name, value in {
            **self.default_headers, "content-type": "application/json"}.items()).encode("latin-1")
        self._idle: deque[_Conn] = deque()
        self.num_connects = 0          # connections opened so far (tests check reuse with it)
        # Some servers (llama.cpp's cpp-httplib) close the connection after every chunked
        # response, a moment after its last byte. Once seen, such connections are not pooled:
        # reusing one costs a wasted round trip before the retry.
        self.closes_after_chunked = False

    async def request(self, method: str, path: str, *, body: bytes | None = None, json=None,
                      headers: dict[str, str] | None = None) -> ClientResponse:
        """Send a request and return once the response head has arrived."""
        target = self.origin.base_path + path
        if json is not None and not headers:
            payload = self._encode_json_request(method, target, wirejson.dumps(json))
        else:
            if json is not None:
                body = wirejson.dumps(json)
                headers = {"content-type": "application/json", **headers}
            payload = self._encode_request(method, target, body, headers)
        conn = self._take_idle()
        pooled = conn is not None
        if not pooled:
            conn = await self._connect()
        while True:     # the exchange, inlined (a coroutine level fewer on every answer's path)
            try:
                conn.parser.expect_response(method)
                conn.arm(self.read_timeout)
                conn.writer.write(payload)
                if conn.writer.transport.get_write_buffer_size():   # else drain() has nothing to wait for
                    await conn.writer.drain()
                await self._read_more(conn, stale_ok=True)      # a pooled connection has nothing buffered
                event = self._parsed(conn) or await self._read_event(conn)
                while isinstance(event, Head) and 100 <= event.status < 200:
                    await self._next_event(conn)           # the 1xx's empty EndOfMessage
                    event = await self._next_event(conn)
                return ClientResponse(self, conn, event)
            except (ConnectionError, _StaleConnection):
                conn.abort()
                if not pooled:
                    raise BackendError(f"backend {self.origin.host_header} closed the connection "
                                       "before answering", code="backend_reset") from None
                self.closes_after_chunked |= conn.last_chunked
            except BaseException:
                conn.abort()
                raise
            conn, pooled = await self._connect(), False     # the backend closed a pooled one: one fresh try

    def _encode_request(self, method: str, target: str, body: bytes | None,
                        headers: dict[str, str] | None) -> bytes:
        merged = {**self.default_headers, **{k.lower(): v for k, v in (headers or {}).items()}}
        if body is not None or method in ("POST", "PUT", "PATCH"):
            merged["content-length"] = str(len(body or b""))
        lines = [f"{method} {target or '/'} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in merged.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")

    def _encode_json_request(self, method: str, target: str, body: bytes) -> bytes:
        """_encode_request's bytes for a JSON body and no headers of the request's own."""
        return b"%s %s HTTP/1.1\r\n%scontent-length: %d\r\n\r\n%s" % (
            method.encode("latin-1"), (target or "/").encode("latin-1"), self._json_fields, len(body), body)

    @staticmethod
    def _parsed(conn: _Conn):
        """The next event already in the connection's buffer, or None."""
        try:
            return conn.parser.next_event()
        except ProtocolError as exc:
            raise _broke_http(conn, exc) from None

    @staticmethod
    def _take_data(conn: _Conn, parts: list) -> bool:
        """`parser.take_data`: the body pieces in the connection's buffer; True at the end."""
        try:
            return conn.parser.take_data(parts)
        except ProtocolError as exc:
            raise _broke_http(conn, exc) from None

    async def _next_event(self, conn: _Conn):
        return self._parsed(conn) or await self._read_event(conn)

    async def _read_event(self, conn: _Conn):
        """The next event once more bytes came: the caller found none in the buffer."""
        while True:
            await self._read_more(conn)
            event = self._parsed(conn)
            if event is not None:
                return event

    async def _read_more(self, conn: _Conn, stale_ok: bool = False) -> None:
        """One socket read fed to the parser (its EOF, when the peer closed)."""
        try:
            data = await conn.reader.read(READ_SIZE)
        except ConnectionError:
            if stale_ok and conn.parser.between_messages:
                raise
            raise self._reset(conn) from None
        self._fed(conn, data, stale_ok)

    def _reset(self, conn: _Conn) -> BackendError:
        """A reset mid-response: to the caller, a broken backend."""
        conn.abort()
        return BackendError(f"backend {self.origin.host_header} reset the connection "
                            "mid-response", code="backend_reset")

    def _fed(self, conn: _Conn, data: bytes, stale_ok: bool = False) -> None:
        """A read's bytes to the parser (its EOF when empty), once the watchdog has seen it."""
        conn.last_read = conn.loop.time()
        if conn.timed_out:
            raise BackendTimeout(f"backend {self.origin.host_header} sent nothing for "
                                 f"{self.read_timeout:g} s")
        if not data:
            if stale_ok and conn.parser.between_messages:
                raise _StaleConnection()
            conn.parser.feed_eof()
        conn.parser.feed(data)

    async def _connect(self) -> _Conn:
        try:
            reader, writer = await open_stream(self.origin.host, self.origin.port,
                                               tls=self.origin.scheme == "https", timeout=self.connect_timeout)
        except TimeoutError:
            raise BackendTimeout(f"connecting to backend {self.origin.host_header} timed out") from None
        except OSError as exc:
            raise BackendError(f"cannot connect to backend {self.origin.host_header}: "
                               f"{exc.strerror or exc}", code="backend_unreachable") from None
        self.num_connects += 1
        return _Conn(reader, writer)

    @property
    def num_idle(self) -> int:
        """Keep-alive connections waiting in the pool (open sockets that are not a leak)."""
        return len(self._idle)

    def _take_idle(self) -> _Conn | None:
        return take_usable(self._idle)

    def _release(self, conn: _Conn, reusable: bool) -> None:
        conn.disarm()
        if conn.last_chunked and self.closes_after_chunked:
            reusable = False
        if reusable and conn.usable() and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.abort()

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().abort()


class _StaleConnection(Exception):
    """A pooled connection was closed by the peer before any response byte."""
