"""The runner's batching guarantees, on a random tiny llama and the real CFFI block pool.

Every request that runs batched (joined at random steps, preempted, chunked, cancelled around,
forked for n > 1, served from the prefix cache) produces exactly the tokens it produces alone.
The runner is stepped by hand (`runner.step()`), so each assertion is about one step's plan
or events, never about time.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pytest

from tests.engine.weights import random_metadata, random_tensors, write_random_gguf
from velollmd.config import SchedulerConfig
from velollmd.engine.gguf import read_gguf
from velollmd.engine.kvcache import PagedKVCache
from velollmd.engine.model import Model, ModelConfig
from velollmd.engine.runner import Event, Runner
from velollmd.engine.sampling import SamplingParams
from velollmd.engine.tokenizer import Tokenizer
from velollmd.sched.kvblocks import BlockPool
from velollmd.sched.scheduler import Scheduler

BLOCK_SIZE = 4
GREEDY = SamplingParams(temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> tuple[Model, Tokenizer]:
    """A random 2-layer llama (GQA, vocab 1024) and the tiny vocabulary's tokenizer."""
    path = write_random_gguf(tmp_path_factory.mktemp("runner") / "tiny.gguf", arch="llama", seed=14)
    with read_gguf(path) as gguf:
        tokenizer = Tokenizer.from_gguf(gguf.metadata)
    tensors = random_tensors("llama", 14)
    config = ModelConfig.from_metadata(random_metadata("llama", tensors), tensors)
    return Model(config, tensors.__getitem__), tokenizer


def make_runner(parts, *, num_blocks: int = 256, max_batch_tokens: int = 64, max_running: int = 16,
                num_ctx: int = 256) -> Runner:
    model, tokenizer = parts
    c = model.config
    kv = PagedKVCache(c.n_layer, num_blocks, BLOCK_SIZE, c.n_head_kv, c.head_dim)
    scheduler = Scheduler(SchedulerConfig(block_size=BLOCK_SIZE), max_running,
                          BlockPool(num_blocks, BLOCK_SIZE), reserve_output=False)
    return Runner(model, kv, scheduler, tokenizer, max_batch_tokens=max_batch_tokens, num_ctx=num_ctx,
                  clock=lambda: 0.0)


class Recorder:
    """Events by request id, in arrival order."""

    def __init__(self):
        self.events: dict[str, list[Event]] = defaultdict(list)

    def on(self, request_id: str):
        return self.events[request_id].append

    def tokens(self, request_id: str) -> list[int]:
        return [t for event in self.events[request_id] for t in event.token_ids]

    def finish_reason(self, request_id: str) -> str | None:
        events = self.events.get(request_id)
        return events[-1].finish_reason if events else None

    def done(self, request_ids: Sequence[str]) -> bool:
        return all(self.finish_reason(r) is not None for r in request_ids)


def run_until_done(runner: Runner, recorder: Recorder, request_ids: Sequence[str], max_steps: int = 2000) -> int:
    for num_steps in range(max_steps):
        if recorder.done(request_ids):
            return num_steps
        runner.step()
    raise AssertionError(f"not finished after {max_steps} steps: "
                         f"{[r for r in request_ids if recorder.finish_reason(r) is None]}")


def alone(parts, prompt: Sequence[int], params: SamplingParams, choice_index: int = 0) -> list[int]:
    """The tokens of one request on an otherwise idle runner of its own."""
    runner, recorder = make_runner(parts), Recorder()
    runner.submit("alone", prompt, params, recorder.on("alone"), choice_index=choice_index)
    run_until_done(runner, recorder, ["alone"])
    assert recorder.finish_reason("alone") == "length"
    return recorder.tokens("alone")


def random_prompt(rng: np.random.Generator, num_tokens: int) -> list[int]:
    return rng.integers(3, 1024, size=num_tokens).tolist()


def assert_idle(runner: Runner) -> None:
    """No request left anywhere and every block back in the pool (free or evictable cached)."""
    pool = runner.scheduler.pool
    assert runner.num_requests == 0 and len(pool) == 0
    assert not runner.scheduler.running and not runner.scheduler.waiting
    assert pool.num_free_blocks == pool.num_blocks


# ---- 1. continuous batching ---------------------------------------------------------------------

