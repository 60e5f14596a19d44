"""The soak: a real daemon process under a long mixed load, slowloris, a 1 GiB body and
backends that never stop talking; each case reports what leaked.

Every case returns a `CaseResult`: requests made, unexpected outcomes (a status or an event
that was not the documented one), the daemon's open fds and asyncio tasks after the case minus
before it (after warm-up, once idle), its RSS before and after, and the latencies of the
normal requests. `benchmarks/soak.py` (`make soak`) runs the full sizes and prints the table;
tests/soak/test_soak.py runs small ones and asserts on them.
"""
from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass, field

from velollmd.ctl.bench.stats import percentile
from velollmd.http.client import HTTPClient
from velollmd.http.parser import EndOfMessage, Head, HTTPParser

MIB = 1024 * 1024
MIX = ("chat", "chat_stream", "cache_hit", "tool_call", "ollama_chat", "ollama_stream", "messages",
       "responses", "disconnect", "pipelined")


@dataclass
class CaseResult:
    case: str
    requests: int = 0
    unexpected: collections.Counter = field(default_factory=collections.Counter)
    leaked_fds: int | None = None
    leaked_tasks: int | None = None
    rss_start: int = 0
    rss_end: int = 0
    latencies: list[float] = field(default_factory=list)     # seconds, normal requests only
    note: str = ""

    @property
    def num_unexpected(self) -> int:
        return sum(self.unexpected.values())

    def row(self) -> str:
        p50 = f"{percentile(self.latencies, 50) * 1e3:.1f}" if self.latencies else "-"
        p99 = f"{percentile(self.latencies, 99) * 1e3:.1f}" if self.latencies else "-"
        leaks = f"{_fmt(self.leaked_fds)} / {_fmt(self.leaked_tasks)}"
        return (f"| {self.case} | {self.requests:,} | {self.num_unexpected} | {leaks} | "
                f"{self.rss_start / MIB:.0f} -> {self.rss_end / MIB:.0f} MiB | {p50} / {p99} | {self.note} |")


TABLE_HEAD = ("| case | requests | unexpected | leaked fds / tasks | RSS start -> end | p50 / p99 ms | notes |\n"
              "|---|---:|---:|---:|---:|---:|---|")


def _fmt(value: int | None) -> str:
    return "-" if value is None else f"{value:+d}"


# -- the daemon's resources -------------------------------------------------------------------

async def runtime(url: str) -> dict:
    """tasks, open_fds, threads, rss_bytes of the daemon (its loopback-only runtime route)."""
    client = HTTPClient(url)
    try:
        response = await client.request("GET", "/v1/velollm/runtime")
        return await response.json()
    finally:
        await client.close()


async def settled(url: str, baseline: dict | None = None, timeout: float = 15.0) -> dict:
    """The runtime numbers once the daemon is idle: polled until tasks and fds stop falling
    (or reach `baseline`), since closed connections take a tick or two to be reaped."""
    deadline = time.monotonic() + timeout
    last = await runtime(url)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        now = await runtime(url)
        reached = baseline is not None and now["tasks"] <= baseline["tasks"] and _fds(now) <= _fds(baseline)
        if reached or (baseline is None and now["tasks"] == last["tasks"] and _fds(now) == _fds(last)):
            return now
        last = now
    return last


def _fds(numbers: dict) -> int:
    """Open fds less the pooled backend connections (kept open on purpose, up to max_idle)."""
    return numbers["open_fds"] - numbers["backend_idle_connections"]


def leaks(result: CaseResult, before: dict, after: dict) -> CaseResult:
    result.leaked_fds = _fds(after) - _fds(before)
    result.leaked_tasks = after["tasks"] - before["tasks"]
    result.rss_start, result.rss_end = before["rss_bytes"], after["rss_bytes"]
    return result


# -- one request of the mix -------------------------------------------------------------------

def chat_body(i: int, *, stream: bool = False, cached: bool = False, text: str | None = None, **extra) -> dict:
    question = text or (f"Frequently asked question {i % 8}" if cached else f"Tell me story number {i}.")
    return {"model": "tiny", "max_tokens": 16, "temperature": 0 if cached else 1, "stream": stream,
            "messages": [{"role": "user", "content": question}], **extra}


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


