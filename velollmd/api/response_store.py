"""Stored Responses API responses, in memory, bounded by count and by bytes (LRU).

A response created with `store: true` is kept with the input items that led to it, so that a
later request can continue the conversation with `previous_response_id` (its input and output
items are put before the new input) and GET / DELETE /v1/responses/{id} find it. Each record is
kept as its compact JSON bytes: the byte bound is exact, and a reader gets its own copy.
Records are scoped to the API key that made them (kept as its SHA-256, never the key itself):
another key sees a 404, as for a missing id. An index from item id to the records holding it
lets an `item_reference` find a stored input or output item (`find_item`).

StoreSnapshots keeps the store across restarts: a state file (cache/statefile.py: atomic
write, a corrupt or foreign file set aside, the previous one loaded) in [responses] path,
owned by one daemon, written from a thread every snapshot_interval_s when the store changed,
at once on a DELETE (a crash must not bring a deleted response back),
and on shutdown (core/statewriter.py). A reload that turns persistence on (or moves it) merges
the snapshot found there under the store; the ids deleted in this run (the newest
MAX_TOMBSTONES) are not taken from it, so a response deleted while persistence was off does
not come back.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict

from ..cache.statefile import StateFileError, seal, unseal
from ..core.statewriter import StateWriter
from ..wire import wirejson
from ..wire.responses_items import find_item, with_unique_ids

STORE_NAME = "responses.snap"
MAGIC = b"VELORESP"
VERSION = 1
MAX_TOMBSTONES = 10_000       # deleted ids remembered, so that a snapshot merged later does not revive them


class ResponseStore:
    def __init__(self, max_entries: int, max_bytes: int):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.num_bytes = 0
        self._records: OrderedDict[str, tuple[str, bytes]] = OrderedDict()   # id -> (owner, JSON)
        self._item_ids: dict[str, list[str]] = {}     # response id -> the ids of its items
        self._items: dict[str, list[str]] = {}        # item id -> the response ids holding it, oldest first
        self._deleted: OrderedDict[str, None] = OrderedDict()   # ids deleted (the newest MAX_TOMBSTONES)
        self.generation = 0                           # bumped by every change (a snapshot is due)

    def __len__(self) -> int:
        return len(self._records)

    def resize(self, max_entries: int, max_bytes: int) -> None:
        """New bounds (a config reload): the least recently used go until both hold."""
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._evict()

    def put(self, response_id: str, owner: str, record: dict) -> bool:
        """Keep `record` (least recently used ones go first); False when it alone is over the
        byte bound or the store is off (max_entries 0)."""
        return self._put(response_id, _owner_digest(owner), record)

    def _put(self, response_id: str, owner: str, record: dict) -> bool:
        return self._keep(response_id, owner, wirejson.dumps(record),
                          list(dict.fromkeys(item["id"] for item in _items_of(record) if isinstance(item.get("id"), str))))

    def _keep(self, response_id: str, owner: str, data: bytes, ids: list[str]) -> bool:
        """Keep the record `data` (JSON) holding the items `ids`, as the most recently used."""
        if self.max_entries == 0 or len(data) > self.max_bytes:
            return False
        self._deleted.pop(response_id, None)
        self._remove(response_id)
        self._records[response_id] = (owner, data)
        self.num_bytes += len(data)
        self._item_ids[response_id] = ids
        for item in ids:
            self._items.setdefault(item, []).append(response_id)
        self._evict()
        self.generation += 1
        return True

    def entries(self) -> list[tuple[str, tuple[str, bytes]]]:
        """(id, (owner digest, JSON)) for every record, least recently used first (a copy)."""
        return list(self._records.items())

    def load(self, entries: list[tuple[str, str, dict]]) -> int:
        """Take records read back from a snapshot, (id, owner digest, record) oldest first
        (their input items' ids made unique, as a daemon before that kept them), as older than
        those in memory (a reload that turns persistence on): a record in memory wins over one
        of the same id, one deleted in this run is not taken, and over the bounds the
        snapshot's go first. Returns the number of the snapshot's records kept."""
        newer = [(response_id, owner, data, self._item_ids[response_id])
                 for response_id, (owner, data) in self._records.items()]
        self._records.clear()
        self._item_ids.clear()
        self._items.clear()
        self.num_bytes = 0
        in_memory = {row[0] for row in newer}
        taken = [row for row in entries if row[0] not in in_memory and row[0] not in self._deleted]
        for response_id, owner, record in taken:
            self._put(response_id, owner, {**record, "input": with_unique_ids(record["input"])})
        for row in newer:
            self._keep(*row)
        return sum(1 for row in taken if row[0] in self._records)

    def _evict(self) -> None:
        while len(self._records) > self.max_entries or self.num_bytes > self.max_bytes:
            self._remove(next(iter(self._records)))
            self.generation += 1

    def _remove(self, response_id: str) -> None:
        entry = self._records.pop(response_id, None)
        if entry is None:
            return
        self.num_bytes -= len(entry[1])
        for item in self._item_ids.pop(response_id, ()):
            holders = self._items[item]
            holders.remove(response_id)
            if not holders:
                del self._items[item]

    def find_item(self, item: str, owner: str) -> dict | None:
        """The stored input or output item with id `item`, from the newest response of `owner`
        that holds it."""
        for response_id in reversed(self._items.get(item, ())):
            record = self.get(response_id, owner)
            if record is not None:
                return find_item(_items_of(record), item)
        return None

    def get(self, response_id: str, owner: str) -> dict | None:
        entry = self._records.get(response_id)
        if entry is None or entry[0] != _owner_digest(owner):
            return None
        self._records.move_to_end(response_id)
        return json.loads(entry[1])

    def delete(self, response_id: str, owner: str) -> bool:
        entry = self._records.get(response_id)
        if entry is None or entry[0] != _owner_digest(owner):
            return False
        self._remove(response_id)
        self._deleted[response_id] = None
        if len(self._deleted) > MAX_TOMBSTONES:
            self._deleted.popitem(last=False)
        self.generation += 1
        return True


def _owner_digest(key: str) -> str:
    """What a record's owner is kept as: the API key's SHA-256, so no key reaches the disk."""
    return hashlib.sha256(key.encode()).hexdigest()


def _items_of(record: dict) -> list[dict]:
    return [*record.get("input", ()), *record.get("response", {}).get("output", ())]


def encode_entries(entries: list[tuple[str, tuple[str, bytes]]]) -> bytes:
    """The state file of `ResponseStore.entries()`: a JSON array of [id, owner, record]."""
    rows = (wirejson.dumps([response_id, owner])[:-1] + b"," + data + b"]"
            for response_id, (owner, data) in entries)
    return seal(MAGIC, VERSION, b"[" + b",".join(rows) + b"]")


def decode_entries(data: bytes) -> list[tuple[str, str, dict]]:
    """The (id, owner digest, record) rows of a state file; raises StateFileError."""
    payload = unseal(data, MAGIC, VERSION)
    try:
        rows = [(response_id, owner, record) for response_id, owner, record in json.loads(payload)]
    except (ValueError, TypeError) as exc:
        raise StateFileError(f"bad payload: {exc}") from None
    if not all(_is_record(*row) for row in rows):
        raise StateFileError("bad payload: a row is not [id, owner, record]")
    return rows


def _is_record(response_id, owner, record) -> bool:
    return (isinstance(response_id, str) and isinstance(owner, str) and isinstance(record, dict)
            and isinstance(record.get("response"), dict) and isinstance(record.get("input"), list)
            and isinstance(record["response"].get("output", []), list)
            and all(isinstance(item, dict) for item in _items_of(record)))


class StoreSnapshots:
    """The store on disk (a StateWriter: its directory owned, written in a thread every
    `interval_s` when the store changed, and on shutdown), restored whenever a directory is
    owned anew: at start, and on a reload (merged under the store in memory). `directory` ""
    keeps it in memory only, as does another daemon owning it."""

    def __init__(self, store: ResponseStore, directory: str, interval_s: float):
        self.store, self.directory, self.interval_s = store, directory, interval_s
        self.writer = StateWriter(STORE_NAME, "response store", store.entries, encode_entries,
                                  generation=lambda: store.generation, decode=decode_entries,
                                  merge=self._merge, unit="responses")

    def open(self) -> int:
        """Own the directory and load its state file (if any and intact); the number of
        responses held. Periodic writes need a running loop."""
        self.writer.own(self.directory, self.interval_s)
        return len(self.store)

    def _merge(self, rows: list | None) -> tuple[int, bool]:
        was_empty = not len(self.store)
        return (self.store.load(rows) if rows else 0), was_empty

    def start(self) -> None:
        self.open()

    def configure(self, directory: str, interval_s: float) -> None:
        """New settings (a reload): a new directory is owned, what it holds from an earlier
        run merged under what is in memory (not overwritten), and the whole written there."""
        self.directory, self.interval_s = directory, interval_s
        self.writer.own(directory, interval_s)

    async def removed(self) -> None:
        """A user removed a response: on disk now, not at the next interval (a crash would
        bring it back); returns once written."""
        await self.writer.write_soon()

    async def write(self) -> str | None:
        """Write the store when it changed since the last write; the path written, else None."""
        return await self.writer.write()

    async def close(self) -> None:
        await self.writer.close()
