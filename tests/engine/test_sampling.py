"""Sampling: each stage of the chain against hand-computed values, seeds, logprobs, requests."""
from __future__ import annotations

import math

import numpy as np
import pytest

from velollmd.engine.sampling import (
    Sampler,
    SampleResult,
    SamplingParamError,
    SamplingParams,
    apply_penalties,
    log_softmax,
    make_samplers,
    min_p_ids,
    sample_batch,
    top_k_ids,
    top_p_ids,
)

PROBS = np.array([0.5, 0.3, 0.15, 0.05])                 # (4,) a known distribution
LOGITS = np.log(PROBS).astype(np.float32)                # (4,)


def draw_counts(sampler: Sampler, logits: np.ndarray, draws: int) -> np.ndarray:
    counts = np.zeros(logits.shape[0], dtype=np.int64)  # (vocab,)
    for _ in range(draws):
        counts[sampler.sample(logits, []).token_id] += 1
    return counts


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


# ---- the stages ---------------------------------------------------------------------------------

def test_penalties_follow_llama_cpp_and_openai_by_hand():
    logits = np.array([2.0, -1.0, 0.5, 3.0, 1.0], dtype=np.float32)       # (5,)
    params = SamplingParams(repeat_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25)
    out = apply_penalties(logits, [0, 1, 1, 2, 1], params)
    # token 0 seen once: 2/2 - 0.25 - 0.5; token 1 thrice: -1*2 - 0.75 - 0.5; token 2 once: 0.5/2 - 0.75
    np.testing.assert_allclose(out, [0.25, -3.25, -0.5, 3.0, 1.0], rtol=1e-6)
    assert logits[0] == 2.0                               # the input is not modified


def test_penalty_window_is_the_last_repeat_last_n_tokens():
    logits = np.ones(4, dtype=np.float32)
    window_2 = apply_penalties(logits, [0, 0, 1, 2], SamplingParams(repeat_penalty=2.0, repeat_last_n=2))
    np.testing.assert_allclose(window_2, [1.0, 0.5, 0.5, 1.0])
    whole = apply_penalties(logits, [0, 0, 1, 2], SamplingParams(repeat_penalty=2.0, repeat_last_n=-1))
    np.testing.assert_allclose(whole, [0.5, 0.5, 0.5, 1.0])
    off = apply_penalties(logits, [0, 1], SamplingParams(repeat_penalty=2.0, repeat_last_n=0))
    np.testing.assert_allclose(off, logits)


def test_top_k_keeps_the_k_largest_ties_to_the_lowest_id():
    logits = np.array([1.0, 3.0, 2.0, 3.0, 2.0, 0.0], dtype=np.float32)
    assert top_k_ids(logits, 3).tolist() == [1, 3, 2]
    assert top_k_ids(logits, 1).tolist() == [1]
    assert top_k_ids(logits, 0).tolist() == [1, 3, 2, 4, 0, 5]


@pytest.mark.parametrize("top_p, kept", [(0.0, [0]), (0.3, [0]), (0.7, [0, 1]), (0.9, [0, 1, 2]),
                                         (1.0, [0, 1, 2, 3])])
def test_top_p_keeps_the_shortest_prefix_reaching_the_mass(top_p, kept):
    assert top_p_ids(LOGITS, top_k_ids(LOGITS, 0), top_p).tolist() == kept


def test_top_p_renormalises_over_what_top_k_left():
    # after top_k=2: probabilities 0.625, 0.375; top_p 0.6 keeps only token 0
    assert top_p_ids(LOGITS, top_k_ids(LOGITS, 2), 0.6).tolist() == [0]


@pytest.mark.parametrize("min_p, kept", [(0.0, [0, 1, 2, 3]), (0.2, [0, 1, 2]), (0.5, [0, 1]), (0.9, [0])])
def test_min_p_keeps_tokens_within_a_fraction_of_the_best(min_p, kept):
    assert sorted(min_p_ids(LOGITS, np.arange(4), min_p).tolist()) == kept


