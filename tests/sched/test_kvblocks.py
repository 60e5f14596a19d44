"""Exact block-id orders of the allocator, for the C pool and its pure-Python model alike."""
import array

import numpy as np
import pytest

from tests.sched.pyblocks import PyBlockPool
from tests.sched.pyblocks import hash_block as py_hash_block
from velollmd.sched.kvblocks import ROOT_HASH, BlockPool, hash_block


@pytest.fixture(params=[BlockPool, PyBlockPool], ids=["cffi", "python"])
def pool_cls(request):
    return request.param


def tokens(start, n):
    return list(range(start, start + n))


def test_fresh_blocks_come_in_id_order(pool_cls):
    pool = pool_cls(8, block_size=4)
    assert pool.allocate("a", tokens(0, 5)).block_table == [0, 1]
    assert pool.allocate("b", tokens(100, 9)).block_table == [2, 3, 4]
    assert pool.num_free_blocks == 3
    assert pool.usage() == pytest.approx(5 / 8)


def test_free_list_is_lifo(pool_cls):
    pool = pool_cls(8, block_size=4)
    for name, start in (("a", 0), ("b", 10), ("c", 20)):
        pool.allocate(name, tokens(start, 3))      # partial blocks: never hashed
    pool.free("a")
    pool.free("c")
    assert pool.allocate("d", tokens(30, 3)).block_table == [2]
    assert pool.allocate("e", tokens(40, 3)).block_table == [0]
    assert pool.allocate("f", tokens(50, 3)).block_table == [3]


def test_request_blocks_are_freed_tail_first(pool_cls):
    pool = pool_cls(8, block_size=4)
    pool.allocate("a", [1], num_extra_tokens=11)    # reserved, unhashed: [0, 1, 2]
    pool.free("a")                                  # pushes 2, 1, 0: pops 0, 1, 2
    assert pool.allocate("b", [1], num_extra_tokens=7).block_table == [0, 1]


def test_cached_blocks_evicted_lru_tail_first_after_free_list(pool_cls):
    pool = pool_cls(5, block_size=4)
    prompt_a, prompt_b = tokens(0, 8), tokens(100, 8)
    assert pool.allocate("a", prompt_a).block_table == [0, 1]
    assert pool.allocate("b", prompt_b).block_table == [2, 3]
    pool.free("a")                                  # LRU: 1, 0
    pool.free("b")                                  # LRU: 1, 0, 3, 2
    assert (pool.num_free_blocks, pool.num_cached_blocks) == (5, 4)
    assert pool.allocate("c", tokens(200, 4)).block_table == [4]  # never-hashed block first
    assert pool.allocate("d", tokens(300, 4)).block_table == [1]  # then evict a's tail
    assert pool.find_cached_prefix(prompt_a + [9]) == 4
    assert pool.allocate("e", tokens(400, 4)).block_table == [0]
    assert pool.find_cached_prefix(prompt_a + [9]) == 0
    assert pool.find_cached_prefix(prompt_b + [9]) == 8
    assert pool.allocate("f", [7, 7], num_extra_tokens=6).block_table == [3, 2]
    assert pool.num_free_blocks == 0
    assert pool.allocate("g", [1]) is None


def test_prefix_hit_lengths_leave_one_token_to_compute(pool_cls):
    pool = pool_cls(16, block_size=4)
    prompt = tokens(0, 10)
    assert pool.allocate("a", prompt).num_cached_tokens == 0
    assert [pool.find_cached_prefix(prompt[:n]) for n in (4, 5, 8, 9, 10)] == [0, 4, 4, 8, 8]
    assert pool.find_cached_prefix([99] + prompt[1:]) == 0
    hit = pool.allocate("b", prompt[:8] + [7, 7])
    assert (hit.block_table, hit.num_cached_tokens) == ([0, 1, 3], 8)
    full_hit = pool.allocate("c", prompt[:8])       # fully cached: last block recomputed
    assert (full_hit.block_table, full_hit.num_cached_tokens) == ([0, 4], 4)
    assert [pool.ref_cnt(b) for b in range(5)] == [3, 2, 1, 1, 1]
    assert pool.num_cached_blocks == 2              # block 4 duplicates block 1: not registered


