"""The shared (Redis) tier's entry format: versioned and checksummed, so that a value another
program (or another version) wrote, or one cut short, is a miss and never an error.

    MAGIC (4 bytes) | BLAKE2b-128 of the payload (16 bytes) | payload: JSON {"expires_at", "entry"}

`expires_at` is wall-clock seconds (null = never): an instance that adopts the entry keeps the
writer's expiry rather than starting a new TTL.
"""
from __future__ import annotations

import hashlib
import json
import math

from .exact import CachedResponse

MAGIC = b"VLC1"
DIGEST_BYTES = 16


def _digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=DIGEST_BYTES).digest()


def encode_entry(entry: CachedResponse, expires_at: float) -> bytes:
    expiry = expires_at if math.isfinite(expires_at) else None
    payload = json.dumps({"expires_at": expiry, "entry": entry.to_dict()}, ensure_ascii=False,
                         separators=(",", ":")).encode()
    return MAGIC + _digest(payload) + payload


def decode_entry(data) -> tuple[CachedResponse, float] | None:
    """(entry, expires_at) from a stored value; None for anything that is not an intact entry."""
    if not isinstance(data, bytes) or not data.startswith(MAGIC):
        return None
    head = len(MAGIC) + DIGEST_BYTES
    payload = data[head:]
    if _digest(payload) != data[len(MAGIC):head]:
        return None
    try:
        record = json.loads(payload)
        entry = CachedResponse.from_dict(record["entry"])
        expires_at = record["expires_at"]
        expires_at = math.inf if expires_at is None else float(expires_at)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if not isinstance(entry.model, str) or not isinstance(entry.content, str):
        return None
    return entry, expires_at