def test_the_chain_composes_top_k_top_p_min_p():
    logits = np.log(np.array([0.05, 0.4, 0.3, 0.15, 0.1])).astype(np.float32)
    sampler = Sampler(SamplingParams(top_k=4, top_p=0.9, min_p=0.3), 5)
    # top_k 4 -> {1,2,3,4}; top_p 0.9 of 0.95 -> {1,2,3}; min_p 0.3 * 0.4 = 0.12 -> {1,2,3}
    assert sampler.candidates(logits).tolist() == [1, 2, 3]


def test_logit_bias_is_added_and_minus_inf_is_never_drawn():
    sampler = Sampler(SamplingParams(logit_bias={0: -math.inf, 3: 5.0}, seed=1), 4)
    processed = sampler.process(LOGITS, [])
    assert processed[0] == -np.inf and processed[3] == pytest.approx(LOGITS[3] + 5.0)
    counts = draw_counts(sampler, LOGITS, 2000)
    assert counts[0] == 0 and counts[3] > counts[1]


def test_penalties_come_before_the_bias():
    sampler = Sampler(SamplingParams(repeat_penalty=2.0, logit_bias={0: 1.0}), 2)
    logits = np.array([4.0, 0.0], dtype=np.float32)
    assert sampler.process(logits, [0]).tolist() == [3.0, 0.0]       # 4 / 2 + 1, not (4 + 1) / 2


# ---- greedy and drawing -------------------------------------------------------------------------

def test_greedy_takes_the_argmax_ties_to_the_lowest_id():
    sampler = Sampler(SamplingParams(temperature=0), 5)
    logits = np.array([1.0, 3.0, 2.0, 3.0, 0.0], dtype=np.float32)
    assert [sampler.sample(logits, []).token_id for _ in range(3)] == [1, 1, 1]


def test_greedy_sees_the_penalties():
    sampler = Sampler(SamplingParams(temperature=0, repeat_penalty=4.0), 3)
    logits = np.array([1.0, 3.0, 2.0], dtype=np.float32)
    assert sampler.sample(logits, [1]).token_id == 2


def test_same_seed_same_tokens_other_seed_other_tokens():
    logits = np.zeros(50, dtype=np.float32)               # uniform over 50 tokens

    def tokens(seed):
        sampler = Sampler(SamplingParams(seed=seed), 50)
        return [sampler.sample(logits, []).token_id for _ in range(40)]
    assert tokens(7) == tokens(7)
    assert tokens(7) != tokens(8)


def test_choice_i_of_n_is_seeded_with_seed_plus_i():
    logits = np.zeros(50, dtype=np.float32)
    params = SamplingParams(seed=7, n=3)
    def tokens(sampler):
        return [sampler.sample(logits, []).token_id for _ in range(20)]
    choices = [tokens(s) for s in make_samplers(params, 50)]
    assert choices == [tokens(Sampler(SamplingParams(seed=7 + i), 50)) for i in range(3)]
    assert len({tuple(c) for c in choices}) == 3


def test_drawn_frequencies_match_the_distribution():
    # temperature 0.5 over logits 0.5 * log(p): the tempered distribution is exactly p
    sampler = Sampler(SamplingParams(temperature=0.5, seed=1234), 4)
    counts = draw_counts(sampler, (LOGITS * 0.5).astype(np.float32), 20000)
    assert chi_square(counts, PROBS) < 16.27              # df 3, p = 0.001


def test_drawn_frequencies_after_top_k_are_renormalised():
    sampler = Sampler(SamplingParams(top_k=3, seed=99), 4)
    counts = draw_counts(sampler, LOGITS, 20000)
    assert counts[3] == 0
    assert chi_square(counts[:3], PROBS[:3] / PROBS[:3].sum()) < 13.82   # df 2, p = 0.001


def test_high_temperature_flattens_the_distribution():
    flat = draw_counts(Sampler(SamplingParams(temperature=100.0, seed=3), 4), LOGITS, 4000)
    sharp = draw_counts(Sampler(SamplingParams(temperature=0.2, seed=3), 4), LOGITS, 4000)
    assert flat[3] > 800 and sharp[3] < 10


# ---- logprobs -----------------------------------------------------------------------------------

