"""Server-Sent Events: framing, keep-alive pings, and the OpenAI `[DONE]` terminator.

`sse_response(events)` turns an async iterator of JSON-able events into a streamed Response:
one `data:` line per event, a `: ping` comment whenever the source stays silent for
`ping_s` seconds (so proxies and clients do not time out during a long prefill), and
`data: [DONE]` at the end. The server writes each frame and awaits drain() (flow control);
the pings come from the server's idle timer, so a busy stream pays nothing for them.
An event that is an `SSEError` is sent as `data: {"error": ...}` and ends the stream WITHOUT
`[DONE]`, which is how OpenAI clients learn that a stream failed midway.
"""
from __future__ import annotations

from typing import AsyncIterator

from ..errors import VeloError
from ..log import current_request_id
from ..wire import wirejson
from ..wire.streams import closing
from .message import Burst, Response

PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = [("content-type", "text/event-stream; charset=utf-8"),
               ("cache-control", "no-cache"), ("x-accel-buffering", "no")]


def encode_event(event) -> bytes:
    """One `data:` frame; `event` is a dict (JSON-encoded) or pre-encoded bytes; a Burst is
    framed already (relay.py) and passes as it is."""
    if type(event) is Burst:
        return event
    if isinstance(event, (bytes, bytearray)):
        return b"data: " + bytes(event) + b"\n\n"
    return b"data: " + wirejson.dumps(event) + b"\n\n"


def named_event(name: str, data: dict) -> bytes:
    """One `event: NAME` frame with a JSON `data:` line (Anthropic's streams name every event)."""
    return b"event: " + name.encode() + b"\ndata: " + wirejson.dumps(data) + b"\n\n"


async def sse_frames(events: AsyncIterator, done: bool = True) -> AsyncIterator[bytes]:
    """Frames for `events`; a VeloError raised by the source becomes an error event."""
    try:
        async with closing(events) as source_iter:
            async for event in source_iter:
                yield event if type(event) is Burst else encode_event(event)    # a relayed read: framed
    except VeloError as exc:
        yield encode_event(exc.to_dict(current_request_id()))
        return
    if done:
        yield DONE


def sse_response(events: AsyncIterator, ping_s: float = 15.0, headers=None, done: bool = True) -> Response:
    """A streamed SSE Response; the server writes `: ping` whenever it stays silent `ping_s`."""
    return Response(200, [*SSE_HEADERS, *(headers or [])], stream=sse_frames(events, done),
                    idle_ping=PING, idle_ping_s=ping_s)


class SSEDecoder:
    """Client side, sans-IO: bytes in, the payload of each complete event out.

    Works on whole reads rather than line by line: a read of one or more `data: {...}` events
    is split once on the blank line between events, and a one-line event (what every OpenAI
    server sends) costs one slice. Comments, `event:`/`id:` fields and multi-line data follow
    the SSE rules; CRLF and CR line endings are turned into LF first. `events`: a stream's
    JSON events only (blank payloads, OpenAI's `[DONE]` terminator and `null`, which
    llama-server opens a stream of several prompts with, left out)."""
    unit = "an event"                              # what an over-long `num_pending` is

    def __init__(self, events: bool = False):
        self._parts: list[bytes] = []              # the unfinished event, LF line endings
        self.num_pending = 0                       # its size in bytes
        self._cr = False                           # the last read ended in CR (its LF may follow)
        self._events = events

    def feed(self, data: bytes) -> list[bytes]:
        if self._cr:
            data, self._cr = b"\r" + data, False
        if b"\r" in data:
            if data.endswith(b"\r"):
                data, self._cr = data[:-1], True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        last = self._parts[-1][-1:] if self._parts else b""
        if b"\n\n" not in last + data:               # mid-event: kept as a piece, never re-scanned
            if data:
                self._parts.append(data)
                self.num_pending += len(data)
            return []
        pending = b"".join(self._parts) + data if self._parts else data
        *events, rest = pending.split(b"\n\n")
        self._parts, self.num_pending = ([rest] if rest else []), len(rest)
        return self._kept(events)

    def end(self) -> list[bytes]:
        """Payloads of an event cut short by the end of the body (no final blank line)."""
        pending = b"".join(self._parts)
        self._parts, self.num_pending, self._cr = [], 0, False
        event = pending.strip(b"\n")
        return self._kept([event]) if event else []

    def _kept(self, events: list[bytes]) -> list[bytes]:
        """The payloads of `events` (one-line `data: ` events sliced in place)."""
        payloads = [event[6:] if event[:6] == b"data: " and b"\n" not in event else _payload(event)
                    for event in events]
        if self._events:
            return [data for data in payloads if data and data != b"[DONE]" and data != b"null" and not data.isspace()]
        return [data for data in payloads if data is not None]


def _payload(event: bytes) -> bytes | None:
    """The data of one event (its `data:` lines joined by LF), or None when it has none."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]                            # the common case: one `data: ` line
    data = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(data) if data else None
