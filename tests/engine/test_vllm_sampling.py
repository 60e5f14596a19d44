"""vLLM's extras in the engine's sampler: guided_choice's constraint (its mask against every
token checked one by one, sampled outputs always one of the choices), min_tokens (the end
tokens masked out, stop strings not looked for, until that many tokens) and
include_stop_str_in_output."""
from __future__ import annotations

import numpy as np
import pytest

from tests.engine.test_json_constraint import END_IDS, TOKENIZER, VOCAB, generate
from velollmd.engine.choice_constraint import ChoiceConstraint
from velollmd.engine.detokenize import TextStream
from velollmd.engine.json_constraint import JsonVocab
from velollmd.engine.sampling import Sampler, SamplingParamError, SamplingParams

CHOICES = ("ab", "a", "true", "null", 'x"y')


def reference_allowed(written: bytes, choices=CHOICES) -> np.ndarray:
    """(vocab,) bool from scratch: a token is allowed when the text with its bytes is still a
    prefix of a choice; the end tokens when the text is a choice."""
    encoded = [c.encode() for c in choices]
    allowed = np.zeros(VOCAB, bool)
    for token_id in range(TOKENIZER.vocab_size):
        data = TOKENIZER.token_bytes(token_id)
        if token_id in END_IDS:
            allowed[token_id] = written in encoded
        elif not TOKENIZER.is_special(token_id) and data:
            allowed[token_id] = any(c.startswith(written + data) for c in encoded)
    return allowed


@pytest.mark.parametrize("written", ["", "a", "ab", "t", "tr", "true", "nu", "x", 'x"'])
def test_the_choice_mask_is_every_token_checked_one_by_one(written):
    constraint = ChoiceConstraint(JsonVocab(TOKENIZER, VOCAB), END_IDS, CHOICES)
    constraint.written = written.encode()
    expected = reference_allowed(written.encode())
    assert np.array_equal(constraint.mask(), expected)
    assert [constraint.allows(t) for t in range(TOKENIZER.vocab_size)] == expected[:TOKENIZER.vocab_size].tolist()


class CountingDict(dict):
    """A dict that counts its get() calls."""
    num_gets = 0

    def get(self, key, default=None):
        self.num_gets += 1
        return super().get(key, default)


def test_a_long_choice_costs_the_mask_lookups_as_long_as_a_token_not_as_the_choice():
    """A guided_choice text may be long (a client's whole paragraph): the mask looks up only
    what a token can add (no token is longer than the vocabulary's longest), never each prefix
    of the rest of a choice (quadratic in its length, which held the engine's step loop)."""
    vocab = JsonVocab(TOKENIZER, VOCAB).built()
    vocab.ids_by_bytes = CountingDict(vocab.ids_by_bytes)
    choices = ("ab" * 50_000, "a", "b" * 20_000)
    constraint = ChoiceConstraint(vocab, END_IDS, choices)
    longest = int(vocab.length.max())
    for written in (b"", b"a", b"ab" * 300, b"b" * 19_999, b"b" * 20_000):
        constraint.written = written
        vocab.ids_by_bytes.num_gets = 0
        assert np.array_equal(constraint.mask(), reference_allowed(written, choices))
        assert vocab.ids_by_bytes.num_gets <= len(choices) * longest


@pytest.mark.parametrize("temperature", [0, 1.0, 2.0])
@pytest.mark.parametrize("seed", range(8))
def test_a_sampled_answer_is_exactly_one_of_the_choices_then_an_end_token(seed, temperature):
    params = SamplingParams(choices=CHOICES, stop_token_ids=END_IDS, temperature=temperature, seed=seed)
    sampler = Sampler(params, VOCAB, json_vocab=JsonVocab(TOKENIZER, VOCAB))
    tokens, text = generate(sampler, np.random.default_rng(seed), 20, False)
    assert tokens[-1] in END_IDS and text.decode() in CHOICES


def test_the_choices_are_read_from_either_vllm_spelling_and_need_an_end_token():
    for body in ({"guided_choice": ["yes", "no", "yes"]}, {"structured_outputs": {"choice": ["yes", "no"]}}):
        params = SamplingParams.from_request(body, eos_token_ids=END_IDS)
        assert params.choices == ("yes", "no")
    with pytest.raises(SamplingParamError) as info:
        SamplingParams.from_request({"guided_choice": ["yes"], "ignore_eos": True}, eos_token_ids=END_IDS)
    assert info.value.param == "guided_choice"
    with pytest.raises(SamplingParamError) as info:
        SamplingParams.from_request({"stop_token_ids": [VOCAB]}, eos_token_ids=END_IDS, vocab_size=VOCAB)
    assert info.value.param == "stop_token_ids"


def eos_prone_logits(rng: np.random.Generator) -> np.ndarray:
    """Random logits where an end token is by far the most likely."""
    logits = rng.normal(size=VOCAB).astype(np.float32)                         # (vocab,)
    logits[END_IDS[0]] = 50.0
    return logits


@pytest.mark.parametrize("temperature", [0, 1.0])
@pytest.mark.parametrize("min_tokens", [1, 5])
def test_min_tokens_holds_the_end_tokens_back_then_lets_them_end_it(min_tokens, temperature):
    params = SamplingParams(min_tokens=min_tokens, stop_token_ids=END_IDS, temperature=temperature, seed=3)
    sampler, rng = Sampler(params, VOCAB), np.random.default_rng(0)
    drawn = [sampler.sample(eos_prone_logits(rng), []).token_id for _ in range(min_tokens + 1)]
    assert not set(drawn[:min_tokens]) & set(END_IDS) and drawn[min_tokens] == END_IDS[0]
    without = Sampler(SamplingParams(stop_token_ids=END_IDS, temperature=temperature, seed=3), VOCAB)
    assert without.sample(eos_prone_logits(rng), []).token_id == END_IDS[0]


def test_min_tokens_counts_a_greedy_batch_row_too():
    """A plain greedy sequence is sampled by sample_batch's shared argmax: not before min_tokens."""
    sampler = Sampler(SamplingParams(min_tokens=2, stop_token_ids=END_IDS, temperature=0), VOCAB)
    assert not sampler.plain_greedy
    rng = np.random.default_rng(1)
    assert sampler.sample(eos_prone_logits(rng), []).token_id not in END_IDS
    assert sampler.sample(eos_prone_logits(rng), []).token_id not in END_IDS
    assert sampler.plain_greedy


def test_no_stop_string_is_looked_for_before_min_tokens():
    stream = TextStream(["."], min_tokens=2)
    assert stream.push(b"a.") == "a." and stream.push(b"b.") == "b." and not stream.stopped
    assert stream.push(b"c.d") == "c" and stream.stopped and stream.stop_string == "."


def test_include_stop_str_in_output_keeps_the_stop_string_and_nothing_after_it():
    stream = TextStream(["END"], include_stop=True)
    assert stream.push(b"one E") == "one "
    assert stream.push(b"ND two") == "END" and stream.stopped and stream.stop_string == "END"
    assert TextStream(["END"]).push(b"one END two") == "one "
