"""The runner's batching guarantees, on a random tiny llama and the real CFFI block pool.

Every request that runs batched (joined at random steps, preempted, chunked, cancelled around,
forked for n > 1, served from the prefix cache) produces exactly the tokens it produces alone.
The runner is stepped by hand (`runner.step()`), so each assertion is about one step's plan
or events, never about time.
"""
from __future__ import annotations

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
