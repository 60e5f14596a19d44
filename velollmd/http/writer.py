"""Writing responses: heads, corked stream bodies, idle pings, and the final error answer."""
from __future__ import annotations

import asyncio
import email.utils
import time

from ..errors import VeloError
from .message import READ_SIZE, REASONS, Burst, Response

WRITE_HIGH_WATER = 65536        # below this, a whole response is left to the transport


class _DateHeader:
    """The Date header, formatted at most once per second."""

    def __init__(self):
        self._second = 0
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = b"date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._value


DATE = _DateHeader()


def error_response(status: int, message: str, error_type: str = "invalid_request_error") -> Response:
    return Response.error(VeloError(message, status=status, error_type=error_type))


def refusal(status: int, message: str) -> VeloError:
    """The error of a request the HTTP server refused before any handler ran: the client's
    fault (400, 408, 413...), or the server's state (503: at its connection cap, draining)."""
    return VeloError(message, status=status, error_type="api_error" if status >= 500 else "invalid_request_error")


def _status_line(status: int) -> bytes:
    return f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n".encode("latin-1")


STATUS_LINES = {status: _status_line(status) for status in REASONS}


def encode_head(status: int, headers: list[tuple[str, str]], fields: bytes = b"") -> bytes:
    """A response head: the status line, `headers`, then `fields` (field lines the caller
    encoded itself, each with its CRLF), the Date and the blank line."""
    return ((STATUS_LINES.get(status) or _status_line(status))
            + "".join([f"{name}: {value}\r\n" for name, value in headers]).encode("latin-1")
            + fields + DATE.get() + b"\r\n")


class CorkedBody:
    """Body pieces produced in one event-loop turn go out in one send.

    A backend read often carries several tokens; the generator chain turns them into
    several frames without yielding to the loop, and sends are costly syscalls. The flush is
    scheduled with call_soon, so nothing waits longer than the current loop turn. A `Burst`
    (a relayed read, framed whole already) goes out at once: corking it would only cost the
    loop one more turn per chunk. The response head waits in the cork too, so that a stream
    whose first piece is ready (a primed one) sends its head and that piece in one send."""

    def __init__(self, loop, writer, chunked: bool, head: bytes = b""):
        self.loop, self.writer, self.chunked = loop, writer, chunked
        self.transport = writer.transport
        self.pending = bytearray()
        self.last_write = loop.time()
        if head:
            self.pending += head
            loop.call_soon(self.flush)

    def write(self, piece: bytes) -> None:
        framed = b"%x\r\n%b\r\n" % (len(piece), piece) if self.chunked else piece
        self.last_write = self.loop.time()
        if type(piece) is Burst:            # nothing more is coming this turn: no cork
            if self.pending:
                self.pending += framed
                self.flush()
            else:
                self.writer.write(framed)
            return
        if not self.pending:
            self.loop.call_soon(self.flush)
        self.pending += framed

    def flush(self) -> None:
        if self.pending and not self.transport.is_closing():
            self.writer.write(bytes(self.pending))
        self.pending.clear()

    def finish(self) -> None:
        """Send what is pending and the chunked terminator, in one send."""
        if self.chunked:
            self.pending += b"0\r\n\r\n"
        self.flush()

    def must_drain(self) -> bool:
        return self.transport.get_write_buffer_size() > WRITE_HIGH_WATER


class IdlePinger:
    """Writes `response.idle_ping` into a stream that has been silent for idle_ping_s.

    A timer, not a wrapper around the stream: a busy stream pays nothing for it."""

    def __init__(self, loop, body: CorkedBody, response: Response):
        self.loop, self.body, self.ping = loop, body, response.idle_ping
        self.interval = response.idle_ping_s
        self.handle = loop.call_later(self.interval, self._fire)

    def _fire(self) -> None:
        if self.loop.time() - self.body.last_write >= self.interval * 0.999:
            self.body.write(self.ping)
        self.handle = self.loop.call_at(self.body.last_write + self.interval, self._fire)

    def cancel(self) -> None:
        self.handle.cancel()


async def send_final_response(reader, writer, response: Response, linger_s: float = 1.0) -> None:
    """Write a response and close without a reset.

    Closing a socket with unread request bytes makes the kernel send RST, which can destroy
    the response before the client reads it. So: write, half-close, and discard what the
    client still sends for up to `linger_s`, then close.
    """
    fields = b"content-length: %d\r\nconnection: close\r\n" % len(response.body)
    try:
        writer.write(encode_head(response.status, response.headers, fields) + response.body)
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(linger_s):
            await writer.drain()
            while await reader.read(READ_SIZE):
                pass
    except (OSError, TimeoutError):       # the client left already (ENOTCONN on the half-close)
        pass
    finally:
        writer.close()