def random_workload(num_requests: int, seed: int) -> list[tuple[int, str, list[int], SamplingParams]]:
    """(arrival step, id, prompt, params): lengths 1..40 / 1..24, half greedy, half seeded."""
    rng = np.random.default_rng(seed)
    workload = []
    for i in range(num_requests):
        prompt = random_prompt(rng, int(rng.integers(1, 41)))
        max_tokens = int(rng.integers(1, 25))
        params = (SamplingParams(temperature=0.0, max_tokens=max_tokens) if i % 2 == 0 else
                  SamplingParams(temperature=0.9, top_k=50, top_p=0.95, seed=1000 + i, max_tokens=max_tokens))
        workload.append((int(rng.integers(0, 10)), f"r{i}", prompt, params))
    return workload


def test_sixteen_requests_joined_at_random_steps_each_equal_alone(parts):
    workload = random_workload(16, seed=14)
    runner, recorder = make_runner(parts, max_batch_tokens=48), Recorder()
    max_running = 0
    for step in range(2000):
        for arrival, request_id, prompt, params in workload:
            if arrival == step:
                runner.submit(request_id, prompt, params, recorder.on(request_id))
        if step > 10 and recorder.done([w[1] for w in workload]):
            break
        runner.step()
        max_running = max(max_running, len(runner.scheduler.running))
    assert max_running >= 8, "the workload never really ran batched"
    for _, request_id, prompt, params in workload:
        assert recorder.finish_reason(request_id) == "length"
        assert len(recorder.tokens(request_id)) == params.max_tokens
        assert recorder.tokens(request_id) == alone(parts, prompt, params), request_id
    assert_idle(runner)


# ---- 2. cancellation ----------------------------------------------------------------------------

def phase_of(runner: Runner, recorder: Recorder, request_id: str) -> str:
    if request_id not in runner.scheduler.running:
        return "waiting"
    return "decode" if recorder.tokens(request_id) else "prefill"


def test_cancels_in_every_phase_free_every_block(parts):
    rng = np.random.default_rng(2)
    runner, recorder = make_runner(parts, num_blocks=64, max_batch_tokens=8, max_running=4), Recorder()
    live, cancelled, phases = [], set(), defaultdict(int)
    for step in range(60):
        for _ in range(int(rng.integers(0, 3))):
            request_id = f"c{step}-{len(live)}"
            params = SamplingParams(temperature=0.0, max_tokens=int(rng.integers(5, 40)))
            runner.submit(request_id, random_prompt(rng, int(rng.integers(1, 30))), params,
                          recorder.on(request_id))
            live.append(request_id)
        runner.step()
        for request_id in [r for r in live if recorder.finish_reason(r) is None]:
            if rng.random() < 0.15:
                phases[phase_of(runner, recorder, request_id)] += 1
                runner.cancel(request_id)
                runner.cancel(request_id)                   # twice: the second is a no-op
                cancelled.add(request_id)
    runner.cancel(live[0])                                  # long finished or cancelled: a no-op
    run_until_done(runner, recorder, live)
    assert min(phases["waiting"], phases["prefill"], phases["decode"]) >= 1, dict(phases)
    for request_id in live:
        assert recorder.finish_reason(request_id) == ("abort" if request_id in cancelled else "length")
    assert_idle(runner)


def test_a_cancel_before_the_first_step_never_runs(parts):
    runner, recorder = make_runner(parts), Recorder()
    runner.submit("gone", [5, 6, 7], GREEDY, recorder.on("gone"))
    runner.cancel("gone")
    runner.step()
    assert [e.finish_reason for e in recorder.events["gone"]] == ["abort"]
    assert runner.num_tokens_computed == 0
    assert_idle(runner)


# ---- 3. preemption by recompute -----------------------------------------------------------------