def test_freed_cached_blocks_are_revived_by_a_hit(pool_cls):
    pool = pool_cls(4, block_size=4)
    pool.allocate("a", tokens(0, 8))
    pool.free("a")
    hit = pool.allocate("b", tokens(0, 9))
    assert (hit.block_table, hit.num_cached_tokens) == ([0, 1, 2], 8)
    assert pool.num_free_blocks == 1


def test_generated_tokens_become_cached_when_a_block_fills(pool_cls):
    pool = pool_cls(8, block_size=4)
    pool.allocate("a", tokens(0, 3))
    assert pool.append_tokens("a", [3, 4])
    assert pool.num_cached_blocks == 1
    assert pool.find_cached_prefix(tokens(0, 5)) == 4


def test_fork_shares_blocks_and_copies_a_shared_partial_block_on_write(pool_cls):
    pool = pool_cls(8, block_size=4)
    pool.allocate("a", tokens(0, 6))                # [0, 1], block 1 half full
    pool.fork("a", "b")
    assert [pool.ref_cnt(b) for b in (0, 1)] == [2, 2]
    assert pool.append_tokens("b", [50])
    assert pool.block_table("b") == [0, 2]
    assert pool.pop_copies() == [(1, 2)]
    assert pool.append_tokens("a", [60])            # now private again: written in place
    assert pool.block_table("a") == [0, 1]
    assert pool.pop_copies() == []
    assert [pool.ref_cnt(b) for b in (0, 1, 2)] == [2, 1, 1]
    assert pool.append_tokens("b", [51, 52])        # fills block 2, grows into block 3
    assert pool.block_table("b") == [0, 2, 3]
    assert pool.num_tokens("b") == 9 and pool.num_tokens("a") == 7


def test_fork_at_block_boundary_needs_no_copy(pool_cls):
    pool = pool_cls(8, block_size=4)
    pool.allocate("a", tokens(0, 8))
    pool.fork("a", "b")
    assert pool.append_tokens("b", [1])
    assert pool.block_table("b") == [0, 1, 2]
    assert pool.pop_copies() == []
    pool.free("a")
    pool.free("b")
    assert pool.num_free_blocks == 8


def test_fork_into_several_children_in_one_call(pool_cls):
    pool = pool_cls(8, block_size=4)
    pool.allocate("a", tokens(0, 6))
    pool.fork("a", "b", "c", "d")
    assert [pool.ref_cnt(b) for b in (0, 1)] == [4, 4]
    assert all(pool.block_table(r) == [0, 1] and pool.num_tokens(r) == 6 for r in "bcd")
    assert pool.append_tokens("c", [7]) and pool.append_tokens("d", [8])
    assert pool.pop_copies() == [(1, 2), (1, 3)]
    for request_id in "abcd":
        pool.free(request_id)
    assert pool.num_free_blocks == 8 and len(pool) == 0


@pytest.mark.parametrize("child_ids", [(), ("b", "b"), ("a",), ("c", "a")])
def test_fork_rejects_missing_repeated_or_live_child_ids_and_changes_nothing(pool_cls, child_ids):
    pool = pool_cls(8, block_size=4)
    pool.allocate("a", tokens(0, 6))
    with pytest.raises(ValueError):
        pool.fork("a", *child_ids)
    assert len(pool) == 1 and pool.ref_cnt(0) == 1


def test_append_step_grows_each_request_by_one_token_and_reports_who_did_not_fit(pool_cls):
    pool = pool_cls(3, block_size=4)
    pool.allocate("a", tokens(0, 4))                # block 0, full
    pool.allocate("b", tokens(10, 3))               # block 1, one slot left
    pool.fork("b", "c")                             # c shares block 1
    assert pool.append_step(["b", "c", "a"], [13, 23, 4]) == ["a"]
    assert pool.pop_copies() == [(1, 2)]            # b wrote first into the shared block: copied
    assert pool.block_table("b") == [2] and pool.block_table("c") == [1]   # c then had it alone
    assert pool.block_table("a") == [0] and pool.num_tokens("a") == 4   # no block left: unchanged
    assert [pool.num_tokens(r) for r in "bc"] == [4, 4]


