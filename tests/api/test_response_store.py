"""The Responses store's bounds: by count and by bytes, least recently used first, per key;
its state file: written, read back, a bad one set aside."""
import asyncio
import json
import logging

import pytest

from velollmd.api.response_store import MAGIC, STORE_NAME, VERSION, ResponseStore, StoreSnapshots, decode_entries
from velollmd.cache.statefile import seal
from velollmd.cache.store import SnapshotState, encode_snapshot
from velollmd.wire.responses_items import item_page


def record(n: int, size: int = 10) -> dict:
    return {"response": {"id": f"resp_{n}", "output": []}, "input": [{"text": "x" * size}]}


def size_of(rec: dict) -> int:
    return len(json.dumps(rec, separators=(",", ":")).encode())


def test_count_bound_evicts_the_least_recently_used():
    store = ResponseStore(max_entries=2, max_bytes=1 << 20)
    for n in range(2):
        assert store.put(f"resp_{n}", "k", record(n))
    assert store.get("resp_0", "k") is not None          # resp_0 is now the most recent
    store.put("resp_2", "k", record(2))
    assert store.get("resp_1", "k") is None
    assert store.get("resp_0", "k") == record(0) and store.get("resp_2", "k") == record(2)
    assert len(store) == 2


def test_byte_bound_holds_and_counts_exactly():
    one = size_of(record(0, 100))
    store = ResponseStore(max_entries=100, max_bytes=3 * one)
    for n in range(5):
        store.put(f"resp_{n}", "k", record(n, 100))
        assert store.num_bytes <= 3 * one
    assert [n for n in range(5) if store.get(f"resp_{n}", "k")] == [2, 3, 4]
    assert store.num_bytes == 3 * one


def test_a_record_over_the_byte_bound_alone_is_not_kept():
    store = ResponseStore(max_entries=10, max_bytes=50)
    store.put("resp_small", "k", {"a": 1})
    assert not store.put("resp_big", "k", record(0, 100))
    assert store.get("resp_big", "k") is None and store.get("resp_small", "k") == {"a": 1}


def test_zero_entries_keeps_nothing():
    store = ResponseStore(max_entries=0, max_bytes=1 << 20)
    assert not store.put("resp_0", "k", record(0)) and len(store) == 0


def test_records_belong_to_their_key_and_readers_get_copies():
    store = ResponseStore(max_entries=10, max_bytes=1 << 20)
    store.put("resp_0", "alice", record(0))
    assert store.get("resp_0", "bob") is None and not store.delete("resp_0", "bob")
    store.get("resp_0", "alice")["input"].clear()
    assert store.get("resp_0", "alice") == record(0)
    assert store.delete("resp_0", "alice") and store.num_bytes == 0 and store.get("resp_0", "alice") is None


def test_putting_an_id_again_replaces_it():
    store = ResponseStore(max_entries=10, max_bytes=1 << 20)
    store.put("resp_0", "k", record(0, 10))
    store.put("resp_0", "k", record(0, 20))
    assert len(store) == 1 and store.num_bytes == size_of(record(0, 20))


def test_resize_evicts_at_once():
    store = ResponseStore(max_entries=10, max_bytes=1 << 20)
    for n in range(4):
        store.put(f"resp_{n}", "k", record(n))
    store.resize(2, 1 << 20)
    assert len(store) == 2 and store.get("resp_0", "k") is None and store.get("resp_3", "k") == record(3)
    assert store.num_bytes == 2 * size_of(record(0))


def with_items(n: int, input_ids: list[str], output_ids: list[str]) -> dict:
    return {"response": {"id": f"resp_{n}", "output": [{"id": i, "type": "message"} for i in output_ids]},
            "input": [{"id": i, "type": "message"} for i in input_ids]}


