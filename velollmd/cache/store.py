"""Cache persistence: one snapshot file, written atomically, checked on load.

File layout (little endian):
    header   magic b"VELOCACH" | version u32 | payload_len u64 | blake2b-256(payload)
    payload  json_len u64 | JSON (exact entries, semantic rows metadata, embedder identity)
             | vectors .tobytes()

Write: temp file in the same directory, fsync, hard-link the old snapshot as `cache.snap.prev`,
rename the temp file over the old snapshot, fsync the directory; a crash at any point leaves
either the old or the new snapshot, never a mix. A failed write (full disk, read-only
directory) removes its temp file and leaves both snapshots as they were.
Load: a missing file is an empty cache; a corrupt, truncated or foreign file is renamed to
`cache.snap.corrupt-<timestamp>` and `cache.snap.prev` (the last good one) is loaded instead;
a file from a newer format version is set aside as `cache.snap.v<N>-<timestamp>` (a newer
daemon can take it back), never overwritten. Each of these is one warning line.
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


class FutureSnapshotError(SnapshotError):
    """The snapshot was written by a newer velollmd, in a format this one cannot read."""

    def __init__(self, version: int):
        super().__init__(f"format version {version} is newer than this daemon's {VERSION}")
        self.version = version


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
    if version > VERSION:
        raise FutureSnapshotError(version)
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


PREVIOUS_SUFFIX = ".prev"


def write_snapshot(directory: str, data: bytes, name: str = SNAPSHOT_NAME) -> str:
    """Atomically replace `directory/name` with `data`, keeping the old one as `name.prev`;
    returns the path. On failure (OSError) nothing but the temp file was touched, and it is gone."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _keep_previous(path)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(directory)
    return path


def _keep_previous(path: str) -> None:
    """Hard-link the current snapshot as `path.prev` (atomically, through a temp name)."""
    if not os.path.exists(path):
        return
    link = f"{path}.tmp-prev-{os.getpid()}"
    _unlink_quietly(link)
    os.link(path, link)
    os.replace(link, path + PREVIOUS_SUFFIX)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _set_aside(path: str, label: str) -> str:
    """Rename `path` to `path.<label>-<timestamp>`; returns what happened, for the log line."""
    aside = f"{path}.{label}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    try:
        os.replace(path, aside)
    except OSError as exc:
        return f"left in place ({exc.strerror or exc})"
    return f"moved to {aside}"


def _remove_stale_temps(path: str) -> None:
    for tmp in glob.glob(glob.escape(path) + ".tmp-*"):
        _unlink_quietly(tmp)


def _load(path: str) -> SnapshotState | None:
    """The state in `path`; None when there is no file; raises SnapshotError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return decode_snapshot(data)


def read_snapshot(directory: str, name: str = SNAPSHOT_NAME) -> SnapshotState | None:
    """The saved state, or None (no file, or no usable one). A bad snapshot is set aside and
    the previous good one is loaded in its place; one warning line says what happened."""
    path = os.path.join(directory, name)
    _remove_stale_temps(path)
    try:
        return _load(path)
    except FutureSnapshotError as exc:
        moved, label = _set_aside(path, f"v{exc.version}"), "left for a newer velollmd"
        reason = str(exc)
    except SnapshotError as exc:
        moved, label, reason = _set_aside(path, "corrupt"), "unusable", str(exc)
    previous = _load_previous(path + PREVIOUS_SUFFIX)
    outcome = "starting empty" if previous is None else "restoring the previous snapshot"
    log.warning("cache snapshot %s %s (%s); %s, %s", path, label, reason, moved, outcome)
    return previous


def _load_previous(path: str) -> SnapshotState | None:
    try:
        return _load(path)
    except SnapshotError:
        return None
