"""Sans-IO HTTP/1.1 message parser: bytes in, events out, no sockets.

One `HTTPParser` serves both roles: a server parses requests, a client parses responses.
`feed(data)` appends bytes, `next_event()` returns the next event or None when more bytes
are needed. After an `EndOfMessage` the parser starts on the next message by itself, so
pipelined requests come out in order.

Everything that HTTP does not allow raises `ProtocolError` carrying the status a server
should answer with (after which the connection must be closed). Numbers reach `int()` only
once checked to be ASCII digits (`[0-9A-Fa-f]` regex on bytes for chunk sizes): `int()` and
`strip()` accept things HTTP does not (`+5`, `1_0`, unicode digits, surrounding whitespace),
which caused request smuggling bugs in other Python servers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..wire.headers import header_value

MAX_REQUEST_LINE = 8190
MAX_FIELDS = 100
MAX_CHUNK_LINE = 1024

TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
REQUEST_LINE_RE = re.compile(rb"(" + TOKEN + rb") (\S+) (HTTP/\d\.\d)\Z")
STATUS_LINE_RE = re.compile(rb"HTTP/(1\.[01]) ([0-9]{3})(?: ([\t !-~\x80-\xff]*))?\Z")
HEADER_RE = re.compile(rb"(" + TOKEN + rb"):[ \t]*(.*?)[ \t]*\Z", re.S)
# The whole field block at once (each line "name:value" + CRLF) in one C-level match: the
# fast path. On a mismatch the per-line parser runs to name the exact fault.
FIELD_BLOCK_RE = re.compile(rb"(?:" + TOKEN + rb":[\t !-~\x80-\xff]*\r\n)*\Z")
FRAMING_FIELDS = frozenset({"connection", "transfer-encoding", "content-length", "host", "expect",
                            "content-encoding"})
BAD_VALUE_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
TARGET_BAD_RE = re.compile(rb"[\x00-\x20\x7f]")
# The scheme and authority of an absolute-form target (`http://host:port/path?q`), which a
# client sends when it takes us for a proxy; the origin form is what follows them.
ABSOLUTE_FORM_RE = re.compile(rb"[Hh][Tt][Tt][Pp][Ss]?://[^/?#]*")
# The method and path at the start of a request head refused for its size (414, 431).
REFUSED_PATH_RE = re.compile(rb"(" + TOKEN + rb") (/[^ ?#\x00-\x20\x7f]{0,1024})")
BARE_LF_RE = re.compile(rb"(?<!\r)\n")
CHUNK_SIZE_RE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(;[\t !-~\x80-\xff]*)?\Z")
SUPPORTED_VERSION = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}


class ProtocolError(Exception):
    """The peer broke HTTP/1.1. `status` is what a server answers before closing, with
    `headers` (e.g. a 415's Accept-Encoding); `head` is the message head when it was read
    whole (its framing was wrong), else None."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = headers or {}
        self.head: Head | None = None   # the head it refused, once parsed (413 on Content-Length)


@dataclass(slots=True)
class Head:
    """A request or response head. Header names are lower-case str (latin-1)."""
    headers: list[tuple[str, str]]
    version: str = "1.1"
    method: str = ""            # requests only
    target: str = ""            # requests only
    status: int = 0             # responses only
    reason: str = ""            # responses only
    content_length: int | None = None
    chunked: bool = False
    keep_alive: bool = True
    expect_continue: bool = False
    content_codings: list[str] | None = None   # Content-Encoding's elements, if sent (http/codings.py)

    def get(self, name: str, default: str | None = None) -> str | None:
        return header_value(self.headers, name, default)

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


@dataclass(slots=True)
class Data:
    data: bytes


@dataclass(slots=True)
class EndOfMessage:
    trailers: list[tuple[str, str]] = field(default_factory=list)


def _origin_form(target: bytes) -> bytes:
    """An absolute-form target as its origin form (RFC 9112 3.2.2: a server MUST accept the
    absolute form): `http://host/v1/models?x` -> `/v1/models?x`. The asterisk and authority
    forms pass as they are (no route takes them)."""
    match = ABSOLUTE_FORM_RE.match(target)
    if match is None:
        return target
    rest = target[match.end():]
    return rest if rest[:1] == b"/" else b"/" + rest


def _list_elements(values) -> list[str]:
    """The elements of a comma-separated field (all its lines), trimmed and lower-case
    (RFC 9110 5.6.1): `Connection: Keep-Alive, Upgrade` -> ["keep-alive", "upgrade"]."""
    return [element.strip(" \t").lower() for value in values for element in value.split(",")]


class HTTPParser:
    """Parses a stream of HTTP/1.x messages in one role ("server" reads requests)."""

    def __init__(self, role: str = "server", *, max_header_bytes: int = 16384,
                 max_body_bytes: int = 32 * 1024 * 1024, max_fields: int = MAX_FIELDS):
        if role not in ("server", "client"):
            raise ValueError(role)
        self.role = role
        self._server = role == "server"
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.max_fields = max_fields
        self._buf = bytearray()
        self._state = "head"          # head | body | chunk_size | chunk_data | trailers | until_close | done
        self._remaining = 0           # bytes left in a Content-Length body or chunk
        self._body_total = 0
        self._eof = False
        self._request_methods: list[str] = []   # client role: methods of requests sent

    # -- input -------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._buf += data

    def feed_eof(self) -> None:
        self._eof = True

    def expect_response(self, method: str) -> None:
        """Client role: a request with `method` was sent; its response comes next."""
        self._request_methods.append(method.upper())

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def between_messages(self) -> bool:
        """True when no message is partly parsed (nothing half-read in the buffer)."""
        return self._state == "head" and not self._buf

    # -- output ------------------------------------------------------------------------

    def next_event(self):
        """Return the next event, or None when more bytes (or EOF) are needed."""
        if self._state == "head":
            return self._parse_head()
        event = self._body_event()
        return Data(event) if type(event) is bytes else event

    def _body_event(self):
        """The next body piece as bytes (next_event wraps it in a Data; take_data takes it as
        it is: a stream's every chunk passes here), the EndOfMessage, or None (more bytes needed)."""
        state = self._state
        if state == "body":
            return self._read_fixed_body()
        if state == "chunk_size":
            return self._read_chunk_size()
        if state == "chunk_data":
            return self._read_chunk_data()
        if state == "trailers":
            return self._read_trailers()
        if state == "until_close":
            return self._read_until_close()
        return None

    # -- head --------------------------------------------------------------------------

    def _parse_head(self):
        buf = self._buf
        if not buf:
            return None
        if self._server and buf[:2] == b"\r\n":
            self._skip_leading_crlf()
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self._check_incomplete_head()
            return None
        line_end = buf.find(b"\r\n")
        if self._server and line_end > MAX_REQUEST_LINE:
            raise self._too_large("request line too long", 414)
        if end + 4 > self.max_header_bytes:
            raise self._too_large("request header fields too large", 431)
        head = self._parse_start_line(bytes(buf[:line_end]))
        fields = bytes(buf[line_end + 2:end + 2])       # each field line with its CRLF
        del buf[:end + 4]
        framing: dict[str, list[str]] = {}
        try:
            head.headers = self._parse_fields(fields, framing)
            self._frame_message(head, framing)
        except ProtocolError as exc:
            exc.head = head
            raise
        return head

    def _skip_leading_crlf(self) -> None:
        # RFC 9112 2.2: a server SHOULD ignore at least one empty line before a request.
        while self._buf[:2] == b"\r\n":
            del self._buf[:2]

    def _check_incomplete_head(self) -> None:
        buf = self._buf
        if BARE_LF_RE.search(buf):
            raise ProtocolError("bare LF line ending in message head")
        first_line_end = buf.find(b"\r\n")
        if first_line_end > MAX_REQUEST_LINE or first_line_end < 0 and len(buf) > MAX_REQUEST_LINE:
            raise self._too_large("request line too long", 414)
        if len(buf) > self.max_header_bytes:
            raise self._too_large("request header fields too large", 431)
        if self._eof and buf:
            raise ProtocolError("connection closed in the middle of a message head")

    def _too_large(self, message: str, status: int) -> ProtocolError:
        """The 414 or 431 for the head in the buffer, with a head of its method and path when
        the request line starts with them: the answer then takes its route's error shape."""
        exc = ProtocolError(message, status)
        match = REFUSED_PATH_RE.match(self._buf) if self._server else None
        if match is not None:
            method, path = match.groups()
            exc.head = Head(headers=[], method=method.decode("ascii"), target=path.decode("latin-1"))
        return exc

    def _parse_start_line(self, line: bytes) -> Head:
        if not self._server:
            return self._parse_status_line(line)
        if len(line) > MAX_REQUEST_LINE:
            raise ProtocolError("request line too long", 414)
        match = REQUEST_LINE_RE.match(line)
        if match is None:
            raise ProtocolError("malformed request line")
        method, target, version = match.groups()
        if version not in SUPPORTED_VERSION:
            raise ProtocolError("HTTP version not supported", 505)
        if TARGET_BAD_RE.search(target):
            raise ProtocolError("invalid request target")
        if target[:1] != b"/":
            target = _origin_form(target)
        return Head(headers=[], version=SUPPORTED_VERSION[version],
                    method=method.decode("ascii"), target=target.decode("latin-1"))

    def _parse_status_line(self, line: bytes) -> Head:
        match = STATUS_LINE_RE.match(line)
        if match is None:
            raise ProtocolError("malformed status line", 502)
        version, status, reason = match.groups()
        return Head(headers=[], version=version.decode(), status=int(status),
                    reason=(reason or b"").decode("latin-1"))

    def _parse_fields(self, block: bytes, framing: dict[str, list[str]]) -> list[tuple[str, str]]:
        """Header fields of a head; `block` is the field lines, each ending in CRLF. The values
        of the fields that frame the message (FRAMING_FIELDS) also go into `framing`, by name,
        in the same pass."""
        if block.count(b"\r\n") > self.max_fields:
            raise ProtocolError("too many header fields", 431)
        if not FIELD_BLOCK_RE.match(block):
            self._raise_field_error(block[:-2].split(b"\r\n"))
        headers = []
        for line in block[:-2].decode("latin-1").split("\r\n") if block else ():
            name, _, value = line.partition(":")
            name, value = name.lower(), value.strip(" \t")
            headers.append((name, value))
            if name in FRAMING_FIELDS:
                framing.setdefault(name, []).append(value)
        return headers

    def _raise_field_error(self, lines: list[bytes]) -> None:
        for line in lines:
            if line[:1] in (b" ", b"\t"):
                raise ProtocolError("obsolete line folding in header")
            match = HEADER_RE.match(line)
            if match is None:
                raise ProtocolError("malformed header field")
            if BAD_VALUE_RE.search(match.group(2)):
                raise ProtocolError("control character or bare CR/LF in header value")
        raise ProtocolError("malformed header section")

    # -- framing -----------------------------------------------------------------------

    def _frame_message(self, head: Head, framing: dict[str, list[str]]) -> None:
        """Decide keep-alive and how the body is delimited (RFC 9112 section 6) from the
        framing fields' values (`_parse_fields`)."""
        options = _list_elements(framing.get("connection", ()))    # tokens, not substrings: not "closed"
        if "content-encoding" in framing:
            head.content_codings = _list_elements(framing["content-encoding"])
        if head.version == "1.0":
            head.keep_alive = "keep-alive" in options
        else:
            head.keep_alive = "close" not in options
        if self._server:
            self._check_host(head, framing.get("host", ()))
            expect = framing.get("expect")
            # RFC 9110 10.1.1: an HTTP/1.0 client's 100-continue is ignored (it knows no 1xx).
            head.expect_continue = (expect is not None and head.version == "1.1"
                                    and ",".join(expect).lower() == "100-continue")
        transfer_encodings = framing.get("transfer-encoding")
        content_lengths = framing.get("content-length")
        if transfer_encodings and content_lengths:
            raise ProtocolError("both Content-Length and Transfer-Encoding")
        if not self._server and self._response_has_no_body(head):
            head.content_length = 0
            self._remaining = 0
            self._state = "body"
        elif transfer_encodings:
            self._frame_chunked(head, transfer_encodings)
        elif content_lengths:
            self._frame_content_length(head, content_lengths)
        elif not self._server:
            head.keep_alive = False
            self._state = "until_close"
        else:
            head.content_length = 0
            self._state = "body"
            self._remaining = 0
        self._body_total = 0

    def _check_host(self, head: Head, hosts) -> None:
        if head.version == "1.1" and len(hosts) != 1:
            raise ProtocolError("HTTP/1.1 request needs exactly one Host header")
        if len(hosts) > 1:
            raise ProtocolError("more than one Host header")

    def _response_has_no_body(self, head: Head) -> bool:
        method = self._request_methods.pop(0) if self._request_methods else "GET"
        if 100 <= head.status < 200:
            self._request_methods.insert(0, method)   # the real response is still to come
            return True
        return method == "HEAD" or head.status in (204, 304)

    def _frame_chunked(self, head: Head, values: list[str]) -> None:
        codings = _list_elements(values)
        if head.version == "1.0":
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 message")
        if codings.count("chunked") > 1:
            raise ProtocolError("chunked applied more than once")
        if "chunked" in codings and codings[-1] != "chunked":
            raise ProtocolError("chunked is not the final transfer coding")
        if codings != ["chunked"]:
            raise ProtocolError("unsupported transfer coding", 501)
        head.chunked = True
        self._state = "chunk_size"

    def _frame_content_length(self, head: Head, values: list[str]) -> None:
        if len(values) > 1 and len(set(values)) != 1:
            raise ProtocolError("conflicting Content-Length headers")
        raw = values[0]
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 19):   # [0-9]{1,19}: no "+5", "1_0", " 5"
            raise ProtocolError("invalid Content-Length")
        length = int(raw)
        if length > self.max_body_bytes:
            raise ProtocolError("request body too large", 413 if self.role == "server" else 502)
        head.content_length = length
        self._remaining = length
        self._state = "body"

    # -- bodies ------------------------------------------------------------------------

    def take_body(self) -> bytes | None:
        """The whole Content-Length body when all of it is buffered (the message then ends, as
        after its EndOfMessage), else None and nothing consumed: the events give it in parts.
        A shortcut for the common case: one call where the events take Data + EndOfMessage."""
        remaining = self._remaining
        if self._state != "body" or len(self._buf) < remaining:
            return None
        buf = self._buf
        data = bytes(buf[:remaining]) if remaining < len(buf) else bytes(buf)
        del buf[:remaining]
        self._remaining = 0
        self._state = "head"
        return data

    def take_data(self, parts: list) -> bool:
        """Append every body piece the buffer holds to `parts`; True once the message ended
        (as after its EndOfMessage). A stream's read in one call, where the events take a call
        per chunk and one more to find the buffer empty."""
        buf = self._buf
        while buf or self._eof or self._state == "body":    # an empty buffer yields no event, but
            event = self._body_event()                      # the end of a body of known length
            if event is None:
                return False
            if type(event) is not bytes:
                return True
            parts.append(event)
        return False

    def _end_message(self) -> EndOfMessage:
        self._state = "head"
        return EndOfMessage()

    def _read_fixed_body(self):
        if self._remaining == 0:
            return self._end_message()
        if not self._buf:
            if self._eof:
                raise ProtocolError("connection closed before the body was complete")
            return None
        data = bytes(self._buf[:self._remaining])
        del self._buf[:len(data)]
        self._remaining -= len(data)
        return data

    def _read_chunk_size(self):
        buf = self._buf
        if not buf and not self._eof:                 # between reads of a stream
            return None
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) > MAX_CHUNK_LINE or b"\n" in buf:
                raise ProtocolError("malformed chunk size line")
            if self._eof:
                raise ProtocolError("connection closed in a chunked body")
            return None
        match = CHUNK_SIZE_RE.match(bytes(buf[:end]))
        if match is None:
            raise ProtocolError("invalid chunk size")
        del buf[:end + 2]
        size = int(match.group(1), 16)
        self._body_total += size
        if self._body_total > self.max_body_bytes:
            raise ProtocolError("request body too large", 413 if self.role == "server" else 502)
        if size == 0:
            self._state = "trailers"
            return self._read_trailers()
        self._remaining = size
        self._state = "chunk_data"
        return self._read_chunk_data()

    def _read_chunk_data(self):
        buf = self._buf
        if self._remaining:
            if not buf:
                if self._eof:
                    raise ProtocolError("connection closed in a chunked body")
                return None
            data = bytes(buf[:self._remaining])
            del buf[:len(data)]
            self._remaining -= len(data)
            if not self._remaining and buf[:2] == b"\r\n":    # the chunk's end came with it
                del buf[:2]
                self._state = "chunk_size"
            return data
        if len(buf) < 2:
            if self._eof:
                raise ProtocolError("connection closed in a chunked body")
            return None
        if buf[:2] != b"\r\n":
            raise ProtocolError("chunk data not followed by CRLF")
        del buf[:2]
        self._state = "chunk_size"
        return self._read_chunk_size()

    def _read_trailers(self):
        buf = self._buf
        if buf[:2] == b"\r\n":
            del buf[:2]
            return self._end_message()
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > self.max_header_bytes or BARE_LF_RE.search(buf):
                raise ProtocolError("malformed chunked trailer section", 431 if len(buf) > self.max_header_bytes else 400)
            if self._eof:
                raise ProtocolError("connection closed in a chunked trailer section")
            return None
        block = bytes(buf[:end + 2])
        del buf[:end + 4]
        trailers = self._parse_fields(block, {})
        self._state = "head"
        return EndOfMessage(trailers)

    def _read_until_close(self):
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            return data
        if self._eof:
            self._state = "done"
            return EndOfMessage()
        return None