def test_find_item_looks_up_input_and_output_items_by_id_per_key():
    store = ResponseStore(max_entries=2, max_bytes=1 << 20)
    store.put("resp_0", "k", with_items(0, ["msg_in0"], ["msg_out0"]))
    store.put("resp_1", "k", with_items(1, ["msg_in0", "msg_out0", "msg_in1"], ["fc_1"]))
    assert store.find_item("msg_in1", "k") == {"id": "msg_in1", "type": "message"}
    assert store.find_item("fc_1", "k")["id"] == "fc_1" and store.find_item("fc_1", "other") is None
    store.delete("resp_1", "k")                    # its items go; those resp_0 holds too stay
    assert store.find_item("msg_in1", "k") is None and store.find_item("fc_1", "k") is None
    assert store.find_item("msg_in0", "k")["id"] == "msg_in0"
    store.put("resp_2", "k", with_items(2, [], ["msg_out2"]))
    store.put("resp_3", "k", with_items(3, [], ["msg_out3"]))     # evicts resp_0
    assert store.find_item("msg_out0", "k") is None and store.find_item("msg_out3", "k")["id"] == "msg_out3"


# -- the store on disk ---------------------------------------------------------------------

def written(store: ResponseStore, directory) -> str | None:
    snapshots = StoreSnapshots(store, str(directory), 0)
    snapshots.open()
    try:
        return asyncio.run(snapshots.write())
    finally:
        asyncio.run(snapshots.close())


def restored(directory, max_entries: int = 10, max_bytes: int = 1 << 20) -> ResponseStore:
    store = ResponseStore(max_entries, max_bytes)
    snapshots = StoreSnapshots(store, str(directory), 0)
    snapshots.open()
    asyncio.run(snapshots.close())
    return store


def test_a_written_store_comes_back_in_order_per_key_with_its_items(tmp_path):
    store = ResponseStore(max_entries=10, max_bytes=1 << 20)
    store.put("resp_0", "alice", with_items(0, ["msg_in0"], ["msg_out0"]))
    store.put("resp_1", "bob", record(1))
    store.put("resp_2", "alice", record(2))
    store.get("resp_0", "alice")                           # now the most recent
    assert written(store, tmp_path) == str(tmp_path / STORE_NAME)
    again = restored(tmp_path, max_entries=2)              # the bounds hold on load: resp_1 goes
    assert again.get("resp_1", "bob") is None and again.get("resp_2", "alice") == record(2)
    assert again.get("resp_0", "alice") == with_items(0, ["msg_in0"], ["msg_out0"])
    assert again.get("resp_0", "bob") is None and again.find_item("msg_out0", "alice")["id"] == "msg_out0"
    assert again.num_bytes == store.num_bytes - size_of(record(1))


def test_the_file_holds_no_api_key_and_an_unchanged_store_is_not_rewritten(tmp_path):
    store = ResponseStore(max_entries=10, max_bytes=1 << 20)
    store.put("resp_0", "sk-secret-key", record(0))
    snapshots = StoreSnapshots(store, str(tmp_path), 0)
    snapshots.open()
    assert asyncio.run(snapshots.write()) is not None
    assert b"sk-secret-key" not in (tmp_path / STORE_NAME).read_bytes()
    assert (tmp_path / STORE_NAME).stat().st_mode & 0o777 == 0o600      # conversations: no other reader
    assert asyncio.run(snapshots.write()) is None          # nothing changed since
    assert store.delete("resp_0", "sk-secret-key") and asyncio.run(snapshots.write()) is not None
    asyncio.run(snapshots.close())
    assert len(restored(tmp_path)) == 0                    # the delete reached the disk


@pytest.mark.parametrize("content", [
    b"garbage, not a store",
    encode_snapshot(SnapshotState()),                      # another velollm file (the cache's)
    b"VELORESP" + (1).to_bytes(4, "little") + bytes(44),  # truncated / wrong checksum
])
def test_a_corrupt_or_foreign_file_is_set_aside_once_and_not_trusted(tmp_path, caplog, content):
    (tmp_path / STORE_NAME).write_bytes(content)
    with caplog.at_level(logging.WARNING):
        store = restored(tmp_path)
    assert len(store) == 0
    [aside] = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert aside.read_bytes() == content and not (tmp_path / STORE_NAME).exists()
    assert caplog.text.count("response store") == 1 and "unusable" in caplog.text


