"""The engine's prompt logprobs (echo with logprobs, vLLM's prompt_logprobs) against a dense
numpy reference: each prompt token's logprob is the log-softmax, at the position before it, of
the logits one forward over the whole prompt alone gives, and its top alternatives are that
row's largest. Checked with the prompt chunked (longer than max_batch_tokens), batched beside
other requests, and asked twice (the second finds it in the prefix cache, whose positions have
no logits: the runner computes them again). Real tiny model, real CFFI block pool; the runner
is stepped by hand."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.engine.test_runner import BLOCK_SIZE, GREEDY, Recorder, make_runner, parts, random_prompt, run_until_done
from velollmd.engine.kvcache import PagedKVCache
from velollmd.engine.model import Batch
from velollmd.engine.sampling import SamplingParams, log_softmax

__all__ = ["parts"]             # the module fixture, shared with the runner's tests
TOP = 3
ASKING = dataclasses.replace(GREEDY, max_tokens=2, prompt_logprobs=TOP)


def dense_reference(parts, prompt: list[int]) -> np.ndarray:
    """log_softmax of the one-sequence forward's logits at every prompt position: (n, n_vocab)."""
    model, _ = parts
    c, num_tokens = model.config, len(prompt)
    num_blocks = -(-num_tokens // BLOCK_SIZE)
    kv = PagedKVCache(c.n_layer, num_blocks, BLOCK_SIZE, c.n_head_kv, c.head_dim)
    batch = Batch.build(np.asarray(prompt, np.int32), np.arange(num_tokens, dtype=np.int32), [num_tokens],
                        [list(range(num_blocks))], [0], np.arange(num_tokens, dtype=np.int64), BLOCK_SIZE)
    return log_softmax(model.forward(batch, kv))


def assert_matches_reference(parts, prompt: list[int], prompt_logprobs: tuple) -> None:
    reference = dense_reference(parts, prompt)
    assert len(prompt_logprobs) == len(prompt) and prompt_logprobs[0] is None
    for position, result in enumerate(prompt_logprobs[1:]):
        row, token_id = reference[position], prompt[position + 1]
        assert result.token_id == token_id
        assert result.logprob == pytest.approx(row[token_id], abs=2e-4)
        assert result.rank == int(np.count_nonzero(row >= row[token_id] - 1e-9)) or \
            abs(np.sort(row)[::-1][result.rank - 1] - row[token_id]) < 2e-4      # a near-tie may swap
        top_ids = [t for t, _ in result.top_logprobs]
        assert len(top_ids) == TOP
        assert [lp for _, lp in result.top_logprobs] == pytest.approx(np.sort(row)[::-1][:TOP], abs=2e-4)
        assert set(top_ids) <= set(np.argsort(-row)[:TOP + 1].tolist())


def prompt_logprobs_of(recorder: Recorder, request_id: str) -> tuple:
    carrying = [e.prompt_logprobs for e in recorder.events[request_id] if e.prompt_logprobs is not None]
    assert len(carrying) == 1, "the prompt logprobs come once, with the first event"
    return carrying[0]


def test_a_chunked_prompt_gets_every_tokens_logprob_as_the_dense_forward_gives_it(parts):
    runner, recorder = make_runner(parts, max_batch_tokens=16), Recorder()
    prompt = random_prompt(np.random.default_rng(1), 45)          # 3 chunks and a bit
    runner.submit("long", prompt, ASKING, recorder.on("long"))
    run_until_done(runner, recorder, ["long"])
    assert_matches_reference(parts, prompt, prompt_logprobs_of(recorder, "long"))
    assert len(recorder.tokens("long")) == 2                     # and it generated as asked


def test_batched_beside_other_requests_the_logprobs_and_their_tokens_are_unchanged(parts):
    rng = np.random.default_rng(2)
    runner, recorder = make_runner(parts, max_batch_tokens=24), Recorder()
    others = {f"other-{i}": random_prompt(rng, 10 + 7 * i) for i in range(3)}
    for request_id, prompt in others.items():
        runner.submit(request_id, prompt, GREEDY, recorder.on(request_id))
    runner.step()                                                  # the others are running
    prompt = random_prompt(rng, 30)
    runner.submit("asking", prompt, ASKING, recorder.on("asking"))
    run_until_done(runner, recorder, ["asking", *others])
    assert_matches_reference(parts, prompt, prompt_logprobs_of(recorder, "asking"))
    for request_id, other in others.items():
        alone_runner, alone_recorder = make_runner(parts), Recorder()
        alone_runner.submit("alone", other, GREEDY, alone_recorder.on("alone"))
        run_until_done(alone_runner, alone_recorder, ["alone"])
        assert recorder.tokens(request_id) == alone_recorder.tokens("alone")
        assert all(e.prompt_logprobs is None for e in recorder.events[request_id])


def test_a_prompt_found_in_the_prefix_cache_is_computed_again_for_its_logprobs(parts):
    runner, recorder = make_runner(parts, max_batch_tokens=16), Recorder()
    prompt = random_prompt(np.random.default_rng(3), 26)
    runner.submit("plain", prompt, GREEDY, recorder.on("plain"))
    run_until_done(runner, recorder, ["plain"])
    runner.submit("again", prompt, GREEDY, recorder.on("again"))
    run_until_done(runner, recorder, ["again"])
    assert recorder.events["again"][-1].num_cached_tokens > 0     # the prefix cache does hold it
    runner.submit("asking", prompt, ASKING, recorder.on("asking"))
    run_until_done(runner, recorder, ["asking"])
    assert_matches_reference(parts, prompt, prompt_logprobs_of(recorder, "asking"))
    assert recorder.events["asking"][-1].num_cached_tokens == 0
    assert recorder.tokens("asking") == recorder.tokens("plain")[:2]
    runner.submit("after", prompt, GREEDY, recorder.on("after"))   # the shared blocks still serve
    run_until_done(runner, recorder, ["after"])
    assert recorder.tokens("after") == recorder.tokens("plain")


def test_without_the_field_no_prompt_logprobs_are_computed(parts):
    runner, recorder = make_runner(parts), Recorder()
    runner.submit("plain", random_prompt(np.random.default_rng(4), 12), GREEDY, recorder.on("plain"))
    run_until_done(runner, recorder, ["plain"])
    assert all(e.prompt_logprobs is None for e in recorder.events["plain"])


def test_prompt_logprobs_beyond_20_alternatives_are_refused():
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=21)