async def count_events(response) -> int:
    return sum([1 async for _ in response.iter_sse()])


async def one_of_mix(client: HTTPClient, url: str, kind: str, i: int, with_tools: bool) -> str | None:
    """Runs request `i` of `kind`; None when it went as documented, else what went wrong."""
    if kind == "disconnect":
        return await disconnect_mid_stream(url, i)
    if kind == "pipelined":
        return await pipelined(url, i)
    if kind == "tool_call" and not with_tools:
        kind = "chat"
    path, body, expect = _request_of(kind, i)
    response = await client.request("POST", path, json=body)
    if response.status != 200:
        detail = (await response.read())[:120]
        return f"{kind} {response.status} {detail!r}"
    if body.get("stream"):
        lines = [line async for line in response.iter_lines() if line]
        return None if lines and expect(lines) else f"{kind} stream ended early ({len(lines)} lines)"
    answer = await response.json()
    return None if expect(answer) else f"{kind} answer of the wrong shape: {json.dumps(answer)[:120]}"


def _request_of(kind: str, i: int):
    """(path, body, check of the answer) for the HTTP-client kinds of the mix."""
    if kind == "chat":
        return "/v1/chat/completions", chat_body(i), lambda a: a["choices"][0]["message"]["content"]
    if kind == "chat_stream":
        return "/v1/chat/completions", chat_body(i, stream=True), lambda lines: lines[-1] == b"data: [DONE]"
    if kind == "cache_hit":
        return "/v1/chat/completions", chat_body(i, cached=True), lambda a: a["choices"][0]["message"]["content"]
    if kind == "tool_call":
        body = chat_body(i, text=f"Please call a tool for city {i}", tools=[WEATHER_TOOL],
                         logit_bias={"<tool_call>": 100})
        return "/v1/chat/completions", body, lambda a: a["choices"][0]["finish_reason"] == "tool_calls"
    if kind == "ollama_chat":
        body = {"model": "tiny", "stream": False, "options": {"num_predict": 16},
                "messages": [{"role": "user", "content": f"Ollama question {i}"}]}
        return "/api/chat", body, lambda a: a["done"] is True
    if kind == "ollama_stream":
        body = {"model": "tiny", "options": {"num_predict": 16},
                "messages": [{"role": "user", "content": f"Ollama stream {i}"}]}
        return "/api/chat", {**body, "stream": True}, lambda lines: json.loads(lines[-1])["done"] is True
    if kind == "messages":
        body = {"model": "tiny", "max_tokens": 16, "messages": [{"role": "user", "content": f"Message {i}"}]}
        return "/v1/messages", body, lambda a: a["type"] == "message"
    if kind == "responses":
        body = {"model": "tiny", "max_output_tokens": 16, "input": f"Response {i}", "store": False}
        return "/v1/responses", body, lambda a: a["object"] == "response"
    raise ValueError(kind)


def _request_bytes(method: str, path: str, body: dict | None = None, extra: str = "") -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nhost: soak\r\n{extra}"
    if body is not None:
        head += f"content-type: application/json\r\ncontent-length: {len(data)}\r\n"
    return head.encode() + b"\r\n" + data


async def _open(url: str):
    host, port = url.rsplit("/", 1)[1].split(":")
    return await asyncio.open_connection(host, int(port))


async def disconnect_mid_stream(url: str, i: int, prompt: str = "endless stream please") -> str | None:
    """A stream request whose client hangs up after the first event (the backend may still be
    writing: the daemon must stop the upstream call and free everything)."""
    reader, writer = await _open(url)
    try:
        writer.write(_request_bytes("POST", "/v1/chat/completions", chat_body(i, stream=True, text=prompt)))
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            return f"disconnect {head[:40]!r}"
        await reader.readuntil(b"data: ")
        return None
    finally:
        writer.transport.abort()                       # a reset, as a killed client does


