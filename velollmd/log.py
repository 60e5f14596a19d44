"""Logging: one JSON object per line on stderr (journald keeps each line as one record).

Every line logged while a request is served carries its id: the HTTP server puts a
`RequestTrace` in a context variable when it reads the request head, and the formatter reads
it, so no layer has to pass the id along. The same trace collects the request's timings
(queue wait, upstream, first byte, total) for the access log and the metrics.
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import os
import re
import sys
import time
from collections import deque
from contextvars import ContextVar

# syslog priorities in journald's "<N>" prefix convention are left to systemd; the level
# is a field instead, so `journalctl -o cat | jq` works.

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._:@+=/-]")
ACCESS_LOGGER = "velollmd.access"


class JSONFormatter(logging.Formatter):
    """A record as one compact JSON object. The access log writes a line per request, so
    this is on the hot path: one encoder built once, the time formatted once per second."""

    _encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode

    def format(self, record: logging.LogRecord) -> str:
        line = getattr(record, "line", None)
        if line is not None:                      # written whole by its logger (the access log)
            return line
        entry = {"ts": self._timestamp(record), "level": record.levelname.lower(), "logger": record.name,
                 "msg": record.getMessage()}
        trace = _CURRENT.get()
        if trace is not None:
            entry["request_id"] = trace.request_id
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self._encode(entry)

    def _timestamp(self, record: logging.LogRecord) -> str:
        return utc_timestamp(record.created)


_second, _second_text = -1, ""


def utc_timestamp(created: float) -> str:
    """`created` (time.time()) as 2026-01-02T03:04:05.678Z; the second formatted once."""
    global _second, _second_text
    second = int(created)
    if second != _second:
        _second, _second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second_text}.{str(int((created - second) * 1000)).zfill(3)}Z"   # (zfill: :03d, cheaper)


class LineHandler(logging.StreamHandler):
    """The daemon's own handler (setup_logging's): it also takes a line written whole, at once
    or batched with the others of the same event-loop iteration.

    Batched lines wait in memory for a callback the loop runs after the current iteration's
    (`loop.call_soon`), which writes them in one write and flushes: one syscall per loop turn,
    not per request. A record emitted meanwhile, flush() (logging.shutdown) and
    close() write the waiting lines first, so the order holds and a clean stop loses none;
    a crash of the process (SIGKILL, a fault) loses at most the lines of the iteration it
    died in."""

    def __init__(self, stream=None):
        super().__init__(stream)
        self._pending: list[str] = []          # batched lines not written yet, oldest first

    def write_line(self, line: str) -> bool:
        """`line` as emit() writes a formatted record: one write and a flush, under the lock.
        False when the stream failed (the caller logs the line the usual way, which reports it)."""
        try:
            with self.lock:
                self._write_pending()
                self.stream.write(line + self.terminator)
                self.stream.flush()
        except Exception:
            return False
        return True

    def write_line_soon(self, line: str, loop: asyncio.AbstractEventLoop) -> None:
        """`line` written with the other lines of this iteration of `loop` (the caller's). Under
        the lock: a record another thread emits meanwhile swaps the batch out and writes it, and a
        line appended to the batch it took would be lost."""
        with self.lock:
            self._pending.append(line)
            first = len(self._pending) == 1
        if first:
            loop.call_soon(self.write_pending)

    def write_pending(self) -> None:
        """Write the batched lines now (a stream failure is reported as emit() reports it)."""
        try:
            with self.lock:
                self._write_pending()
                self.stream.flush()
        except Exception:
            self.handleError(logging.makeLogRecord({"name": ACCESS_LOGGER, "msg": "access"}))

    def _write_pending(self) -> None:
        if self._pending:
            lines, self._pending = self._pending, []
            self.stream.write(self.terminator.join(lines) + self.terminator)

    def emit(self, record: logging.LogRecord) -> None:
        if self._pending:
            self.write_pending()
        super().emit(record)

    def flush(self) -> None:
        if self._pending:
            self.write_pending()
        super().flush()


def direct_handler(logger: logging.Logger) -> LineHandler | None:
    """The one handler a record of `logger` would reach, when it is a LineHandler that takes
    every INFO record and nothing on the way filters: a line can go to it without a
    LogRecord. None otherwise (another handler or a filter added, as tests and embedders do)."""
    node = logger
    while node is not None:
        if node.filters:
            return None
        if node.handlers:
            handlers = node.handlers
            if node.parent is not None or len(handlers) != 1:
                return None
            handler = handlers[0]
            return handler if type(handler) is LineHandler and handler.level <= logging.INFO \
                and not handler.filters else None
        if not node.propagate:
            return None
        node = node.parent
    return None


def setup_logging(level: str = "info", stream=None, access: bool = True) -> None:
    """JSON lines on `stream`; the access log follows `access`, whatever the level. Records
    skip what no line shows (thread, process and task names, the caller's source line)."""
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.logAsyncioTasks = False
    logging._srcfile = None                   # no findCaller(): the docs' own optimisation
    handler = LineHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter())
    logging.getLogger().handlers[:] = [handler]
    set_levels(level, access)


def set_levels(level: str, access: bool) -> None:
    """The [log] settings (at start and on reload): the level of every logger, and the access
    log on or off whatever that level is."""
    logging.getLogger().setLevel(level.upper())
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO if access else logging.CRITICAL + 1)


