"""An OpenAI-compatible backend on raw asyncio sockets that misbehaves on demand.

    with FaultBackend() as backend:                 # 127.0.0.1, free port, its own thread + loop
        backend.fault("reset_mid_stream")           # the next generation request gets this fault
        ... the daemon in front of backend.url ...
        assert backend.num_generations == 1 and backend.num_open == 0

Generation requests (POST /v1/chat/completions, /v1/completions) take the next queued fault,
or answer properly ("ok": a JSON answer, or an SSE stream of three content chunks). With a
`width` (FaultBackend(width=3, answer_s=0.02)), a server of that many slots: each answer takes
`answer_s`, and a request past the width is refused as busy, 503 as llama-server words it. GET
/v1/models always answers, so health checks pass unless the server is stopped (`refuse`).
Every fault is a function below writing raw bytes, so a reader sees exactly what goes out.
"""
from __future__ import annotations

import asyncio
import collections
import json
import socket
import struct
import threading

MODEL = "fault-model"
PIECES = ["alpha", " beta", " gamma"]   # streamed one per event
TEXT = "".join(PIECES)


def _head(status: int, headers: list[tuple[str, str]], reason: str = "X") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _json_response(value, status: int = 200, extra: list[tuple[str, str]] = ()) -> bytes:
    body = json.dumps(value).encode()
    return _head(status, [("content-type", "application/json"), ("content-length", str(len(body))),
                          *extra]) + body


def _answer(endpoint: str) -> dict:
    if endpoint == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}
    else:
        choice = {"index": 0, "text": TEXT, "finish_reason": "stop"}
    return {"id": "f-1", "object": "chat.completion" if endpoint == "chat" else "text_completion",
            "created": 1, "model": MODEL, "choices": [choice],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}


def _chunk(endpoint: str, word: str | None) -> bytes:
    if endpoint == "chat":
        choice = {"index": 0, "delta": {"content": word} if word else {}, "finish_reason": None if word else "stop"}
    else:
        choice = {"index": 0, "text": word or "", "finish_reason": None if word else "stop"}
    event = {"id": "f-1", "object": "chat.completion.chunk" if endpoint == "chat" else "text_completion",
             "created": 1, "model": MODEL, "choices": [choice]}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