def test_a_kv_budget_too_small_for_all_preempts_and_every_request_still_matches_alone(parts):
    rng = np.random.default_rng(3)
    # 8 requests of 12 + 20 tokens need 8 blocks each at the end: 64 blocks; the pool has 20
    workload = [(f"p{i}", random_prompt(rng, 12),
                 SamplingParams(temperature=0.0, max_tokens=20) if i % 2 else
                 SamplingParams(temperature=0.7, seed=i, max_tokens=20)) for i in range(8)]
    runner, recorder = make_runner(parts, num_blocks=20, max_batch_tokens=32, max_running=8), Recorder()
    for request_id, prompt, params in workload:
        runner.submit(request_id, prompt, params, recorder.on(request_id))
    run_until_done(runner, recorder, [w[0] for w in workload])
    assert runner.num_preemptions > 0
    for request_id, prompt, params in workload:
        assert recorder.finish_reason(request_id) == "length"
        assert recorder.tokens(request_id) == alone(parts, prompt, params), request_id
    assert_idle(runner)


def test_a_request_longer_than_the_whole_pool_ends_at_the_pool_size(parts):
    """Alone it can never grow past the pool: it stops there ("length") instead of waiting forever."""
    runner, recorder = make_runner(parts, num_blocks=4), Recorder()
    runner.submit("big", list(range(10, 20)), SamplingParams(temperature=0.0, max_tokens=50), recorder.on("big"))
    run_until_done(runner, recorder, ["big"], max_steps=50)
    assert recorder.finish_reason("big") == "length"
    assert len(recorder.tokens("big")) == 4 * BLOCK_SIZE - 10
    assert_idle(runner)


# ---- 4. chunked prefill -------------------------------------------------------------------------

def test_a_long_prompt_is_chunked_and_every_running_decode_gets_a_token_every_step(parts):
    runner, recorder = make_runner(parts, max_batch_tokens=8), Recorder()
    decoders = ["d0", "d1", "d2"]
    for i, request_id in enumerate(decoders):
        runner.submit(request_id, [20 + i, 30 + i], SamplingParams(temperature=0.0, max_tokens=40),
                      recorder.on(request_id))
    runner.step()                                           # the three short prompts, prefilled
    assert all(len(recorder.tokens(r)) == 1 for r in decoders)
    long_prompt = random_prompt(np.random.default_rng(4), 60)
    runner.submit("long", long_prompt, GREEDY, recorder.on("long"))
    chunks = []
    while not recorder.tokens("long"):
        before = {r: len(recorder.tokens(r)) for r in decoders}
        runner.step()
        plan = {request_id: (start, end) for request_id, start, end in runner.last_plan}
        for request_id in decoders:                         # each decode: one token, this step
            start, end = plan[request_id]
            assert end - start == 1 and len(recorder.tokens(request_id)) == before[request_id] + 1
        chunks.append(plan["long"])
        assert sum(end - start for start, end in plan.values()) <= 8
    # 60 prompt tokens in chunks of 8 - 3 decodes = 5, back to back, the last one sampled
    assert chunks == [(start, min(start + 5, 60)) for start in range(0, 60, 5)]
    run_until_done(runner, recorder, [*decoders, "long"])
    assert recorder.tokens("long") == alone(parts, long_prompt, GREEDY)
    assert_idle(runner)


# ---- 5. prefix cache ----------------------------------------------------------------------------

def test_a_prefix_hit_reuses_blocks_it_compared_token_by_token(parts):
    runner, recorder = make_runner(parts), Recorder()
    prompt = random_prompt(np.random.default_rng(5), 10)          # 2 full blocks + 2 tokens
    runner.submit("first", prompt, GREEDY, recorder.on("first"))
    run_until_done(runner, recorder, ["first"])
    computed = runner.num_tokens_computed
    runner.submit("again", prompt, GREEDY, recorder.on("again"))
    run_until_done(runner, recorder, ["again"])
    assert recorder.events["again"][-1].num_cached_tokens == 8
    assert runner.num_tokens_computed - computed == computed - 8     # the 8 cached were not recomputed
    assert recorder.tokens("again") == recorder.tokens("first") == alone(parts, prompt, GREEDY)


