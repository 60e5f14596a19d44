"""The Responses store's bounds: by count and by bytes, least recently used first, per key."""
import json

from velollmd.api.response_store import ResponseStore


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
