"""Response ids (`chatcmpl-...`): unique per process run, cheap to make (no urandom per id)."""
from __future__ import annotations

import itertools
import secrets

_PREFIX = secrets.token_hex(6)
_COUNTER = itertools.count(1)


def response_id(kind: str = "chatcmpl") -> str:
    return f"{kind}-{_PREFIX}{next(_COUNTER):012x}"