async def pipelined(url: str, i: int) -> str | None:
    """Three requests written at once on one connection; three answers, in order."""
    reader, writer = await _open(url)
    requests = [("POST", "/v1/chat/completions", chat_body(i)), ("GET", "/v1/models", None),
                ("POST", "/v1/chat/completions", chat_body(i + 1, cached=True))]
    parser = HTTPParser("client")
    try:
        writer.write(b"".join(_request_bytes(m, p, b) for m, p, b in requests))
        statuses = []
        for method, _, _ in requests:
            parser.expect_response(method)
        while len(statuses) < len(requests):
            event = parser.next_event()
            if event is None:
                data = await reader.read(65536)
                if not data:
                    return f"pipelined: connection closed after {len(statuses)} answers"
                parser.feed(data)
            elif isinstance(event, Head):
                statuses.append(event.status)
            elif isinstance(event, EndOfMessage):
                continue
        return None if statuses == [200, 200, 200] else f"pipelined statuses {statuses}"
    finally:
        writer.close()


async def mixed_load(url: str, num_requests: int, concurrency: int, *, with_tools: bool = True,
                     warmup: int = 0) -> CaseResult:
    """`num_requests` of the mix, `concurrency` keep-alive connections at a time; leaks measured
    from after `warmup` requests of the same mix to the end."""
    result = CaseResult(f"mixed load, {concurrency} connections")
    if warmup:
        await _run_mix(url, warmup, concurrency, with_tools, CaseResult("warm-up"))
    before = await settled(url)
    await _run_mix(url, num_requests, concurrency, with_tools, result)
    return leaks(result, before, await settled(url, before))


async def _run_mix(url: str, num_requests: int, concurrency: int, with_tools: bool, result: CaseResult) -> None:
    client = HTTPClient(url, max_idle=concurrency, read_timeout=60)
    next_index = iter(range(num_requests))

    async def worker():
        for i in next_index:
            kind = MIX[i % len(MIX)]
            started = time.perf_counter()
            try:
                problem = await one_of_mix(client, url, kind, i, with_tools)
            except Exception as exc:                   # a reset, a timeout: all unexpected
                problem = f"{kind} {type(exc).__name__}: {exc}"
            result.requests += 1
            if problem is not None:
                result.unexpected[problem[:160]] += 1
            elif kind not in ("disconnect", "pipelined"):
                result.latencies.append(time.perf_counter() - started)
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()


# -- slowloris --------------------------------------------------------------------------------

async def slowloris(url: str, num_slow: int, num_normal: int, concurrency: int,
                    header_timeout_s: float) -> CaseResult:
    """Normal clients alone, then the same with `num_slow` connections trickling a header byte
    per second. The note gives the p99 ratio (loud / quiet) and when the slow ones were closed."""
    result = CaseResult(f"slowloris, {num_slow} slow connections")
    before = await settled(url)
    quiet = CaseResult("quiet")
    await _run_mix(url, num_normal, concurrency, False, quiet)
    opened = time.monotonic()
    slow = [asyncio.ensure_future(_trickle(url)) for _ in range(num_slow)]
    await asyncio.sleep(min(1.0, header_timeout_s / 2))         # they are all connected and trickling
    await _run_mix(url, num_normal, concurrency, False, result)
    done, pending = await asyncio.wait(slow, timeout=header_timeout_s + 10)
    for task in pending:
        task.cancel()
    closed_after = [task.result() - opened for task in done if task.result() is not None]
    result.requests = num_normal * 2 + num_slow
    result.unexpected.update(quiet.unexpected)
    if len(closed_after) < num_slow:
        result.unexpected[f"slow connections still open after the deadline: {num_slow - len(closed_after)}"] += 1
    ratio = percentile(result.latencies, 99) / percentile(quiet.latencies, 99)
    result.note = (f"p99 {ratio:.2f}x the quiet run ({percentile(quiet.latencies, 99) * 1e3:.1f} ms); slow ones "
                   f"closed {min(closed_after, default=0):.1f}-{max(closed_after, default=0):.1f} s after opening "
                   f"(header_timeout_s {header_timeout_s:g})")
    result.quiet_p99, result.loud_p99 = percentile(quiet.latencies, 99), percentile(result.latencies, 99)
    return leaks(result, before, await settled(url, before))


