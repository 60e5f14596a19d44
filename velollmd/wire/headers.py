"""Header lookup, one way for every layer: names on the wire are lowercase (`retry-after`).

Our parser lowercases the names it reads; headers that tests or clients hand over in a dict
may come in any case, so the lookup folds case.
"""
from __future__ import annotations

from typing import Iterable, Mapping


def header_value(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None, name: str,
                 default: str | None = None) -> str | None:
    """The first value of header `name` (given in lowercase) in a dict or (name, value) pairs."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for key, value in pairs:
        if key == name or key.lower() == name:
            return value
    return default
