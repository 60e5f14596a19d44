"""Stored Responses API responses, in memory, bounded by count and by bytes (LRU).

A response created with `store: true` is kept with the input items that led to it, so that a
later request can continue the conversation with `previous_response_id` (its input and output
items are put before the new input) and GET / DELETE /v1/responses/{id} find it. Each record is
kept as its compact JSON bytes: the byte bound is exact, and a reader gets its own copy.
Records are scoped to the API key that made them: another key sees a 404, as for a missing id.
An index from item id to the records holding it lets an `item_reference` find a stored
input or output item (`find_item`).
"""
from __future__ import annotations

import json
from collections import OrderedDict

from ..wire import wirejson
from ..wire.responses_items import find_item


class ResponseStore:
    def __init__(self, max_entries: int, max_bytes: int):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.num_bytes = 0
        self._records: OrderedDict[str, tuple[str, bytes]] = OrderedDict()   # id -> (owner, JSON)
        self._item_ids: dict[str, list[str]] = {}     # response id -> the ids of its items
        self._items: dict[str, list[str]] = {}        # item id -> the response ids holding it, oldest first

    def __len__(self) -> int:
        return len(self._records)

    def resize(self, max_entries: int, max_bytes: int) -> None:
        """New bounds (a config reload): the least recently used go until both hold."""
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._evict()

    def put(self, response_id: str, owner: str, record: dict) -> bool:
        """Keep `record` (least recently used ones go first); False when it alone is over the
        byte bound or the store is off (max_entries 0)."""
        data = wirejson.dumps(record)
        if self.max_entries == 0 or len(data) > self.max_bytes:
            return False
        self._remove(response_id)
        self._records[response_id] = (owner, data)
        self.num_bytes += len(data)
        ids = list(dict.fromkeys(item["id"] for item in _items_of(record) if isinstance(item.get("id"), str)))
        self._item_ids[response_id] = ids
        for item in ids:
            self._items.setdefault(item, []).append(response_id)
        self._evict()
        return True

    def _evict(self) -> None:
        while len(self._records) > self.max_entries or self.num_bytes > self.max_bytes:
            self._remove(next(iter(self._records)))

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
        if entry is None or entry[0] != owner:
            return None
        self._records.move_to_end(response_id)
        return json.loads(entry[1])

    def delete(self, response_id: str, owner: str) -> bool:
        entry = self._records.get(response_id)
        if entry is None or entry[0] != owner:
            return False
        self._remove(response_id)
        return True


def _items_of(record: dict) -> list[dict]:
    return [*record.get("input", ()), *record.get("response", {}).get("output", ())]