async def _trickle(url: str) -> float | None:
    """A header byte per second until the server hangs up; when it did (monotonic), or None."""
    reader, writer = await _open(url)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: soak\r\nx-slow: ")
    try:
        while True:
            try:
                data = await asyncio.wait_for(reader.read(4096), 1.0)
            except asyncio.TimeoutError:
                writer.write(b"a")
                continue
            if not data or data.startswith(b"HTTP/1.1 408"):
                return time.monotonic()
    except ConnectionError:
        return time.monotonic()
    finally:
        writer.transport.abort()


# -- a 1 GiB request body ---------------------------------------------------------------------

async def huge_body(url: str, num_bytes: int = 1 << 30) -> CaseResult:
    """A body of `num_bytes` streamed by the client (never held), once with Content-Length and
    once chunked: a 413 each time, read while the client is still sending; bounded RSS."""
    result = CaseResult(f"{num_bytes / MIB:,.0f} MiB request body")
    before = await settled(url)
    peak = before["rss_bytes"]
    for chunked in (False, True):
        status, sent = await _send_huge(url, num_bytes, chunked)
        peak = max(peak, (await runtime(url))["rss_bytes"])
        result.requests += 1
        if status != 413:
            result.unexpected[f"{'chunked' if chunked else 'content-length'} body: {status}"] += 1
        result.note += f"{'chunked' if chunked else 'content-length'}: {status} after {sent / MIB:.0f} MiB sent; "
    result.note += f"peak RSS {peak / MIB:.0f} MiB"
    return leaks(result, before, await settled(url, before))


async def _send_huge(url: str, num_bytes: int, chunked: bool) -> tuple[int | None, int]:
    reader, writer = await _open(url)
    framing = "transfer-encoding: chunked" if chunked else f"content-length: {num_bytes}"
    writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nhost: soak\r\ncontent-type: application/json\r\n"
                 f"{framing}\r\n\r\n".encode())
    piece = b"0" * MIB
    sent = 0

    async def send():
        nonlocal sent
        while sent < num_bytes:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            await writer.drain()
            sent += len(piece)
        if chunked:
            writer.write(b"0\r\n\r\n")
    sender = asyncio.ensure_future(send())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 120)
        return int(head.split(b" ", 2)[1]), sent
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
        return None, sent
    finally:
        sender.cancel()
        writer.transport.abort()


# -- backends that never stop ------------------------------------------------------------------

async def endless_backend(url: str, stream_mib: int = 64) -> CaseResult:
    """The scripted backend answers an endless JSON body (502), an endless SSE event (an error
    event), and an endless stream that the client leaves after `stream_mib` MiB: bounded RSS."""
    result = CaseResult("endless backend answers")
    before = await settled(url)
    client = HTTPClient(url, read_timeout=120)
    peak = before["rss_bytes"]
    try:
        response = await client.request("POST", "/v1/chat/completions", json=chat_body(0, text="endless body"))
        body = await response.read()
        result.requests += 1
        if response.status != 502 or b"over 64 MiB" not in body:
            result.unexpected[f"endless body: {response.status} {body[:100]!r}"] += 1
        peak = max(peak, (await runtime(url))["rss_bytes"])
        response = await client.request("POST", "/v1/chat/completions",
                                        json=chat_body(1, stream=True, text="endless event"))
        events = [data async for data in response.iter_sse()]
        result.requests += 1
        if response.status != 200 or not any(b'"error"' in data for data in events[-2:]):
            result.unexpected[f"endless event: {response.status}, last {events[-1:]!r}"[:160]] += 1
        peak = max(peak, (await runtime(url))["rss_bytes"])
        received = await _read_then_leave(client, stream_mib)
        result.requests += 1
        peak = max(peak, (await runtime(url))["rss_bytes"])
        if received < stream_mib * MIB:
            result.unexpected[f"endless stream ended after {received} bytes"] += 1
    finally:
        await client.close()
    result.note = f"502 / error event / left after {stream_mib} MiB; peak RSS {peak / MIB:.0f} MiB"
    return leaks(result, before, await settled(url, before))


async def _read_then_leave(client: HTTPClient, mib: int) -> int:
    response = await client.request("POST", "/v1/chat/completions",
                                    json=chat_body(2, stream=True, cached=True, text="endless stream"))
    received = 0
    async for data in response.iter_raw():
        received += len(data)
        if received >= mib * MIB:
            break
    response.close()
    return received
