"""State files (the cache's snapshot, the Responses store): one file, written atomically,
sealed with a header, checked on load.

Header (little endian): magic 8 bytes | version u32 | payload_len u64 | blake2b-256(payload);
what follows is the payload, whose format belongs to the file's owner.

Write (one at a time per file): temp file in the same directory (mode 0600: it holds prompts
and answers), fsync, hard-link the old file as `<name>.prev`, rename
the temp file over the old one, fsync the directory; a crash at any point leaves either the old
or the new file, never a mix. A failed write (full disk, read-only directory) removes its temp
file and leaves both files as they were.
Load: a missing file is no state; a corrupt, truncated or foreign file (or a directory in its
place) is renamed to `<name>.corrupt-<timestamp>` and `<name>.prev` (the last good one) is loaded instead; a file
from a newer format version is set aside as `<name>.v<N>-<timestamp>` (a newer daemon can take
it back), never overwritten. Each of these is one warning line. Of the files set aside with one
label the KEEP_SET_ASIDE newest are kept (a crash loop writing a bad file each time must not
fill the disk); the warning names those removed.
Ownership: one daemon at a time keeps a state file; it holds an advisory lock (flock) on
`<name>.lock` beside it for its life (the kernel lets go when the process ends, a crash
included), so that a second daemon on the same path does not overwrite its state.
"""
from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import logging
import os
import struct
import threading
import time
from typing import Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
PREVIOUS_SUFFIX = ".prev"
LOCK_SUFFIX = ".lock"
KEEP_SET_ASIDE = 3                           # set-aside files kept per state file and label
_HEADER = struct.Struct("<8sIQ32s")
_LOCKS: dict[str, threading.Lock] = {}       # path -> the lock of its writes
_LOCKS_LOCK = threading.Lock()


class StateFileError(ValueError):
    """The file is not one we wrote, or not whole."""


class FutureStateFileError(StateFileError):
    """The file was written by a newer velollmd, in a format this one cannot read."""

    def __init__(self, version: int, ours: int):
        super().__init__(f"format version {version} is newer than this daemon's {ours}")
        self.version = version


def _checksum(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=32).digest()


def seal(magic: bytes, version: int, payload: bytes) -> bytes:
    """The file's bytes: the header, then `payload`."""
    return _HEADER.pack(magic, version, len(payload), _checksum(payload)) + payload


def unseal(data: bytes, magic: bytes, version: int) -> bytes:
    """The payload of a file `seal(magic, version, ...)` wrote; raises StateFileError."""
    if len(data) < _HEADER.size:
        raise StateFileError("truncated header")
    found_magic, found_version, length, digest = _HEADER.unpack_from(data)
    if found_magic != magic:
        raise StateFileError(f"not a velollm {magic.decode(errors='replace')} file")
    if found_version > version:
        raise FutureStateFileError(found_version, version)
    if found_version != version:
        raise StateFileError(f"unsupported format version {found_version}")
    payload = data[_HEADER.size:]
    if len(payload) != length:
        raise StateFileError(f"payload is {len(payload)} bytes, header says {length}")
    if _checksum(payload) != digest:
        raise StateFileError("checksum mismatch")
    return payload


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_state_file(directory: str, name: str, data: bytes, *, keep_previous: bool = True) -> str:
    """Atomically replace `directory/name` with `data`, keeping the old one as `name.prev`
    (`keep_previous` False: `name.prev` becomes the new one too, for a write that removes
    what a user deleted: the old file still holds it); returns the path. On failure (OSError)
    nothing but the temp file was touched, and it is gone."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with _writing(path):
        for in_the_way in (path, path + PREVIOUS_SUFFIX):
            _set_aside_directory(in_the_way)
        _write_over(path, data)
        if not keep_previous:
            _keep_previous(path)
    _fsync_dir(directory)
    return path


def _writing(path: str) -> threading.Lock:
    """One write of `path` at a time: a reload or a shutdown starts a write while the previous
    one may still run in its thread (cancelling a task does not stop its thread), and both
    would write one temp file, each truncating the other's."""
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(path, threading.Lock())


