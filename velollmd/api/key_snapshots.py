"""The keys' limit windows (rpm, tpm, tokens_per_day) across restarts, so that a restart does
not hand every key a fresh daily budget.

A state file (cache/statefile.py: atomic write, a corrupt or foreign file set aside, the
previous one loaded) in [key_limits] path, owned by one daemon, written from a thread every
snapshot_interval_s when a request or its tokens were counted, and on shutdown
(core/statewriter.py), as the Responses store is. It holds key names and ages, never a key.
"""
from __future__ import annotations

import json

from ..cache.statefile import StateFileError, seal, unseal
from ..core.statewriter import StateWriter
from ..sched.keylimits import KeyLedger
from ..wire import wirejson

WINDOWS_NAME = "keys.snap"
MAGIC = b"VELOKEYS"
VERSION = 1


def encode_windows(state: dict) -> bytes:
    """The state file of `KeyLedger.windows()`."""
    return seal(MAGIC, VERSION, wirejson.dumps(state))


def decode_windows(data: bytes) -> dict:
    """What `KeyLedger.restore()` takes; raises StateFileError."""
    payload = unseal(data, MAGIC, VERSION)
    try:
        state = json.loads(payload)
    except ValueError as exc:
        raise StateFileError(f"bad payload: {exc}") from None
    if not (isinstance(state, dict) and _is_number(state.get("saved_at")) and isinstance(state.get("keys"), dict)
            and all(_is_windows(windows) for windows in state["keys"].values())):
        raise StateFileError("bad payload: not {saved_at, keys: {name: windows}}")
    return state


def _is_windows(windows) -> bool:
    return (isinstance(windows, dict) and isinstance(windows.get("requests"), list)
            and all(_is_number(age) for age in windows["requests"])
            and all(_is_buckets(windows.get(name)) for name in ("tokens_minute", "tokens_day")))


def _is_buckets(buckets) -> bool:
    """[[age, tokens], ...]"""
    return isinstance(buckets, list) and all(
        isinstance(b, list) and len(b) == 2 and _is_number(b[0]) and type(b[1]) is int and b[1] >= 0 for b in buckets)


def _is_number(value) -> bool:
    return type(value) in (int, float) and value >= 0


class KeySnapshots:
    """The ledger's windows on disk (a StateWriter), restored whenever a directory is owned
    anew: at start, and on a reload that turns [key_limits] path on or moves it (merged with the
    windows in memory: KeyLedger.restore). `directory` "" keeps them in memory only, as does
    another daemon owning it. While no key has a limit the directory is not taken (nothing in
    it would be read): a daemon without limits leaves the disk alone."""

    def __init__(self, ledger: KeyLedger, directory: str, interval_s: float):
        self.ledger, self.directory, self.interval_s = ledger, directory, interval_s
        self.writer = StateWriter(WINDOWS_NAME, "key limits", ledger.windows, encode_windows,
                                  generation=lambda: ledger.generation, decode=decode_windows,
                                  merge=self._merge, unit="keys")

    def start(self) -> None:
        """Own the directory and restore the windows of its state file (if any and intact),
        for the keys configured now. Periodic writes need a running loop."""
        self.writer.own(self._kept_in(), self.interval_s)

    def _merge(self, state: dict | None) -> tuple[int, bool]:
        was_empty = self.ledger.generation == 0         # nothing counted yet
        return (self.ledger.restore(state) if state is not None else 0), was_empty

    def configure(self, directory: str, interval_s: float) -> None:
        """New settings (a reload): a new directory is owned, its windows merged, and written in full."""
        self.directory, self.interval_s = directory, interval_s
        self.writer.own(self._kept_in(), interval_s)

    def _kept_in(self) -> str:
        return self.directory if self.ledger.limited else ""

    async def write(self) -> str | None:
        """Write the windows when they changed since the last write; the path written, else None."""
        return await self.writer.write()

    async def close(self) -> None:
        await self.writer.close()
