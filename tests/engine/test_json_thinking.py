"""JSON mode with a thinking model: the sampler leaves the thinking free (the end tokens held
back) and starts the JSON constraint once the end-of-thinking marker has been written, as one
token or spelled by several; the answer splits the thinking from the JSON, streamed or not."""
from __future__ import annotations

import json

import numpy as np
import pytest

from velollmd.backends.engine_answer import split_thinking
from velollmd.engine.json_constraint import JsonConstraint, JsonVocab
from velollmd.engine.sampling import Sampler, SamplingParams
from velollmd.engine.tokenizer import TokenAttr, Tokenizer

MARKER = "</think>"
TAGS = ("<think>", MARKER)
PIECES = ["<think>", "hmm", "▁ok", "</", "think", ">", ">▁{", "{", "}", '"a"', ":", "1", "▁"]
SPECIAL = ["<unk>", "<s>", "</s>", "<|im_end|>", MARKER]          # "</think>" a control token here


def thinking_tokenizer() -> Tokenizer:
    tokens = SPECIAL + PIECES
    attrs = [TokenAttr.UNKNOWN] + [TokenAttr.CONTROL] * 4 + [TokenAttr.NORMAL] * len(PIECES)
    return Tokenizer(model="llama", pre="default", tokens=tokens, scores=[0.0] * len(tokens), attrs=attrs,
                     merges=(), special_ids={"unk": 0, "bos": 1, "eos": 2}, add_bos=True, add_eos=False,
                     add_space_prefix=True)


TOKENIZER = thinking_tokenizer()
VOCAB = TOKENIZER.vocab_size
END_IDS = tuple(sorted(TOKENIZER.eog_ids))
EOS = END_IDS[0]


def tid(piece: str) -> int:
    return TOKENIZER.piece_to_id(piece)


def sampler(think_end: str | None = MARKER, **kwargs) -> Sampler:
    params = SamplingParams(json_mode=True, stop_token_ids=END_IDS, think_end=think_end, temperature=0, **kwargs)
    return Sampler(params, VOCAB, json_vocab=JsonVocab(TOKENIZER, VOCAB))


def scripted(sampler: Sampler, wishes: list[list[str | int]]) -> tuple[list[int], str]:
    """Each step's logits rank the wished tokens first (the first wish highest); the tokens the
    sampler took and their text."""
    tokens = []
    for wish in wishes:
        logits = np.zeros(VOCAB, np.float32)                  # (vocab,)
        for rank, token in enumerate(wish):
            logits[token if isinstance(token, int) else tid(token)] = 10.0 - rank
        tokens.append(sampler.sample(logits, tokens).token_id)
    return tokens, TOKENIZER.decode(t for t in tokens if t not in END_IDS)


def test_thinking_is_free_and_the_object_starts_after_a_one_token_marker():
    taken, text = scripted(sampler(), [["<think>"], ["hmm"], [EOS, "▁ok"], [MARKER], ["hmm", "{"], ['"a"'], [":"],
                                       ["1"], [EOS, "}"], [EOS]])
    assert taken[2] == tid("▁ok")                             # no end while thinking
    assert taken[4] == tid("{")                               # the JSON constraint from here on
    assert taken[-1] == EOS and text == '<think>hmm ok</think>{"a":1}'
    reasoning, content = split_thinking(text, TAGS, final=True)
    assert reasoning == "hmm ok" and json.loads(content) == {"a": 1}


def test_a_marker_spelled_by_several_tokens_starts_the_object_after_its_last():
    sample = sampler()
    taken, text = scripted(sample, [["</"], ["think"], ["hmm"], ["</"], ["think"]])
    assert sample.constraint.thinking                         # "</think" then "hmm": no marker yet
    assert scripted(sample, [[">"]])[1] == ">" and not sample.constraint.thinking
    assert scripted(sample, [["hmm", "{"], ["}"], [EOS]])[1] == "{}" and sample.constraint.complete


def test_what_the_markers_token_writes_after_it_is_the_objects_start():
    sample = sampler()
    taken, text = scripted(sample, [["</"], ["think"], [">▁{"], [EOS, "}"], [EOS]])
    assert text == "</think> {}" and taken[-1] == EOS
    assert split_thinking(text, TAGS, final=True) == ("", "{}")


def test_thinking_off_constrains_from_the_first_token():
    taken, text = scripted(sampler(think_end=None), [["<think>", "hmm", "{"], ["}"], [EOS]])
    assert text == "{}" and taken[-1] == EOS


def test_the_mask_while_thinking_is_every_token_but_the_ends():
    constraint = JsonConstraint(JsonVocab(TOKENIZER, VOCAB), END_IDS, after=MARKER.encode())
    allowed = constraint.mask()
    assert not allowed[list(END_IDS)].any() and allowed.sum() == VOCAB - len(END_IDS)
    assert constraint.allows(tid("hmm")) and not constraint.allows(EOS)
    constraint.advance(tid(MARKER))
    assert not constraint.thinking and constraint.allows(tid("{")) and not constraint.allows(tid("hmm"))


@pytest.mark.parametrize("text, parts", [
    ("<think>\nI think.\n</think>\n\n{\"a\": 1}", ("I think.", '{"a": 1}')),
    ("\nI think.\n</think>\n\n{}", ("I think.", "{}")),          # the opening tag in the prompt
    ("<think>\ncut while thinking </thi", ("cut while thinking </thi", "")),
    ("", ("", "")),
])
def test_the_split_and_every_streamed_prefix_of_it(text, parts):
    assert split_thinking(text, TAGS, final=True) == parts
    sent = ("", "")
    for end in range(len(text) + 1):
        now = split_thinking(text[:end], TAGS, final=False)
        assert now[0].startswith(sent[0]) and now[1].startswith(sent[1]), (text[:end], now, sent)
        sent = now
    assert parts[0].startswith(sent[0]) and parts[1].startswith(sent[1])
