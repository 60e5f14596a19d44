"""The compact JSON every body and event on the wire is written in (UTF-8, no spaces), and
the one strict reader for JSON that comes from outside.

One encoder built once: `json.dumps` with options builds a JSONEncoder per call, which cost as
much as the encoding itself for a chat answer (11 us vs 5 us here); and JSONEncoder.encode
builds its C encoder (and a float formatter closure) on every call, so the C encoder is built
once here too and called directly (the same bytes as JSONEncoder.encode)."""
from __future__ import annotations

import json
from json.encoder import c_make_encoder, encode_basestring

MAX_DEPTH = 100        # nesting of arrays and objects accepted from outside (bodies, JSON in JSON)

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _c_encoder(encoder: json.JSONEncoder):
    """`encoder`'s C encoder, built once: called as (value, 0), it returns the text's pieces.
    No cycle check (JSONEncoder.encode's fresh `markers` dict per call): every value written
    here is parsed JSON or dicts built from it, and a cycle (a bug) still ends in an exception
    (RecursionError instead of ValueError). None where json has no C accelerator."""
    if c_make_encoder is None:
        return None
    return c_make_encoder(None, encoder.default, encode_basestring, None, encoder.key_separator,
                          encoder.item_separator, encoder.sort_keys, encoder.skipkeys, encoder.allow_nan)


_C_ENCODE = _c_encoder(_ENCODER)


def dumps(value) -> bytes:
    text = "".join(_C_ENCODE(value, 0)) if _C_ENCODE is not None else _ENCODER.encode(value)
    try:
        return text.encode()
    except UnicodeEncodeError:       # a lone surrogate (a "\ud800" escape came in): send it escaped
        return _ASCII_ENCODER.encode(value).encode()


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)
_SCAN = _DECODER.scan_once


def _decode(text: str):
    """_DECODER.decode(text): a document that starts at the first character and ends at the
    last is the scanner's in one call (no whitespace matches, no raw_decode frame); anything
    else, errors included, goes through decode() for its exact messages."""
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        return _DECODER.decode(text)
    return value if end == len(text) else _DECODER.decode(text)


def loads(data: bytes | str):
    """JSON from outside (a request body, a JSON string inside one): UTF-8 (or the UTF-16/32
    that json.loads detects) without invalid bytes, no NaN or Infinity, at most MAX_DEPTH
    levels deep. Anything else is a ValueError, never a RecursionError, so that no later
    step (encoding, cache keys, schema checks) meets a value too deep for it."""
    if isinstance(data, (bytes, bytearray)):
        encoding = "utf-8" if data.startswith(b'{"') else json.detect_encoding(data)   # (no BOM, no NUL)
        data = bytes(data).decode(encoding)                      # strict: bad bytes raise
    if data.startswith("\ufeff"):
        data = data[1:]
    try:
        value = _decode(data)
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
