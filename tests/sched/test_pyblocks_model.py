"""Randomized differential test: the C pool and the pure-Python model must agree exactly."""
import random

import pytest

from tests.sched.pyblocks import PyBlockPool
from velollmd.sched.kvblocks import BlockPool

BLOCK_SIZE = 4
PREFIXES = [[p * 1000 + i for i in range(12)] for p in range(3)]  # shared system prompts


def random_prompt(rng):
    prefix = rng.choice(PREFIXES)[:rng.randrange(0, 13)]
    tail = [rng.randrange(50) for _ in range(rng.randrange(0 if prefix else 1, 10))]
    return prefix + tail


def random_op(rng, live, next_id):
    """One operation as (name, args); ids are ints so both pools see the same keys."""
    kind = rng.choices(["allocate", "append", "step", "fork", "free", "find"], [3, 3, 1, 1, 3, 1])[0]
    if kind in ("append", "step", "fork", "free") and not live:
        kind = "allocate"
    if kind == "allocate":
        return "allocate", (next_id, random_prompt(rng), rng.choice([0, 0, 2, 5]))
    if kind == "append":
        return "append_tokens", (rng.choice(live), [rng.randrange(50) for _ in range(rng.randrange(1, 7))])
    if kind == "step":        # one decode step over some live requests
        batch = rng.sample(live, rng.randrange(1, len(live) + 1))
        return "append_step", (batch, [rng.randrange(50) for _ in batch])
    if kind == "fork":        # 1 to 3 children in one call
        return "fork", (rng.choice(live), *[(next_id, n) for n in range(rng.randrange(1, 4))])
    if kind == "free":
        return "free", (rng.choice(live),)
    return "find_cached_prefix", (random_prompt(rng),)


def snapshot(pool, live):
    return (pool.num_free_blocks, pool.num_cached_blocks, len(pool), pool.pop_copies(),
            [pool.ref_cnt(b) for b in range(pool.num_blocks)],
            {r: (pool.block_table(r), pool.num_tokens(r)) for r in live})


@pytest.mark.parametrize("seed", range(25))
def test_cffi_pool_matches_python_model(seed):
    rng = random.Random(seed)
    num_blocks = rng.choice([10, 16, 32])
    c_pool, py_pool = BlockPool(num_blocks, BLOCK_SIZE), PyBlockPool(num_blocks, BLOCK_SIZE)
    live, next_id = [], 0
    for step in range(300):
        name, args = random_op(rng, live, next_id)
        c_result = getattr(c_pool, name)(*args)
        assert c_result == getattr(py_pool, name)(*args), (seed, step, name, args)
        if name == "allocate" and c_result is not None:
            live.append(next_id)
        if name == "fork":
            live.extend(args[1:])
        if name == "free":
            live.remove(args[0])
        next_id += 1
        assert snapshot(c_pool, live) == snapshot(py_pool, live), (seed, step, name, args)
    assert sum(c_pool.ref_cnt(b) > 0 for b in range(num_blocks)) + c_pool.num_free_blocks == num_blocks
