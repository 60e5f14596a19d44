"""A state file kept for the daemon's life (the cache's snapshot, the Responses store).

Its directory is owned (statefile.lock_state_file): a second daemon on the same path keeps
that state in memory only and says so in one warning, instead of overwriting the first one's
file. The state is captured on the loop and encoded and written in a thread (fsync is slow)
every `interval_s` when it changed, and on close; a failed write keeps the previous file and
is warned once until the failure changes (a full disk would otherwise log every interval).
What a user asked to remove (a deleted response, a flushed cache) is written at once
(`write_soon`), not at the next interval: a crash in between would bring it back; and the
previous file, kept to fall back on, is replaced by the new one too, so it does not hold it.

A directory given up (a reload that moves the state or turns persistence off) gets one last
write of what changed since the last interval, its lock held until that write is done: a
later start on that path finds the state as it was when it was let go.

Each time a directory is owned that was not before (at start, and on a reload that turns
persistence on or moves it) its state file is read and handed to `merge`, under what is in
memory: one path for the cache, the Responses store and the key limits alike. What the user
removed meanwhile must not come back from there: per-id deletions are the state's own business
(the Responses store's tombstones); a removal of everything (a cache flush, `cleared`) makes a
file written before it hold nothing to merge.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable

from ..cache.statefile import StateFileTaken, lock_state_file, read_state_file, written_ns, write_state_file

log = logging.getLogger(__name__)
_UNWRITTEN = object()                                  # no generation of the state is on disk
UNREADABLE = object()                                  # read(): no directory, or its file unreadable (warned)


Merge = Callable[[object | None], "tuple[int, bool]"]


class StateWriter:
    def __init__(self, name: str, what: str, capture: Callable[[], object | None],
                 encode: Callable[[object], bytes], generation: Callable[[], object] = lambda: None, *,
                 decode: Callable[[bytes], object] | None = None, merge: Merge | None = None,
                 unit: str = "entries"):
        """`capture()` (on the loop) copies the state, None when there is none to keep;
        `encode(copy)` (in a thread) makes the file's bytes; `generation()` changes with the
        state (always None: write every time). `decode(bytes)` reads a file back (it raises
        StateFileError) and `merge(state)` takes it under what is in memory (None: nothing on
        disk); it returns (the number of `unit` restored, whether memory held nothing before)."""
        self.name, self.what, self.unit = name, what, unit
        self._capture, self._encode, self._generation = capture, encode, generation
        self._decode, self._merge = decode, merge
        self._cleared_ns = 0                           # when the user last removed the whole state
        self.directory, self.interval_s = "", 0.0
        self._asked = ("", 0.0)                        # the settings last given to own()
        self._lock: int | None = None                  # the lock file's descriptor
        self._written: object = _UNWRITTEN
        self._task: asyncio.Task | None = None
        self._writing: asyncio.Future | None = None    # the write in its thread
        self._soon: asyncio.Task | None = None         # a write_soon not yet started: later ones join it
        self._error: int | str = ""                    # the last failure's errno, logged once until it changes
        self._letting_go: dict[str, int | None] = {}   # directory -> its lock, until its last write is done
        self._last_writes: set[asyncio.Task] = set()

    def own(self, directory: str, interval_s: float) -> str:
        """Keep the state in `directory` ("" : memory only) from now on, written every
        `interval_s` (0: on close only): its lock taken, the previous directory's let go.
        Returns the directory kept: "" when another daemon owns it. Needs a running loop."""
        if (directory, interval_s) == self._asked:
            return self.directory
        if directory != self._asked[0]:
            self.let_go_unless(directory)
            self.directory = self._take(directory)
            self._written = _UNWRITTEN                 # a new place: write it all there
            self._merge_from(self.directory)
        self._asked, self.interval_s = (directory, interval_s), interval_s
        self._start_loop()
        return self.directory

    def let_go_unless(self, directory: str) -> None:
        """A move away from the directory held (to `directory`): the state written there one
        last time (in a thread, a failure warned), its lock let go once that is done. own()
        does this itself; a caller about to swap the object the state is captured from (the
        pipeline's cache) calls it first, so that the last write holds the old one's state."""
        if directory == self._asked[0] or not self.directory:
            return
        old, lock = self.directory, self._lock
        self.directory, self._lock = "", None
        self._letting_go[old] = lock
        last_write = self._last_write(old, self._unwritten_state()[1], time.time_ns())
        try:
            asyncio.get_running_loop()
        except RuntimeError:                           # no loop (a tool, a test): written here and now
            asyncio.run(last_write)
            return
        task = asyncio.ensure_future(last_write)
        self._last_writes.add(task)
        task.add_done_callback(self._last_writes.discard)

    def _unwritten_state(self) -> tuple[object, object | None]:
        """(the state's generation, a copy of the state when it changed since the last write,
        else None): what write() and a directory's last write take."""
        generation = self._generation()
        if generation is not None and generation == self._written:
            return generation, None
        return generation, self._capture()

    async def _last_write(self, directory: str, state: object | None, captured_ns: int) -> None:
        try:
            if state is not None:
                path = await self._write_file(directory, state)
                os.utime(path, ns=(captured_ns, captured_ns))   # its state's time: a flush after
        except OSError as exc:                                      # it keeps it from a merge
            log.warning(f"{self.what} last snapshot before letting the directory go failed; "
                        "the previous snapshot there is kept", extra={"fields": {"error": str(exc), "path": directory}})
        finally:
            if directory in self._letting_go:          # (not taken back meanwhile)
                self._close_lock(self._letting_go.pop(directory))

    def _take(self, directory: str) -> str:
        if not directory:
            return ""
        if directory in self._letting_go:              # given up a moment ago: its lock is still ours
            self._lock = self._letting_go.pop(directory)
            return directory
        try:
            self._lock = lock_state_file(directory, self.name)
        except StateFileTaken as exc:
            log.warning(f"{self.what} {os.path.join(directory, self.name)} belongs to another velollmd "
                        f"({exc.holder or 'its lock is held'}); this one keeps its {self.what} in memory only",
                        extra={"fields": {"path": directory, "lock": exc.path}})
            return ""
        except OSError as exc:                         # still read: what is there is restored
            self._failed(exc, f"{self.what} directory cannot be written; the {self.what} will not "
                              "outlive this process until it can", directory)
            self._lock = None
        return directory

    def _release(self) -> None:
        self._close_lock(self._lock)
        self._lock = None

    @staticmethod
    def _close_lock(lock: int | None) -> None:
        if lock is not None:
            os.close(lock)                             # (the lock goes with the descriptor)

    def read(self, directory: str, decode: Callable[[bytes], object]) -> object:
        """The state file of `directory` (just owned) decoded, None when there is none (a corrupt
        one set aside: cache/statefile.read_state_file); UNREADABLE with no such directory, or
        when reading failed (warned): then there is nothing to restore."""
        if not directory or not os.path.isdir(directory):
            return UNREADABLE
        try:
            return read_state_file(directory, self.name, decode, self.what)
        except OSError as exc:
            log.warning(f"{self.what} unreadable", extra={"fields": {"error": str(exc)}})
            return UNREADABLE

    def _merge_from(self, directory: str) -> None:
        """Take the state file of `directory` (just owned) under what is in memory."""
        if self._merge is None or not directory:
            return
        state = self.read(directory, self._decode)
        if state is UNREADABLE:
            return
        if state is not None and written_ns(directory, self.name) <= self._cleared_ns:
            log.info(f"{self.what} snapshot written before the last flush; not merged",
                     extra={"fields": {"path": directory}})
            state = None
        num_restored, was_empty = self._merge(state)
        if was_empty:
            self._restored(num_restored)
            log.info(f"{self.what} restored", extra={"fields": {self.unit: num_restored, "path": directory}})
        elif num_restored:                             # the whole goes to the new place at the next write
            log.info(f"{self.what} merged with its snapshot",
                     extra={"fields": {self.unit: num_restored, "path": directory}})

    def _restored(self, num_restored: int) -> None:
        """What is in memory came from the file: nothing to write until it changes. Unless it
        came from the previous file (the file was set aside): the next write puts it back."""
        if not num_restored or os.path.exists(os.path.join(self.directory, self.name)):
            self._written = self._generation()

    def cleared(self) -> None:
        """The user removed the whole state (a cache flush): a state file written before now,
        in a directory owned later, holds only what was removed."""
        self._cleared_ns = time.time_ns()

    def changed(self) -> None:
        """The next write writes, whatever the generation says (another state object)."""
        self._written = _UNWRITTEN

    def _start_loop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.directory and self.interval_s > 0:
            self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.write()

    async def write(self, *, removal: bool = False) -> str | None:
        """Write the state when it changed since the last write; the path written, else None.
        `removal`: the previous file is not kept either (it holds what was removed)."""
        if not self.directory:
            return None
        generation, state = self._unwritten_state()
        if state is None:
            return None
        try:
            path = await self._write_file(self.directory, state, keep_previous=not removal)
        except OSError as exc:
            self._failed(exc)
            return None
        self._written = generation
        if self._error:
            log.info(f"{self.what} snapshot written again", extra={"fields": {"path": path}})
            self._error = ""
        return path

    async def _write_file(self, directory: str, state: object, *, keep_previous: bool = True) -> str:
        """`state` encoded and written to `directory` in a thread, after the write running (in
        order: a later state is not overwritten by an earlier one); the path written."""
        name, encode = self.name, self._encode
        if self._writing is not None and not self._writing.done():
            await asyncio.wait([self._writing])
        self._writing = asyncio.get_running_loop().run_in_executor(
            None, lambda: write_state_file(directory, name, encode(state), keep_previous=keep_previous))
        return await asyncio.shield(self._writing)

    async def write_soon(self) -> None:
        """Write the state now, for a removal a crash must not undo; returns once it is on disk
        (or failed, warned as any write). Removals while a write runs share the one write after
        it, so a burst of deletes costs two writes, not one each."""
        if not self.directory:
            return
        if self._soon is None:
            self._soon = asyncio.ensure_future(self._write_after_the_running_one())
        await asyncio.shield(self._soon)               # a client leaving does not stop the write

    async def _write_after_the_running_one(self) -> None:
        if self._writing is not None and not self._writing.done():
            await asyncio.wait([self._writing])        # its state was taken before the removal
        self._soon = None                              # from here on a removal needs the next write
        await self.write(removal=True)                 # (which takes the state before its first await)

    def _failed(self, exc: OSError, message: str = "", directory: str = "") -> None:
        """Warn once per kind of failure (its errno): the same refusal at each interval, or at
        start and then at each write (a read-only directory), is one line."""
        error = exc.errno or str(exc)
        if error != self._error:
            log.warning(message or f"{self.what} snapshot failed; the previous snapshot is kept",
                        extra={"fields": {"error": str(exc), "path": directory or self.directory}})
        self._error = error

    async def close(self) -> None:
        """The last write; the directory let go (and those let go before, once written)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._soon is not None:
            await asyncio.shield(self._soon)
        await self.write()
        self._release()
        if self._last_writes:
            await asyncio.wait(set(self._last_writes))
