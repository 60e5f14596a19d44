"""Cache persistence: one snapshot file, written atomically, checked on load.

File layout (little endian):
    header   magic b"VELOCACH" | version u32 | payload_len u64 | blake2b-256(payload)
    payload  json_len u64 | JSON (exact entries, semantic rows metadata, embedder identity)
             | vectors .tobytes()

Write: temp file in the same directory, fsync, rename over the old snapshot, fsync the
directory; a crash at any point leaves either the old or the new snapshot, never a mix.
Load: a missing file is an empty cache; a corrupt, truncated or foreign file is renamed to
`cache.snap.corrupt-<timestamp>` with a warning and the cache starts empty.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
import struct
import time
from dataclasses import dataclass, field

import numpy as np

from ..wire import wirejson
from .exact import CachedResponse

log = logging.getLogger(__name__)

SNAPSHOT_NAME = "cache.snap"
MAGIC = b"VELOCACH"
VERSION = 1
_HEADER = struct.Struct("<8sIQ32s")
_JSON_LEN = struct.Struct("<Q")


class SnapshotError(ValueError):
    """The snapshot file is not one we wrote, or not whole."""


@dataclass
class SnapshotState:
    exact: list = field(default_factory=list)        # [(key, CachedResponse, expires_at)]
    semantic_rows: list = field(default_factory=list)  # [(partition, key, text)]
    semantic_vectors: np.ndarray | None = None       # (num_rows, dim) float32|float16
    embedder: str = ""                               # identity of what made the vectors


def _checksum(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=32).digest()


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
    return _HEADER.pack(MAGIC, VERSION, len(payload), _checksum(payload)) + payload


def _check_header(data: bytes) -> bytes:
    if len(data) < _HEADER.size:
        raise SnapshotError("truncated header")
    magic, version, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError("not a velollm cache snapshot")
    if version != VERSION:
        raise SnapshotError(f"unsupported snapshot version {version}")
    payload = data[_HEADER.size:]
    if len(payload) != length:
        raise SnapshotError(f"payload is {len(payload)} bytes, header says {length}")
    if _checksum(payload) != digest:
        raise SnapshotError("checksum mismatch")
    return payload


def decode_snapshot(data: bytes) -> SnapshotState:
    payload = _check_header(data)
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


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(directory: str, data: bytes, name: str = SNAPSHOT_NAME) -> str:
    """Atomically replace `directory/name` with `data`; returns the path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(directory)
    return path


def _quarantine(path: str, reason: str) -> None:
    aside = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    log.warning("cache snapshot %s unusable (%s); moved to %s, starting empty",
                path, reason, aside)
    os.replace(path, aside)


def _remove_stale_temps(path: str) -> None:
    for tmp in glob.glob(glob.escape(path) + ".tmp-*"):
        try:
            os.unlink(tmp)
        except OSError:
            pass


def read_snapshot(directory: str, name: str = SNAPSHOT_NAME) -> SnapshotState | None:
    """The saved state, or None (no file, or a bad file that was quarantined)."""
    path = os.path.join(directory, name)
    _remove_stale_temps(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        return decode_snapshot(data)
    except SnapshotError as exc:
        _quarantine(path, str(exc))
        return None