DEEP_LEVELS = 100_000                # deep_json: nesting of its answer
SSE_HEAD = _head(200, [("content-type", "text/event-stream"), ("transfer-encoding", "chunked")])


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Exchange:
    """One generation request: what the fault functions need to answer it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, endpoint: str, stream: bool):
        self.reader, self.writer, self.endpoint, self.stream = reader, writer, endpoint, stream

    async def until_client_leaves(self) -> None:
        """Stay silent until the client closes the connection."""
        while await self.reader.read(65536):
            pass

    def full_answer(self) -> bytes:
        if not self.stream:
            return _json_response(_answer(self.endpoint))
        events = [_chunk(self.endpoint, word) for word in PIECES] + [_chunk(self.endpoint, None), b"data: [DONE]\n\n"]
        return SSE_HEAD + b"".join(_chunked(e) for e in events) + b"0\r\n\r\n"

    def first_part(self) -> bytes:
        """The head and some of the body: half a JSON body, or the first SSE event."""
        if self.stream:
            return SSE_HEAD + _chunked(_chunk(self.endpoint, PIECES[0]))
        body = json.dumps(_answer(self.endpoint)).encode()
        return _head(200, [("content-type", "application/json"), ("content-length", str(len(body)))]) \
            + body[:len(body) // 2]


async def ok(ex: Exchange) -> bool:
    ex.writer.write(ex.full_answer())
    return True


async def refuse_once(ex: Exchange) -> bool:       # as close as a live server gets: FIN at once
    return False


async def reset_before_head(ex: Exchange) -> bool:
    _reset(ex.writer)
    return False


async def reset_mid_body(ex: Exchange) -> bool:
    ex.writer.write(ex.first_part())
    await ex.writer.drain()
    await asyncio.sleep(0.05)
    _reset(ex.writer)
    return False


reset_mid_stream = reset_mid_body                  # with stream: true, first_part is one SSE event


async def silent_after_head(ex: Exchange) -> bool:
    ex.writer.write(ex.first_part().split(b"\r\n\r\n")[0] + b"\r\n\r\n")
    await ex.until_client_leaves()
    return False


async def silent_mid_stream(ex: Exchange) -> bool:
    ex.writer.write(ex.first_part())
    await ex.until_client_leaves()
    return False


async def trickle(ex: Exchange) -> bool:
    """The whole answer, one byte a second (slower than the daemon's read timeout in tests)."""
    for i in range(len(data := ex.full_answer())):
        if ex.writer.is_closing() or ex.reader.at_eof():
            return False
        ex.writer.write(data[i:i + 1])
        await asyncio.sleep(1.0)
    return True


async def garbage(ex: Exchange) -> bool:
    ex.writer.write(b"SSH-2.0-OpenSSH_9.2p1\r\n\x00\x01\x02 not http at all\r\n\r\n")
    return False


async def short_content_length(ex: Exchange) -> bool:
    """Content-Length promises more than comes; then the connection closes."""
    body = json.dumps(_answer(ex.endpoint)).encode()
    ex.writer.write(_head(200, [("content-type", "application/json"),
                                ("content-length", str(len(body) + 100))]) + body)
    return False


async def long_content_length(ex: Exchange) -> bool:
    """Content-Length says less than is sent: the rest looks like the start of a next response."""
    body = json.dumps(_answer(ex.endpoint)).encode()
    ex.writer.write(_head(200, [("content-type", "application/json"),
                                ("content-length", str(len(body) - 10))]) + body)
    return True


async def bad_chunked(ex: Exchange) -> bool:
    ex.writer.write(SSE_HEAD if ex.stream else _head(200, [("content-type", "application/json"),
                                                           ("transfer-encoding", "chunked")]))
    ex.writer.write(b"zz-not-hex\r\nhello\r\n0\r\n\r\n")
    return False


async def not_json(ex: Exchange) -> bool:
    body = b"<html><body>502 Bad Gateway (nginx)</body></html>"
    if ex.stream:
        ex.writer.write(SSE_HEAD + _chunked(b"data: " + body + b"\n\n") + b"0\r\n\r\n")
    else:
        ex.writer.write(_head(200, [("content-type", "application/json"), ("content-length", str(len(body)))]) + body)
    return True


async def wrong_shape(ex: Exchange) -> bool:
    value = {"choices": "not a list", "id": 5}
    if ex.stream:
        event = b"data: " + json.dumps(value).encode() + b"\n\n"
        ex.writer.write(SSE_HEAD + _chunked(event) + _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    else:
        ex.writer.write(_json_response(value))
    return True


async def deep_json(ex: Exchange) -> bool:
    """An answer nested far deeper than any decoder recurses."""
    deep = b'{"choices":' + b"[" * DEEP_LEVELS + b"]" * DEEP_LEVELS + b"}"
    if ex.stream:
        ex.writer.write(SSE_HEAD + _chunked(b"data: " + deep + b"\n\n") + b"0\r\n\r\n")
    else:
        ex.writer.write(_head(200, [("content-type", "application/json"), ("content-length", str(len(deep)))]) + deep)
    return True


def status(code: int, retry_after: str | None = None):
    async def answer(ex: Exchange) -> bool:
        extra = [("retry-after", retry_after)] if retry_after is not None else []
        ex.writer.write(_json_response({"error": {"message": f"scripted {code}", "type": "server_error"}},
                                       code, extra))
        return True
    answer.__name__ = f"status_{code}" + ("_retry_after" if retry_after else "")
    return answer


FAULTS = {f.__name__: f for f in (ok, refuse_once, reset_before_head, reset_mid_body, silent_after_head,
                                  silent_mid_stream, trickle, garbage, short_content_length,
                                  long_content_length, bad_chunked, not_json, wrong_shape, deep_json)}
FAULTS["reset_mid_stream"] = reset_mid_stream
for _code in (429, 500, 503):
    for _after in (None, "7"):
        _fault = status(_code, _after)
        FAULTS[_fault.__name__] = _fault


class FaultBackend:
    """The server: a queue of faults for the next generation requests, and counters."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, width: int | None = None, answer_s: float = 0.0):
        self.host, self.port = host, port
        self.width, self.answer_s = width, answer_s
        self.num_inflight = 0                      # generations being answered (with a width)
        self.num_busy = 0                          # refused past the width
        self.num_generations = 0                   # generation requests received
        self.num_open = 0                          # connections open right now
        self.bodies: list[bytes] = []              # raw generation request bodies, in order
        self._faults: collections.deque[str] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def fault(self, *names: str) -> None:
        for name in names:
            if name not in FAULTS:
                raise KeyError(f"unknown fault {name!r}; known: {sorted(FAULTS)}")
        self._faults.extend(names)

    # lifecycle: start / stop (then connections are refused) / restart on the same port
    def start(self) -> FaultBackend:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-backend", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    def refuse(self) -> None:
        """Stop listening and drop every connection: new connections are refused."""
        async def close():
            self._server.close()
            for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                task.cancel()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)

    def restart(self) -> None:
        self.refuse()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    def stop(self) -> None:
        if self._loop is None:
            return
        self.refuse()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> FaultBackend:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # serving
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.num_open += 1
        try:
            while await self._one_request(reader, writer):
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self.num_open -= 1
            writer.transport.abort()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is to be closed."""
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = dict(line.lower().split(": ", 1) for line in header_lines if ": " in line)
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        endpoint = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}.get(path)
        if method == "GET" and path == "/v1/models":
            writer.write(_json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]}))
            return True
        if method != "POST" or endpoint is None:
            writer.write(_json_response({"error": {"message": "not found"}}, 404))
            return True
        self.num_generations += 1
        self.bodies.append(body)
        stream = bool(json.loads(body).get("stream"))
        exchange = Exchange(reader, writer, endpoint, stream)
        if self.width is not None and not self._faults:
            return await self._within_width(exchange)
        name = self._faults.popleft() if self._faults else "ok"
        return await FAULTS[name](exchange)

    async def _within_width(self, ex: Exchange) -> bool:
        """Busy past the width, as llama-server without a free slot; else the answer after answer_s."""
        if self.num_inflight >= self.width:
            self.num_busy += 1
            ex.writer.write(_json_response({"error": {"code": 503, "message": "no slot available",
                                                      "type": "unavailable_error"}}, 503))
            return True
        self.num_inflight += 1
        try:
            await asyncio.sleep(self.answer_s)
            ex.writer.write(ex.full_answer())
        finally:
            self.num_inflight -= 1
        return True
