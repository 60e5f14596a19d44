"""The compact JSON every body and event on the wire is written in (UTF-8, no spaces), and
the one strict reader for JSON that comes from outside.

One encoder built once: `json.dumps` with options builds a JSONEncoder per call, which cost as
much as the encoding itself for a chat answer (11 us vs 5 us here)."""
from __future__ import annotations

import json

MAX_DEPTH = 100        # nesting of arrays and objects accepted from outside (bodies, JSON in JSON)

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"))


def dumps(value) -> bytes:
    text = _ENCODER.encode(value)
    try:
        return text.encode()
    except UnicodeEncodeError:       # a lone surrogate (a "\ud800" escape came in): send it escaped
        return _ASCII_ENCODER.encode(value).encode()


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def loads(data: bytes | str):
    """JSON from outside (a request body, a JSON string inside one): UTF-8 (or the UTF-16/32
    that json.loads detects) without invalid bytes, no NaN or Infinity, at most MAX_DEPTH
    levels deep. Anything else is a ValueError, never a RecursionError, so that no later
    step (encoding, cache keys, schema checks) meets a value too deep for it."""
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode(json.detect_encoding(data))    # strict: bad bytes raise
    if data.startswith("\ufeff"):
        data = data[1:]
    try:
        value = _DECODER.decode(data)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    check_depth(value, data)
    return value


def check_depth(value, text: str | None = None) -> None:
    """ValueError when `value` nests arrays and objects deeper than MAX_DEPTH. `text`, the JSON
    it was read from, skips the walk when it has too few brackets to be that deep."""
    if text is not None and text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    level = [value] if isinstance(value, (dict, list)) else []      # containers at this depth
    for _ in range(MAX_DEPTH):
        level = [child for node in level for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, (dict, list))]
        if not level:
            return
    raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")