def test_a_cached_block_holding_other_tokens_is_recomputed(parts):
    """What a hash collision leaves: a block found under this prompt's hash that holds other
    tokens' K/V. The token comparison catches it; the engine recomputes from there."""
    runner, recorder = make_runner(parts), Recorder()
    prompt = random_prompt(np.random.default_rng(6), 10)
    runner.submit("first", prompt, GREEDY, recorder.on("first"))
    run_until_done(runner, recorder, ["first"])
    block = runner.scheduler.pool.allocate("peek", prompt).block_table[1]   # the 2nd cached block
    runner.scheduler.pool.free("peek")
    runner.slot_tokens.tokens[block] = [1, 2, 3, 4]                 # another prompt's tokens ...
    runner.kv.k[:, block] = runner.kv.v[:, block] = 7.0            # ... and its K/V
    runner.submit("again", prompt, GREEDY, recorder.on("again"))
    run_until_done(runner, recorder, ["again"])
    assert recorder.events["again"][-1].num_cached_tokens == 4     # block 0 only
    assert recorder.tokens("again") == alone(parts, prompt, GREEDY)


def test_a_stale_slot_of_another_prefix_is_no_hit_even_with_equal_tokens(parts):
    """Block X held tokens x after prefix p (request A). It is then handed to B, whose prompt
    q r x registers X under hash(q r x) before B computes it; B is cancelled. C = B's prompt
    finds X by hash and X's slots hold the tokens x: equal, but computed after p at other
    positions. C must recompute X, not attend to A's K/V."""
    rng = np.random.default_rng(7)
    p, q, r, x = (random_prompt(rng, BLOCK_SIZE) for _ in range(4))
    runner, recorder = make_runner(parts, num_blocks=4, max_batch_tokens=8), Recorder()
    runner.submit("A", p + x, SamplingParams(temperature=0.0, max_tokens=1), recorder.on("A"))
    run_until_done(runner, recorder, ["A"])
    x_block = runner.scheduler.pool.allocate("peek", p + x + [9]).block_table[1]
    runner.scheduler.pool.free("peek")
    prompt = q + r + x + [5]
    runner.submit("B", prompt, GREEDY, recorder.on("B"))
    runner.step()                                           # B computes q r (8 tokens), not x
    assert runner.last_plan == (("B", 0, 8),)
    assert runner.scheduler.pool.block_table("B")[2] == x_block
    runner.cancel("B")
    runner.step()
    params = SamplingParams(temperature=0.0, max_tokens=3)
    runner.submit("C", prompt, params, recorder.on("C"))
    run_until_done(runner, recorder, ["C"])
    assert recorder.tokens("C") == alone(parts, prompt, params)
    assert recorder.events["C"][-1].num_cached_tokens == 8          # q r, not the stale x
    assert_idle(runner)


# ---- 6. n > 1: one prefill, a copy-on-write fork ------------------------------------------------

def peak_blocks_held(runner: Runner, recorder: Recorder, request_ids: Sequence[str]) -> int:
    pool, peak = runner.scheduler.pool, 0
    while not recorder.done(request_ids):
        runner.step()
        peak = max(peak, pool.num_blocks - pool.num_free_blocks)
    return peak


@pytest.mark.parametrize("prompt_len", [12, 14])            # ends on a block boundary, or inside one
def test_n_choices_fork_once_and_equal_seed_plus_i(parts, prompt_len):
    prompt = random_prompt(np.random.default_rng(8), prompt_len)
    params = SamplingParams(temperature=0.8, seed=42, max_tokens=10, n=4)
    ids = [f"n{i}" for i in range(4)]
    forked, recorder = make_runner(parts), Recorder()
    forked.submit_choices(ids, prompt, params, [recorder.on(i) for i in ids])
    peak_forked = peak_blocks_held(forked, recorder, ids)
    separate, recorder_separate = make_runner(parts), Recorder()
    for index, request_id in enumerate(ids):
        separate.submit(request_id, prompt, params, recorder_separate.on(request_id), choice_index=index)
    peak_separate = peak_blocks_held(separate, recorder_separate, ids)
    for index, request_id in enumerate(ids):
        assert recorder.tokens(request_id) == alone(parts, prompt, params, choice_index=index)
        assert recorder.tokens(request_id) == recorder_separate.tokens(request_id)
    assert len({tuple(recorder.tokens(i)) for i in ids}) > 1, "seed + i: the choices differ"
    assert forked.num_tokens_computed == separate.num_tokens_computed - 3 * prompt_len
    assert peak_forked < peak_separate if prompt_len % BLOCK_SIZE == 0 else peak_forked <= peak_separate
    assert_idle(forked)


