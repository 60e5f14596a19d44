"""Cache persistence: one snapshot file, a state file (statefile.py: written atomically,
checked on load, a bad one set aside and the previous good one loaded).

Payload (little endian), after the state file's header (magic b"VELOCACH"):
    json_len u64 | JSON (exact entries, semantic rows metadata, embedder identity)
    | vectors .tobytes()
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np

from ..wire import wirejson
from .exact import CachedResponse
from .statefile import FutureStateFileError, StateFileError, read_state_file, seal, unseal, write_state_file

SNAPSHOT_NAME = "cache.snap"
MAGIC = b"VELOCACH"
VERSION = 1
_JSON_LEN = struct.Struct("<Q")
SnapshotError = StateFileError
FutureSnapshotError = FutureStateFileError


@dataclass
class SnapshotState:
    exact: list = field(default_factory=list)        # [(key, CachedResponse, expires_at)]
    semantic_rows: list = field(default_factory=list)  # [(partition, key, text)]
    semantic_vectors: np.ndarray | None = None       # (num_rows, dim) float32|float16
    embedder: str = ""                               # identity of what made the vectors


def encode_snapshot(state: SnapshotState) -> bytes:
    vectors = state.semantic_vectors
    if vectors is None:
        vectors = np.zeros((0, 0), np.float32)                       # (0, 0)
    doc = {
        "exact": [[k, e.to_dict(), None if math.isinf(t) else t] for k, e, t in state.exact],
        "semantic": {"rows": [list(r) for r in state.semantic_rows], "embedder": state.embedder,
                     "shape": list(vectors.shape), "dtype": vectors.dtype.name},
    }
    body = wirejson.dumps(doc)
    payload = _JSON_LEN.pack(len(body)) + body + np.ascontiguousarray(vectors).tobytes()
    return seal(MAGIC, VERSION, payload)


def decode_snapshot(data: bytes) -> SnapshotState:
    payload = unseal(data, MAGIC, VERSION)
    try:
        (json_len,) = _JSON_LEN.unpack_from(payload)
        doc = json.loads(payload[_JSON_LEN.size:_JSON_LEN.size + json_len])
        sem = doc["semantic"]
        vectors = np.frombuffer(payload[_JSON_LEN.size + json_len:], np.dtype(sem["dtype"]))
        vectors = vectors.reshape(sem["shape"]).copy()               # (num_rows, dim)
        exact = [(k, CachedResponse.from_dict(e), math.inf if t is None else t)
                 for k, e, t in doc["exact"]]
        rows = [tuple(r) for r in sem["rows"]]
        embedder = str(sem.get("embedder", ""))
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise SnapshotError(f"bad payload: {exc}") from None
    if len(rows) != len(vectors):
        raise SnapshotError("semantic rows and vectors disagree")
    return SnapshotState(exact, rows, vectors, embedder)


def write_snapshot(directory: str, data: bytes, name: str = SNAPSHOT_NAME) -> str:
    """Atomically replace `directory/name` with `data`, keeping the old one as `name.prev`."""
    return write_state_file(directory, name, data)


def read_snapshot(directory: str, name: str = SNAPSHOT_NAME) -> SnapshotState | None:
    """The saved state, or None (no file, or no usable one: set aside, the previous loaded)."""
    return read_state_file(directory, name, decode_snapshot, "cache snapshot")