def _write_over(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:   # the daemon's alone
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _keep_previous(path)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _keep_previous(path: str) -> None:
    """Hard-link the current file as `path.prev` (atomically, through a temp name)."""
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
    now_ns = time.time_ns()                   # (microseconds: two set aside in one second keep apart)
    stamp = time.strftime('%Y%m%dT%H%M%S', time.localtime(now_ns // 10**9)) + f".{now_ns // 1000 % 10**6:06d}"
    aside = f"{path}.{label}-{stamp}-{os.getpid()}"
    try:
        os.replace(path, aside)
    except OSError as exc:
        return f"left in place ({exc.strerror or exc})"
    removed = _prune_set_aside(f"{path}.{label}-")
    return f"moved to {aside}" + (f" (older ones removed: {', '.join(removed)})" if removed else "")


def _set_aside_directory(path: str) -> None:
    """A directory where a state file goes (made by hand, or by a tool) would fail every write:
    it is set aside as a corrupt file is (read_state_file does so at start; this, for one made
    while the daemon runs), with one warning line."""
    if os.path.isdir(path) and not os.path.islink(path):
        log.warning("state file %s is a directory; %s, writing the state file in its place",
                    path, _set_aside(path, "corrupt"))


def _prune_set_aside(prefix: str) -> list[str]:
    """Remove all but the KEEP_SET_ASIDE newest files named `prefix*` (newest by the time they
    were set aside: a rename sets a file's ctime, not its mtime); the names removed."""
    def set_aside_at(path: str) -> int:
        try:
            return os.stat(path).st_ctime_ns
        except OSError:
            return 0
    files = sorted(glob.glob(glob.escape(prefix) + "*"), key=lambda p: (set_aside_at(p), p))
    removed = []
    for old in files[:-KEEP_SET_ASIDE]:
        try:
            os.unlink(old)
        except OSError:
            continue
        removed.append(os.path.basename(old))
    return removed


def _remove_stale_temps(path: str) -> None:
    for tmp in glob.glob(glob.escape(path) + ".tmp-*"):
        _unlink_quietly(tmp)


def _load(path: str, decode: Callable[[bytes], T]) -> T | None:
    """What `path` holds; None when there is no file; raises StateFileError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise StateFileError("a directory, not a state file") from None
    return decode(data)


def read_state_file(directory: str, name: str, decode: Callable[[bytes], T], what: str) -> T | None:
    """`decode` of the file's bytes (it raises StateFileError for a bad file), or None (no file,
    or no usable one). A bad file is set aside and the previous good one is loaded in its
    place; one warning line, naming `what` the file is, says what happened."""
    path = os.path.join(directory, name)
    _remove_stale_temps(path)
    try:
        return _load(path, decode)
    except FutureStateFileError as exc:
        moved, label = _set_aside(path, f"v{exc.version}"), "left for a newer velollmd"
        reason = str(exc)
    except StateFileError as exc:
        moved, label, reason = _set_aside(path, "corrupt"), "unusable", str(exc)
    previous = _load_previous(path + PREVIOUS_SUFFIX, decode)
    outcome = "starting empty" if previous is None else "restoring the previous snapshot"
    log.warning("%s %s %s (%s); %s, %s", what, path, label, reason, moved, outcome)
    return previous


def written_ns(directory: str, name: str) -> int:
    """When the state file read_state_file just loaded was written (ns since the epoch): the
    file's, else the previous one's (the file was set aside); 0 with neither."""
    path = os.path.join(directory, name)
    for candidate in (path, path + PREVIOUS_SUFFIX):
        try:
            return os.stat(candidate).st_mtime_ns
        except OSError:
            continue
    return 0


def _load_previous(path: str, decode: Callable[[bytes], T]) -> T | None:
    try:
        return _load(path, decode)
    except StateFileError:
        return None


class StateFileTaken(Exception):
    """Another process holds the state file's lock."""

    def __init__(self, path: str, holder: str):
        super().__init__(f"{path} is held by {holder or 'another process'}")
        self.path, self.holder = path, holder


def lock_state_file(directory: str, name: str) -> int | None:
    """Hold `directory/name.lock` (flock, exclusive) for as long as the returned descriptor
    stays open, our pid written in it; None where the file system takes no lock. Raises
    StateFileTaken when another process holds it, OSError when the directory or its lock file
    cannot be made or opened for writing (read-only, a file in the way, no permission): then no
    state file can be written there either."""
    path = os.path.join(directory, name + LOCK_SUFFIX)
    os.makedirs(directory, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StateFileTaken(path, f"pid {holder}" if holder else "") from None
        return None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass                                          # a full disk: the lock holds all the same
    return fd