def test_append_step_with_an_unknown_request_changes_nothing(pool_cls):
    pool = pool_cls(4, block_size=4)
    pool.allocate("a", tokens(0, 2))
    with pytest.raises(KeyError):
        pool.append_step(["a", "ghost"], [1, 2])
    assert pool.num_tokens("a") == 2
    with pytest.raises(ValueError):
        pool.append_step(["a"], [1, 2])


def test_append_that_does_not_fit_changes_nothing(pool_cls):
    pool = pool_cls(2, block_size=4)
    pool.allocate("a", tokens(0, 4))
    assert pool.append_tokens("a", tokens(4, 4))
    assert not pool.append_tokens("a", [8])
    assert (pool.block_table("a"), pool.num_tokens("a")) == ([0, 1], 8)
    assert not pool.append_tokens("a", tokens(0, 100))


def test_reserved_slots_absorb_appends(pool_cls):
    pool = pool_cls(4, block_size=4)
    assert pool.allocate("a", [1, 2], num_extra_tokens=6).block_table == [0, 1]
    assert pool.append_tokens("a", tokens(3, 6))
    assert pool.block_table("a") == [0, 1] and pool.num_free_blocks == 2


def test_allocation_that_does_not_fit_returns_none_and_changes_nothing(pool_cls):
    pool = pool_cls(3, block_size=4)
    pool.allocate("a", tokens(0, 8))
    assert pool.allocate("b", tokens(100, 8)) is None
    assert pool.allocate("c", tokens(0, 1000)) is None
    assert "b" not in pool and pool.num_free_blocks == 1 and len(pool) == 1
    assert pool.allocate("b", tokens(0, 8) + [5]).block_table == [0, 1, 2]


def test_errors_are_exceptions(pool_cls):
    pool = pool_cls(4, block_size=4)
    pool.allocate("a", [1])
    with pytest.raises(ValueError):
        pool.allocate("a", [1])
    with pytest.raises(ValueError):
        pool.allocate("b", [])
    with pytest.raises(ValueError):
        pool.allocate("b", [1], num_extra_tokens=-1)
    with pytest.raises(ValueError):
        pool.fork("a", "a")
    for call in (pool.free, pool.block_table, pool.num_tokens):
        with pytest.raises(KeyError):
            call("nope")
    with pytest.raises(KeyError):
        pool.append_tokens("nope", [1])
    with pytest.raises(ValueError):
        pool.ref_cnt(4)
    with pytest.raises(ValueError):
        pool_cls(0)


def test_buffers_and_lists_give_the_same_result():
    by_list, by_buffer = BlockPool(8, 4), BlockPool(8, 4)
    by_list.allocate("a", tokens(0, 8))
    by_buffer.allocate("a", np.arange(8, dtype=np.int32))  # (8,) int32, zero-copy
    assert by_buffer.find_cached_prefix(array.array("i", tokens(0, 9))) == 8
    assert by_buffer.find_cached_prefix(np.arange(9, dtype=np.int64)) == 8
    assert by_list.block_table("a") == by_buffer.block_table("a")


def test_c_and_python_hashes_agree():
    for parent, block in [(ROOT_HASH, tokens(0, 16)), (12345, [-1, 2**31 - 1, 0]), (0, [])]:
        assert hash_block(parent, block) == py_hash_block(parent, block)
    assert hash_block(ROOT_HASH, [1, 2]) != hash_block(ROOT_HASH, [2, 1])


def test_allocate_without_reading_back_the_table_still_allocates_and_finds_the_prefix():
    pool = BlockPool(8, block_size=4)
    assert pool.allocate("a", tokens(0, 9), with_table=False) == ((), 0)
    assert pool.block_table("a") == [0, 1, 2]
    pool.free("a")
    assert pool.allocate("b", tokens(0, 9), num_extra_tokens=4, with_table=False) == ((), 8)
    assert len(pool.block_table("b")) == 4