def test_a_directory_in_the_files_place_is_set_aside_and_the_store_is_written_there(tmp_path, caplog):
    """Not "unreadable" with every later write failing: set aside as a corrupt file is."""
    (tmp_path / STORE_NAME).mkdir()
    store = ResponseStore(max_entries=10, max_bytes=1 << 20)
    store.put("resp_0", "k", record(0))
    with caplog.at_level(logging.WARNING):
        assert written(store, tmp_path) == str(tmp_path / STORE_NAME)
    [aside] = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert aside.is_dir() and "unreadable" not in caplog.text and "snapshot failed" not in caplog.text
    assert restored(tmp_path).get("resp_0", "k") == record(0)


def test_a_file_from_a_newer_version_is_left_for_it(tmp_path, caplog):
    future = b"VELORESP" + (2).to_bytes(4, "little") + bytes(60)
    (tmp_path / STORE_NAME).write_bytes(future)
    with caplog.at_level(logging.WARNING):
        assert len(restored(tmp_path)) == 0
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith(STORE_NAME + ".v2-")]
    assert aside.read_bytes() == future and "newer velollmd" in caplog.text


def test_a_well_sealed_file_with_bad_rows_is_not_trusted(tmp_path):
    (tmp_path / STORE_NAME).write_bytes(seal(MAGIC, VERSION, b'[["resp_0","owner",{"input":"x"}]]'))
    assert len(restored(tmp_path)) == 0 and [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]


def test_one_store_owns_its_directory_until_it_lets_go_even_on_a_reload(tmp_path, caplog):
    """A second owner of the same directory keeps its store in memory only (one warning naming
    the path); a reload to another directory lets the first go and takes the new one."""
    first = StoreSnapshots(ResponseStore(10, 1 << 20), str(tmp_path / "a"), 0)
    first.open()
    second_store = ResponseStore(10, 1 << 20)
    second = StoreSnapshots(second_store, str(tmp_path / "a"), 0)
    with caplog.at_level(logging.WARNING):
        second.open()
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(tmp_path / "a" / STORE_NAME) in line and "another velollmd" in line and "memory only" in line
    second_store.put("resp_0", "k", record(0))
    assert asyncio.run(second.write()) is None and not (tmp_path / "a" / STORE_NAME).exists()
    first.configure(str(tmp_path / "b"), 0)                # a reload: a new path
    assert len(restored(tmp_path / "a")) == 0 and not [r for r in caplog.records[1:] if r.levelno >= logging.WARNING]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(restored(tmp_path / "b")) == 0
    assert "another velollmd" in caplog.text
    asyncio.run(first.close())
    asyncio.run(second.close())


def test_a_store_restored_from_the_previous_file_is_written_back_unchanged(tmp_path):
    """A corrupt file set aside, the previous one restored: the shutdown write puts it back
    as the file, though nothing changed since, so that the next start finds it too."""
    store = ResponseStore(10, 1 << 20)
    store.put("resp_0", "k", record(0))
    written(store, tmp_path)
    store.put("resp_1", "k", record(1))
    written(store, tmp_path)                               # resp_0 alone is now the .prev
    (tmp_path / STORE_NAME).write_bytes(b"bit rot")
    assert len(restored(tmp_path)) == 1                    # the previous one, and closed unchanged
    again = restored(tmp_path)
    assert len(again) == 1 and again.get("resp_0", "k") == record(0)