# -- request ids and the request's trace ---------------------------------------------------

_ID_PREFIX = os.urandom(8).hex()         # this process's: ids of two runs do not collide
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """32 hex digits: a random prefix per process and a counter. Unique, not secret: the id
    only ties a request's log lines, access line and x-request-id together (a client may set
    it itself), so no getrandom syscall per request."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def request_id_from(value: str | None) -> str:
    """The client's x-request-id when usable: its safe characters ([A-Za-z0-9._:@+=/-]), at
    most MAX_REQUEST_ID_CHARS of them; a fresh id when nothing usable is left."""
    if value:
        if len(value) > MAX_REQUEST_ID_CHARS or _UNSAFE_ID_CHARS.search(value):
            value = _UNSAFE_ID_CHARS.sub("", value)[:MAX_REQUEST_ID_CHARS]
        if value:
            return value
    return new_request_id()


class RequestTrace:
    """What is known about one request as it goes through the daemon; times are seconds
    from `started` (perf_counter), None until known."""

    __slots__ = ("request_id", "method", "path", "started", "status", "key", "model", "backend",
                 "cache", "stream", "prompt_tokens", "completion_tokens", "queue_wait_s", "upstream_s",
                 "first_byte_s", "total_s", "on_done")

    def __init__(self, request_id: str, method: str = "", path: str = "", started: float | None = None):
        self.request_id, self.method, self.path = request_id, method, path
        self.started = time.perf_counter() if started is None else started
        self.status: int | None = None
        self.key = self.model = self.backend = self.cache = None
        self.stream = False
        self.prompt_tokens = self.completion_tokens = None
        self.queue_wait_s = 0.0
        self.upstream_s: float | None = None
        self.first_byte_s: float | None = None
        self.total_s: float | None = None
        self.on_done = None                  # called once with the trace when the answer is sent

    def note_queue_wait(self, seconds: float) -> None:
        self.queue_wait_s += seconds

    def note_upstream(self, backend: str, seconds: float) -> None:
        self.backend = backend
        self.upstream_s = (self.upstream_s or 0.0) + seconds

    def note_usage(self, usage: dict) -> None:
        self.prompt_tokens = usage.get("prompt_tokens")
        self.completion_tokens = usage.get("completion_tokens")

    def note_first_byte(self) -> None:
        if self.first_byte_s is None:
            self.first_byte_s = time.perf_counter() - self.started

    @property
    def overhead_s(self) -> float | None:
        """Time the daemon itself added: total minus upstream minus queue wait (max(0.0, ...)
        without the builtin's call)."""
        if self.total_s is None:
            return None
        overhead = self.total_s - (self.upstream_s or 0.0) - self.queue_wait_s
        return overhead if overhead > 0.0 else 0.0

    def finish(self, status: int) -> None:
        """The answer is sent (or abandoned, status 499): fix the total, tell `on_done` once."""
        if self.total_s is not None:
            return
        self.total_s = time.perf_counter() - self.started
        self.status = status
        if self.on_done is not None:
            self.on_done(self)

    def access_line(self, created: float) -> str:
        """entry() as the JSON log line, written field by field: encoding the dict cost three
        times as much, once per request."""
        q, n = _json_str, _json_int
        return (f'{{"ts":"{utc_timestamp(created)}","level":"info","logger":"{ACCESS_LOGGER}","msg":"access",'
                f'"request_id":{q(self.request_id)},"key":{q(self.key)},"method":{q(self.method)},'
                f'"path":{q(self.path)},"status":{n(self.status)},"model":{q(self.model)},'
                f'"backend":{q(self.backend)},"cache":{q(self.cache)},"prompt_tokens":{n(self.prompt_tokens)},'
                f'"completion_tokens":{n(self.completion_tokens)},{self._seconds_fields()}}}')

    def _seconds_fields(self) -> str:
        """The five times of the access line, each with 6 decimals (null when unknown): all
        five in one %-format while all are known (each float's own format cost as much again);
        a None in them fails it (TypeError) and they go one by one."""
        seconds = (self.queue_wait_s, self.upstream_s, self.first_byte_s, self.total_s, self.overhead_s)
        try:
            return SECONDS_FIELDS % seconds
        except TypeError:
            return SECONDS_FIELDS_OR_NULL % tuple(map(_json_seconds, seconds))

    def entry(self) -> dict:
        """The access-log record of a finished request."""
        return {"request_id": self.request_id, "key": self.key, "method": self.method, "path": self.path,
                "status": self.status, "model": self.model, "backend": self.backend, "cache": self.cache,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "queue_wait_s": _rounded(self.queue_wait_s), "upstream_s": _rounded(self.upstream_s),
                "first_byte_s": _rounded(self.first_byte_s), "total_s": _rounded(self.total_s),
                "overhead_s": _rounded(self.overhead_s)}


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


_quote = json.encoder.encode_basestring           # escapes and quotes a str (in C)
SECONDS_FIELDS = '"queue_wait_s":%.6f,"upstream_s":%.6f,"first_byte_s":%.6f,"total_s":%.6f,"overhead_s":%.6f'
SECONDS_FIELDS_OR_NULL = SECONDS_FIELDS.replace("%.6f", "%s")


def _json_str(value) -> str:
    return _quote(value) if type(value) is str else "null"


def _json_int(value) -> str:
    return str(value) if type(value) is int else "null"


def _json_seconds(value) -> str:
    return "null" if value is None else f"{value:.6f}"


_CURRENT: ContextVar[RequestTrace | None] = ContextVar("velollm_request", default=None)


def current_request() -> RequestTrace | None:
    """The trace of the request being served by this task (None outside a request)."""
    return _CURRENT.get()


def note_model(model) -> None:
    """The model the client asked for, in the current request's trace (its access line)."""
    trace = _CURRENT.get()
    if trace is not None:
        trace.model = model


def current_request_id() -> str | None:
    trace = _CURRENT.get()
    return None if trace is None else trace.request_id


def begin_request(trace: RequestTrace | None) -> RequestTrace | None:
    """Make `trace` the current request of this task (and of tasks it starts from now on)."""
    _CURRENT.set(trace)
    return trace


# -- the access log --------------------------------------------------------------------------

class AccessLog:
    """One JSON line per request on the `velollmd.access` logger, and a ring of the recent
    requests (newest last) for whoever shows them (the dashboard). Between start(loop) and
    stop(), lines that go straight to the daemon's handler are batched per iteration of that
    loop (LineHandler.write_line_soon); stop() writes what waits."""

    def __init__(self, enabled: bool = True, ring_size: int = 512):
        self.enabled = enabled
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self.ring: deque[RequestTrace] = deque(maxlen=ring_size)
        self._key_labels: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None     # batch on it; None: write at once

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Batch the lines written on `loop` (the daemon's, the one write() is called on)."""
        self._loop = loop

    def stop(self) -> None:
        """Write the waiting lines; from now on each line at once."""
        self._loop = None
        handler = direct_handler(self.logger)
        if handler is not None:
            handler.write_pending()

    def write(self, trace: RequestTrace) -> None:
        trace.on_done = None
        self.ring.append(trace)
        if self.logger.isEnabledFor(logging.INFO):
            line = trace.access_line(time.time())
            handler = direct_handler(self.logger)    # the same line without a LogRecord and its trip
            if handler is not None and self._loop is not None:
                handler.write_line_soon(line, self._loop)
            elif handler is None or not handler.write_line(line):
                self.logger.info("access", extra={"line": line})

    def recent(self, limit: int | None = None) -> list[dict]:
        """The last `limit` records (all kept when None), oldest first."""
        traces = list(self.ring)
        return [trace.entry() for trace in (traces if limit is None else traces[-limit:])]

    def key_label(self, key: str) -> str | None:
        """How a caller's API key appears in the log: a short hash, never the key."""
        if not key:
            return None
        label = self._key_labels.get(key)
        if label is None:
            if len(self._key_labels) >= 1024:
                self._key_labels.clear()
            label = self._key_labels[key] = "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:12]
        return label