WATCHING = dataclasses.replace(GREEDY, max_tokens=6, logprobs=True, top_logprobs=5)


def reader_events(parts, prefix: list[int], reader_prompt: list[int], *, beside_asking: bool) -> list:
    """A request whose prompt extends `prefix`, found in the prefix cache (written by a plain
    request of its own in a short chunk): its tokens and logprobs, alone or admitted while a
    prompt-logprob request recomputes that cached prefix in a long batch beside a filler."""
    runner, recorder = make_runner(parts, max_batch_tokens=64), Recorder()
    runner.submit("plain", prefix, GREEDY, recorder.on("plain"))   # 12 rows: written by the decode kernel
    run_until_done(runner, recorder, ["plain"])
    if beside_asking:
        filler = random_prompt(np.random.default_rng(8), 20)      # 12 + 20 rows: written by OpenBLAS
        runner.submit("filler", filler, GREEDY, recorder.on("filler"))
        runner.submit("asking", prefix, dataclasses.replace(ASKING, max_tokens=8), recorder.on("asking"))
        runner.step()
        assert ("asking", 0, len(prefix)) in [(r, s, e) for r, s, e in runner.last_plan]
    runner.submit("reader", reader_prompt, WATCHING, recorder.on("reader"))
    run_until_done(runner, recorder, ["reader"])
    assert recorder.events["reader"][-1].num_cached_tokens >= len(prefix) - BLOCK_SIZE
    if beside_asking:
        run_until_done(runner, recorder, ["asking", "filler"])
    return [(r.token_id, r.logprob, r.top_logprobs) for e in recorder.events["reader"] for r in e.logprobs]


def test_recomputing_a_shared_cached_prefix_leaves_its_readers_bit_for_bit_unchanged(parts):
    rng = np.random.default_rng(7)
    prefix = random_prompt(rng, 12)
    reader_prompt = prefix + random_prompt(rng, 5)
    alone_events = reader_events(parts, prefix, reader_prompt, beside_asking=False)
    assert len(alone_events) == WATCHING.max_tokens
    assert reader_events(parts, prefix, reader_prompt, beside_asking=True) == alone_events