def test_n_choices_cancelled_before_and_after_the_fork_free_every_block(parts):
    prompt = random_prompt(np.random.default_rng(9), 30)
    params = SamplingParams(temperature=0.8, seed=1, max_tokens=30, n=3)
    runner, recorder = make_runner(parts, max_batch_tokens=8), Recorder()
    early, late = ["e0", "e1", "e2"], ["l0", "l1", "l2"]
    runner.submit_choices(early, prompt, params, [recorder.on(i) for i in early])
    runner.submit_choices(late, prompt[::-1], params, [recorder.on(i) for i in late])
    runner.step()                                           # both prompts still prefilling
    for request_id in early:
        runner.cancel(request_id)
    while not recorder.tokens("l2"):
        runner.step()
    runner.step()                                           # the forked choices decode
    for request_id in late:
        runner.cancel(request_id)
    run_until_done(runner, recorder, early + late)
    assert {recorder.finish_reason(i) for i in early + late} == {"abort"}
    assert all(not recorder.tokens(i) for i in early)
    assert_idle(runner)


def test_more_choices_than_free_slots_run_the_rest_on_their_own(parts):
    prompt = random_prompt(np.random.default_rng(10), 9)
    params = SamplingParams(temperature=0.8, seed=5, max_tokens=6, n=4)
    ids = [f"s{i}" for i in range(4)]
    runner, recorder = make_runner(parts, max_running=2), Recorder()
    runner.submit_choices(ids, prompt, params, [recorder.on(i) for i in ids])
    run_until_done(runner, recorder, ids)
    for index, request_id in enumerate(ids):
        assert recorder.tokens(request_id) == alone(parts, prompt, params, choice_index=index)
    assert_idle(runner)


def test_a_block_grown_by_decoding_forgets_its_last_owner(parts):
    """The same stale slot through growth: S decodes into block X (A's old block, whose last
    slot held S's 4th output token g4, after A's prefix) and is cancelled once g4 filled X's
    slots in the allocator but before its K/V was computed. C = S's prompt + g1..g4 finds X by
    hash; only X's first three slots may count."""
    rng = np.random.default_rng(11)
    s_prompt = random_prompt(rng, 2 * BLOCK_SIZE)
    g = alone(parts, s_prompt, GREEDY)[:4]
    runner, recorder = make_runner(parts, num_blocks=4, max_batch_tokens=16), Recorder()
    a_prompt = random_prompt(rng, BLOCK_SIZE) + random_prompt(rng, BLOCK_SIZE - 1) + g[3:4]
    runner.submit("A", a_prompt, SamplingParams(temperature=0.0, max_tokens=1), recorder.on("A"))
    run_until_done(runner, recorder, ["A"])
    runner.submit("S", s_prompt, GREEDY, recorder.on("S"))
    while len(recorder.tokens("S")) < 4:
        runner.step()
    assert recorder.tokens("S") == g and runner.scheduler.pool.num_tokens("S") == 3 * BLOCK_SIZE
    runner.cancel("S")
    runner.step()
    prompt, params = s_prompt + g + [5], SamplingParams(temperature=0.0, max_tokens=3)
    runner.submit("C", prompt, params, recorder.on("C"))
    run_until_done(runner, recorder, ["C"])
    assert recorder.tokens("C") == alone(parts, prompt, params)
    assert recorder.events["C"][-1].num_cached_tokens == 3 * BLOCK_SIZE - 1
    assert_idle(runner)


def test_events_are_sent_with_the_lock_released_and_a_cancel_takes_no_lock(parts):
    """A consumer's callback (the engine backend encodes chunks there) never holds the lock a
    submit on the event loop waits for; a cancel does not wait for a step at all."""
    runner, held = make_runner(parts), []

    def on_event(event: Event) -> None:
        free = runner._lock.acquire(blocking=False)
        held.append(not free)
        if free:
            runner._lock.release()
    runner.submit("a", [5, 6, 7], GREEDY, on_event)
    runner.step()
    with runner._lock:                                      # a step in progress, seen from the loop
        cancelling = threading.Thread(target=runner.cancel, args=("a",))
        cancelling.start()
        cancelling.join(30)                                 # the bound only ends a hang
        assert not cancelling.is_alive()
    runner.step()
    assert len(held) == 2 and not any(held)                 # a token, then the abort
    assert_idle(runner)