def test_logprobs_are_of_the_raw_logits_and_sum_to_one():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=100).astype(np.float32) * 3
    params = SamplingParams(temperature=0.3, top_k=5, repeat_penalty=1.5, logit_bias={7: 10.0},
                            logprobs=True, top_logprobs=20, seed=5)
    result = Sampler(params, 100).sample(logits, [1, 2, 3])
    raw = log_softmax(logits)
    assert np.exp(raw).sum() == pytest.approx(1.0, abs=1e-9)
    assert result.logprob == pytest.approx(raw[result.token_id])
    values = [lp for _, lp in result.top_logprobs]
    assert len(values) == 20 and values == sorted(values, reverse=True)
    assert [t for t, _ in result.top_logprobs] == np.argsort(-raw, kind="stable")[:20].tolist()


def test_no_logprobs_unless_asked():
    assert Sampler(SamplingParams(), 4).sample(LOGITS, []).logprob is None
    result = Sampler(SamplingParams(logprobs=True), 4).sample(LOGITS, [])
    assert result.logprob is not None and result.top_logprobs == []


# ---- the batch helper ---------------------------------------------------------------------------

def test_sample_batch_equals_row_by_row():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 30)).astype(np.float32)     # (B, vocab)
    histories = [[1, 2], [3], [4, 4], []]
    params = [SamplingParams(temperature=0, logprobs=True, top_logprobs=3),
              SamplingParams(temperature=0, repeat_penalty=3.0),
              SamplingParams(seed=11, top_p=0.9),
              SamplingParams(temperature=0)]
    batched = sample_batch([Sampler(p, 30) for p in params], logits, histories)
    alone = [Sampler(p, 30).sample(logits[i], histories[i]) for i, p in enumerate(params)]
    assert batched == alone
    assert all(isinstance(r, SampleResult) for r in batched)


def test_sample_batch_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="sample_batch"):
        sample_batch([Sampler(SamplingParams(), 4)], np.zeros((2, 4), np.float32), [[], []])
    with pytest.raises(ValueError, match="shape"):
        Sampler(SamplingParams(), 4).sample(np.zeros(5, np.float32), [])


# ---- from_request -------------------------------------------------------------------------------

def test_openai_chat_body():
    body = {"model": "m", "messages": [], "temperature": 0.2, "top_p": 0.9, "seed": 3, "n": 2,
            "max_tokens": 10, "max_completion_tokens": 20, "stop": "END", "presence_penalty": 0.5,
            "frequency_penalty": -0.5, "logprobs": True, "top_logprobs": 4,
            "logit_bias": {"50256": -100, "7": 2.5}}
    p = SamplingParams.from_request(body, eos_token_ids=[2])
    assert (p.temperature, p.top_p, p.seed, p.n, p.max_tokens) == (0.2, 0.9, 3, 2, 20)
    assert p.stop == ("END",) and p.stop_token_ids == (2,)
    assert (p.presence_penalty, p.frequency_penalty, p.logprobs, p.top_logprobs) == (0.5, -0.5, True, 4)
    assert p.logit_bias == {50256: -100.0, 7: 2.5}


def test_completions_logprobs_integer_is_the_top_count():
    p = SamplingParams.from_request({"prompt": "x", "logprobs": 3})
    assert p.logprobs and p.top_logprobs == 3


def test_llama_cpp_extras_and_ignore_eos():
    body = {"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1, "repeat_last_n": 32,
            "logit_bias": [[5, False], [6, 1.5]], "stop_token_ids": [9], "ignore_eos": True}
    p = SamplingParams.from_request(body, eos_token_ids=[2])
    assert (p.top_k, p.min_p, p.repeat_penalty, p.repeat_last_n) == (40, 0.05, 1.1, 32)
    assert p.logit_bias == {5: -math.inf, 6: 1.5} and p.stop_token_ids == (9,)


