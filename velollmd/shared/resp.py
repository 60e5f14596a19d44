"""RESP2/RESP3, sans-IO: commands to bytes, bytes to replies (no sockets here).

    parser = RespParser()
    parser.feed(data)
    while (reply := parser.next()) is not INCOMPLETE: ...

An error reply (`-ERR ...`, RESP3 `!`) is returned as a `ReplyError` value, not raised, so a
pipeline's replies stay in order and the caller decides which errors matter. Bulk strings stay
bytes (keys and values may be binary); simple strings are str.
"""
from __future__ import annotations

INCOMPLETE = object()          # next(): not a whole reply buffered yet
CRLF = b"\r\n"


class ProtocolError(Exception):
    """The server sent something that is not RESP: the connection is unusable."""


class ReplyError(Exception):
    """An error reply: `code` is its first word (ERR, WRONGTYPE, NOAUTH, NOSCRIPT...)."""

    @property
    def code(self) -> str:
        return str(self.args[0]).split(" ", 1)[0]


class Push(list):
    """A RESP3 out-of-band push (pub/sub messages under RESP3)."""


def _arg(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value).encode()
    raise TypeError(f"a command argument must be bytes, str, int or float, not {type(value).__name__}")


def encode_command(*args) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _arg(arg)
        parts += (b"$%d\r\n" % len(data), data, CRLF)
    return b"".join(parts)


class RespParser:
    """Incremental reply parser: feed() bytes, next() whole replies in order."""

    def __init__(self, max_bulk_bytes: int = 512 * 1024 * 1024):
        self.max_bulk_bytes = max_bulk_bytes
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> bool:
        """Bytes fed and not yet parsed into a reply."""
        return self._pos < len(self._buf)

    def next(self):
        """The next whole reply, or INCOMPLETE (nothing is consumed then)."""
        try:
            value, pos = self._parse(self._pos)
        except _Short:
            return INCOMPLETE
        self._pos = pos
        return value

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self._buf.find(CRLF, pos)
        if end < 0:
            raise _Short
        return bytes(self._buf[pos:end]), end + 2

    def _parse(self, pos: int):
        if pos >= len(self._buf):
            raise _Short
        kind, (line, pos) = self._buf[pos:pos + 1], self._line(pos + 1)
        if kind in b"$=!":                                   # blob string, verbatim, blob error
            return self._blob(kind, line, pos)
        if kind in b"*~>%|":                                 # array, set, push, map, attribute
            return self._aggregate(kind, line, pos)
        return _SIMPLE.get(bytes(kind), _unknown)(line), pos

    def _blob(self, kind: bytes, line: bytes, pos: int):
        size = _int(line)
        if size < 0:
            return None, pos                                  # RESP2 null bulk string
        if size > self.max_bulk_bytes:
            raise ProtocolError(f"bulk string of {size} bytes is over the limit")
        if len(self._buf) < pos + size + 2:
            raise _Short
        data = bytes(self._buf[pos:pos + size])
        if self._buf[pos + size:pos + size + 2] != CRLF:
            raise ProtocolError("bulk string not followed by CRLF")
        if kind == b"!":
            data = ReplyError(data.decode(errors="replace"))
        elif kind == b"=":
            data = data[4:]                                   # drop the "txt:" format prefix
        return data, pos + size + 2

    def _aggregate(self, kind: bytes, line: bytes, pos: int):
        count = _int(line)
        if count < 0:
            return None, pos                                  # RESP2 null array
        num_items = count * 2 if kind in b"%|" else count
        items = []
        for _ in range(num_items):
            item, pos = self._parse(pos)
            items.append(item)
        if kind == b"|":                                      # attributes precede the reply they describe
            return self._parse(pos)
        if kind == b"%":
            return {_hashable(k): v for k, v in zip(items[::2], items[1::2])}, pos
        if kind == b"~":
            return set(map(_hashable, items)), pos
        return (Push(items) if kind == b">" else items), pos


class _Short(Exception):
    """Internal: the buffer ends inside a reply."""


def _int(line: bytes) -> int:
    try:
        return int(line)
    except ValueError:
        raise ProtocolError(f"not an integer: {line[:40]!r}") from None


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def _unknown(line: bytes):
    raise ProtocolError(f"unknown reply type: {line[:40]!r}")


def _boolean(line: bytes) -> bool:
    if line not in (b"t", b"f"):
        raise ProtocolError(f"not a boolean: {line!r}")
    return line == b"t"


_SIMPLE = {
    b"+": lambda line: line.decode(errors="replace"),
    b"-": lambda line: ReplyError(line.decode(errors="replace")),
    b":": _int,
    b"(": _int,                                               # big number
    b",": float,                                              # double (float() reads inf, -inf, nan)
    b"#": _boolean,
    b"_": lambda line: None,                                  # RESP3 null
}
