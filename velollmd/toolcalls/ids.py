"""Tool-call ids: `call_` + 24 random letters and digits, unique per call."""
from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
ID_LENGTH = 24


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ALPHABET) for _ in range(ID_LENGTH))


def ensure_call_id(call_id: object, seen: set[str]) -> str:
    """Keep a usable id the model or backend gave; otherwise (missing, empty, repeated) mint one."""
    if isinstance(call_id, str) and call_id.strip() and call_id not in seen:
        seen.add(call_id)
        return call_id
    fresh = new_call_id()
    seen.add(fresh)
    return fresh
