"""Header lookup, one way for every layer: names on the wire are lowercase (`retry-after`).

Our parser lowercases the names it reads and our code writes lowercase names, so (name, value)
pairs are compared exactly (this runs several times per request). A dict handed over by a
caller (tests, the cache policy's callers) may come in any case, so it folds case when the
exact name is not there.
"""
from __future__ import annotations

from typing import Iterable


def header_value(headers: dict[str, str] | Iterable[tuple[str, str]] | None, name: str,
                 default: str | None = None) -> str | None:
    """The first value of header `name` (given in lowercase), or `default`."""
    if isinstance(headers, dict):
        value = headers.get(name)
        if value is not None:
            return value
        return next((v for k, v in headers.items() if k.lower() == name), default)
    for key, value in headers or ():
        if key == name:
            return value
    return default
