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

import json
from typing import AsyncIterator

from ..errors import VeloError
from .message import Response
from ..streams import closing

PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = [("content-type", "text/event-stream; charset=utf-8"),
               ("cache-control", "no-cache"), ("x-accel-buffering", "no")]


def encode_event(event) -> bytes:
    """One `data:` frame; `event` is a dict (JSON-encoded) or pre-encoded bytes."""
    if isinstance(event, (bytes, bytearray)):
        return b"data: " + bytes(event) + b"\n\n"
    return b"data: " + json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


async def sse_frames(events: AsyncIterator, done: bool = True) -> AsyncIterator[bytes]:
    """Frames for `events`; a VeloError raised by the source becomes an error event."""
    try:
        async with closing(events) as source_iter:
            async for event in source_iter:
                yield encode_event(event)
    except VeloError as exc:
        yield encode_event(exc.to_dict())
        return
    if done:
        yield DONE


def sse_response(events: AsyncIterator, ping_s: float = 15.0, headers=None, done: bool = True) -> Response:
    """A streamed SSE Response; the server writes `: ping` whenever it stays silent `ping_s`."""
    return Response(200, [*SSE_HEADERS, *(headers or [])], stream=sse_frames(events, done),
                    idle_ping=PING, idle_ping_s=ping_s)


async def iter_sse_data(lines: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Client side: the payload of each event from a stream of SSE lines (comments skipped)."""
    data: list[bytes] = []
    async with closing(lines) as source_iter:
        async for line in source_iter:
            if not line:
                if data:
                    yield b"\n".join(data)
                    data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        yield b"\n".join(data)
