"""Ids the daemon mints: response ids (`chatcmpl-...`), tool-call ids (`call_...`), and the
Responses API's ids (`resp_...` to look a stored response up, `msg_...`/`fc_...` for items).

Response ids are unique per process run and cheap to make (no urandom per id); a call id is
`call_` + 24 random letters and digits, as OpenAI writes them.
"""
from __future__ import annotations

import itertools
import secrets
import string

_PREFIX = secrets.token_hex(6)
_COUNTER = itertools.count(1)
_ALPHABET = string.ascii_letters + string.digits
ID_LENGTH = 24


def response_id(kind: str = "chatcmpl") -> str:
    return f"{kind}-{_PREFIX}{next(_COUNTER):012x}"


def item_id(kind: str) -> str:
    """An output item id of the Responses API: `msg_...`, `fc_...`, `rs_...` (unique per run)."""
    return f"{kind}_{_PREFIX}{next(_COUNTER):012x}"


def stored_response_id() -> str:
    """`resp_` + 48 random hex digits: the key of a stored response, so not guessable."""
    return "resp_" + secrets.token_hex(24)


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