def test_a_record_kept_with_an_item_id_twice_pages_to_its_end_once_restored(tmp_path):
    """Files written before ids were made unique on create: their input items get unique ids
    on load, so that GET input_items paging by `after` ends."""
    dup = {"response": {"id": "resp_0", "output": []},
           "input": [{"type": "message", "id": i} for i in ("a", "b", "a", "c")]}
    (tmp_path / STORE_NAME).write_bytes(seal(MAGIC, VERSION, json.dumps([["resp_0", "o", dup]]).encode()))
    store = ResponseStore(10, 1 << 20)
    store.load(decode_entries((tmp_path / STORE_NAME).read_bytes()))
    [(_, (_, data))] = store.entries()
    items = json.loads(data)["input"]
    ids, after = [], None
    for _ in range(10):
        page = item_page(items, order="asc", after=after, limit=1)
        ids += [item["id"] for item in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert len(ids) == 4 == len(set(ids)) and ids[:2] == ["a", "b"] and ids[3] == "c"


def test_removals_are_written_at_once_together_and_a_put_waits_for_the_interval(tmp_path):
    """A delete must reach the disk before a crash can undo it; deletes at the same time share
    one write (the .prev the same file: the one before them holds the deleted), and a put pays
    no write of its own."""
    async def main():
        store = ResponseStore(10, 1 << 20)
        snapshots = StoreSnapshots(store, str(tmp_path), 3600)
        snapshots.open()
        for n in range(4):
            store.put(f"resp_{n}", "k", record(n))
        await snapshots.write()
        before = (tmp_path / STORE_NAME).read_bytes()
        store.put("resp_4", "k", record(4))
        assert (tmp_path / STORE_NAME).read_bytes() == before
        for n in range(3):
            assert store.delete(f"resp_{n}", "k")
        written, write = [], snapshots.writer.write

        async def counted_write(**kwargs):
            written.append(await write(**kwargs))
            return written[-1]
        snapshots.writer.write = counted_write
        await asyncio.gather(*(snapshots.removed() for _ in range(3)))
        assert len(written) == 1 and written[0] is not None
        assert [row[0] for row in decode_entries((tmp_path / STORE_NAME).read_bytes())] == ["resp_3", "resp_4"]
        assert (tmp_path / (STORE_NAME + ".prev")).read_bytes() == (tmp_path / STORE_NAME).read_bytes()
        await snapshots.close()
    asyncio.run(main())


def test_a_new_directory_with_a_snapshot_is_merged_under_the_store_in_memory(tmp_path):
    """A reload that turns persistence on where an earlier run left a store: the store in
    memory wins on the same id, the bounds hold, the snapshot's oldest go first."""
    earlier = ResponseStore(10, 1 << 20)
    for n in range(3):
        earlier.put(f"resp_{n}", "k", record(n))
    written(earlier, tmp_path)
    store = ResponseStore(max_entries=3, max_bytes=1 << 20)
    store.put("resp_1", "k", record(1, 20))               # the same id, newer
    store.put("resp_3", "k", record(3))
    snapshots = StoreSnapshots(store, "", 0)
    snapshots.open()
    snapshots.configure(str(tmp_path), 0)
    assert [response_id for response_id, _ in store.entries()] == ["resp_2", "resp_1", "resp_3"]
    asyncio.run(snapshots.close())
    again = restored(tmp_path)
    assert [response_id for response_id, _ in again.entries()] == ["resp_2", "resp_1", "resp_3"]
    assert again.get("resp_1", "k") == record(1, 20)


def test_ids_deleted_while_no_directory_was_owned_are_not_merged_back(tmp_path):
    """Persistence off and on again to the same directory: the snapshot there still holds what
    was deleted meanwhile; the deletion wins (the tombstones), the rest merges, and a response
    put again under a deleted id (none is, but) is not a tombstone any more."""
    earlier = ResponseStore(10, 1 << 20)
    for n in range(3):
        earlier.put(f"resp_{n}", "k", record(n))
    written(earlier, tmp_path)
    store = ResponseStore(10, 1 << 20)
    snapshots = StoreSnapshots(store, str(tmp_path), 0)
    snapshots.open()
    snapshots.configure("", 0)                             # a reload: off
    assert store.delete("resp_0", "k") and store.delete("resp_1", "k")
    store.put("resp_1", "k", record(1, 30))
    snapshots.configure(str(tmp_path), 0)                  # and on again
    assert [response_id for response_id, _ in store.entries()] == ["resp_2", "resp_1"]
    assert store.get("resp_1", "k") == record(1, 30)
    asyncio.run(snapshots.close())
    assert [response_id for response_id, _ in restored(tmp_path).entries()] == ["resp_2", "resp_1"]


def test_the_tombstones_are_bounded(monkeypatch):
    monkeypatch.setattr("velollmd.api.response_store.MAX_TOMBSTONES", 2)
    store = ResponseStore(10, 1 << 20)
    for n in range(3):
        store.put(f"resp_{n}", "k", record(n))
        store.delete(f"resp_{n}", "k")
    store.load([(f"resp_{n}", "o", record(n)) for n in range(3)])
    assert [response_id for response_id, _ in store.entries()] == ["resp_0"]    # the oldest tombstone went
