"""Request bodies sent with a Content-Encoding (RFC 9110 8.4): gzip and deflate are decoded
with zlib, never to more than the body limit (a small "zip bomb" gets a 413, not the daemon's
memory); any other coding is a 415 naming the ones taken (RFC 9110 15.5.16)."""
from __future__ import annotations

import zlib

from .parser import ProtocolError

ZLIB_CODINGS = frozenset({"gzip", "x-gzip", "deflate"})
ACCEPTED = "gzip, deflate"
AUTO_HEADER_WBITS = zlib.MAX_WBITS | 32     # a gzip or a zlib header, whichever the data has


def decoded_body(headers: list[tuple[str, str]], codings: list[str], body: bytes,
                 max_bytes: int) -> tuple[list[tuple[str, str]], bytes]:
    """The request's fields and body as if it had been sent without its Content-Encoding,
    whose elements (the parser's, in order) are `codings`."""
    codings = [c for c in codings if c and c != "identity"]
    if not codings or not body:
        return headers, body
    unsupported = [c for c in codings if c not in ZLIB_CODINGS]
    if unsupported:
        raise ProtocolError(f"request body Content-Encoding {unsupported[0]!r} is not supported; "
                            f"send it as {ACCEPTED} or without one", 415, {"accept-encoding": ACCEPTED})
    for coding in reversed(codings):              # the last coding listed was applied last
        body = _inflate(body, coding, max_bytes)
    return [(name, value) for name, value in headers if name != "content-encoding"], body


def _inflate(data: bytes, coding: str, max_bytes: int) -> bytes:
    """`data` (one or more concatenated gzip members or zlib streams) decoded, stopping as
    soon as it passes `max_bytes`."""
    out = bytearray()
    while data:
        inflater = zlib.decompressobj(AUTO_HEADER_WBITS)
        try:
            out += inflater.decompress(data, max_bytes + 1 - len(out))   # never 0: no limit
        except zlib.error as exc:
            raise ProtocolError(f"request body is not valid {coding} data: {exc}") from None
        if len(out) > max_bytes:
            raise ProtocolError(f"request body too large once decoded (over {max_bytes} bytes)", 413)
        if not inflater.eof:
            raise ProtocolError(f"request body is not valid {coding} data: it is cut short")
        data = inflater.unused_data
    return bytes(out)