def test_ollama_options_win_over_top_level_names():
    body = {"temperature": 0.9, "max_tokens": 5,
            "options": {"num_predict": 64, "temperature": 0.1, "top_k": 20, "top_p": 0.5, "min_p": 0.1,
                        "repeat_penalty": 1.2, "repeat_last_n": -1, "presence_penalty": 0.3,
                        "frequency_penalty": 0.4, "seed": 42, "stop": ["\n\n", ""], "mirostat": 0}}
    p = SamplingParams.from_request(body)
    assert (p.max_tokens, p.temperature, p.top_k, p.top_p, p.min_p) == (64, 0.1, 20, 0.5, 0.1)
    assert (p.repeat_penalty, p.repeat_last_n, p.presence_penalty, p.frequency_penalty) == (1.2, -1, 0.3, 0.4)
    assert p.seed == 42 and p.stop == ("\n\n",)


@pytest.mark.parametrize("num_predict", [-1, -2])
def test_ollama_negative_num_predict_means_no_limit(num_predict):
    defaults = SamplingParams(max_tokens=128)
    body = {"max_tokens": 5, "options": {"num_predict": num_predict}}
    assert SamplingParams.from_request(body, defaults=defaults).max_tokens is None


def test_absent_fields_keep_the_defaults_and_seed_minus_one_is_random():
    defaults = SamplingParams(temperature=0.8, top_k=40, repeat_penalty=1.1)
    p = SamplingParams.from_request({"top_p": 0.5, "seed": -1}, defaults=defaults)
    assert (p.temperature, p.top_k, p.repeat_penalty, p.top_p, p.seed) == (0.8, 40, 1.1, 0.5, None)


@pytest.mark.parametrize("body, param", [
    ({"top_p": -0.1}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": 30}, "logprobs"),
    ({"n": 0}, "n"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"top_k": -2}, "top_k"),
    ({"min_p": 1.5}, "min_p"),
    ({"repeat_penalty": 0}, "repeat_penalty"),
    ({"stop": [1]}, "stop"),
    ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"logit_bias": {"1": "big"}}, "logit_bias"),
    ({"logit_bias": {"99": 1}}, "logit_bias"),
    ({"ignore_eos": "yes"}, "ignore_eos"),
    ({"options": []}, "options"),
    ({"options": {"top_p": 2}}, "options.top_p"),
    ({"options": {"num_predict": "x"}}, "options.num_predict"),
    ({"options": {"repeat_last_n": -5}}, "options.repeat_last_n"),
    ({"options": {"stop": "x", "seed": True}}, "options.seed"),
])
def test_bad_fields_raise_naming_the_field(body, param):
    with pytest.raises(SamplingParamError) as caught:
        SamplingParams.from_request(body, vocab_size=50)
    assert caught.value.param == param and isinstance(caught.value, ValueError)
    assert f"'{param}'" in str(caught.value)


def test_direct_construction_is_validated_too():
    with pytest.raises(SamplingParamError, match="top_p"):
        SamplingParams(top_p=-0.5)
    with pytest.raises(SamplingParamError, match="logit_bias"):
        Sampler(SamplingParams(logit_bias={10: 1.0}), 4)


def test_a_tiny_temperature_draws_the_argmax_without_overflow():
    sampler = Sampler(SamplingParams(temperature=1e-30, seed=0), 4)
    logits = np.array([30.0, 29.0, -5.0, 31.0], dtype=np.float32)
    assert {sampler.sample(logits, []).token_id for _ in range(20)} == {3}


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.999, 0.99999])
def test_top_p_over_a_large_vocab_equals_the_full_sort(top_p):
    logits = (np.random.default_rng(5).normal(size=5000) * 2).astype(np.float32)   # (5000,)
    sampler = Sampler(SamplingParams(top_p=top_p), 5000)
    full = np.sort(top_p_ids(logits, top_k_ids(logits, 0), top_p))
    assert sampler.candidates(logits).tolist() == full.tolist()
    assert 0 < full.size < 5000


def test_top_p_zero_draws_the_most_likely_token_as_openai_and_llama_server_allow():
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.0, seed=5), 4)
    logits = np.array([1.0, 3.0, 2.9, -1.0], dtype=np.float32)
    assert {sampler.sample(logits, []).token_id for _ in range(30)} == {1}
    assert SamplingParams.from_request({"top_p": 0}, vocab_size=50).top_p == 0
