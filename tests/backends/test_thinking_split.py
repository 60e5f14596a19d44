"""A thinking model's streamed answer split into reasoning_content and content: the split is
kept between tokens (ThinkingSplit), and gives, delta for delta, what re-splitting the whole
text on every token gave (the reference below is that code as it was), on long answers and
on texts made to catch the edges: tags spelled in pieces, whitespace (Unicode's too) around
and between them, a cut in the middle of a tag."""
from __future__ import annotations

import numpy as np
import pytest

from velollmd.backends.engine_answer import AnswerBuilder, ThinkingSplit, split_thinking
from velollmd.engine.runner import Event

TAGS = ("<think>", "</think>")
FRAGMENTS = ["<think>", "</think>", "<", "</", "<th", "think", ">", "</thi", "nk>", " ", "\n", "\n\n", "\u3000",
             "a", "bc", "x y", "{", '"k": 1}', "é", "日本"]


def resplit_every_time(text: str, tags: tuple[str, str], *, final: bool, opened: bool) -> tuple[str, str]:
    """split_thinking as it was: the whole text split anew on every token."""
    start, end = tags
    body = text.lstrip()
    if body.startswith(start):
        body = body[len(start):]
    elif not final and start.startswith(body):
        return "", ""
    elif not opened:
        return "", text
    at = body.find(end)
    if at >= 0:
        return body[:at].strip(), body[at + len(end):].lstrip()
    if final:
        return body.strip(), ""
    held = next((size for size in range(min(len(end) - 1, len(body)), 0, -1) if body.endswith(end[:size])), 0)
    return body[:len(body) - held].strip(), ""


def reference_deltas(pieces: list[str], opened: bool, final: bool) -> list[dict]:
    deltas, sent, text = [], ("", ""), ""
    for number, piece in enumerate(pieces, 1):
        text += piece
        parts = resplit_every_time(text, TAGS, final=final and number == len(pieces), opened=opened)
        delta = {"reasoning_content": parts[0][len(sent[0]):], "content": parts[1][len(sent[1]):]}
        deltas.append({key: value for key, value in delta.items() if value})
        sent = parts
    return deltas


class _Bytes:
    def token_bytes(self, token_id: int) -> bytes:
        return b"a"


def streamed_deltas(pieces: list[str], opened: bool, final: bool) -> list[dict]:
    """The deltas of the chunks an AnswerBuilder makes of `pieces`, one event each ({} where a
    piece makes no chunk)."""
    builder = AnswerBuilder("chatcmpl-x", "m", chat=True, tokenizer=_Bytes(), think_tags=TAGS, thinking_opened=opened)
    deltas = []
    for number, piece in enumerate(pieces, 1):
        last = final and number == len(pieces)
        chunks = builder.chunks(0, Event("r", piece, (1,), finish_reason="stop" if last else None))
        texts = [c["choices"][0]["delta"] for c in chunks if c["choices"][0]["finish_reason"] is None]
        deltas.append(texts[0] if texts else {})
    return deltas


def random_pieces(seed: int, count: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [FRAGMENTS[i] for i in rng.integers(0, len(FRAGMENTS), count)]


@pytest.mark.parametrize("opened", [False, True])
@pytest.mark.parametrize("seed", range(40))
def test_streamed_deltas_are_those_of_resplitting_the_whole_text(seed, opened):
    pieces = random_pieces(seed, int(np.random.default_rng(seed).integers(1, 40)))
    for final in (False, True):
        assert streamed_deltas(pieces, opened, final) == reference_deltas(pieces, opened, final), pieces


@pytest.mark.parametrize("opened", [False, True])
def test_a_long_streamed_answer_gives_the_same_deltas_and_adds_up_to_the_whole_split(opened):
    thought = ["<think>", "\n"] + [f"step {i}, " if i % 7 else "\n\n" for i in range(1, 3000)]
    pieces = thought + [" \n", "</thi", "nk>", "\n\n"] + [f"word{i} " for i in range(3000)] + ["</think> tail"]
    deltas = streamed_deltas(pieces, opened, True)
    assert deltas == reference_deltas(pieces, opened, True)
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    content = "".join(d.get("content", "") for d in deltas)
    assert (reasoning, content) == split_thinking("".join(pieces), TAGS, final=True, opened=opened)
    assert reasoning.startswith("step 1, ") and content.startswith("word0 ") and content.endswith("</think> tail")


def test_a_fresh_split_of_a_whole_text_is_its_parts():
    split = ThinkingSplit(TAGS, opened=False)
    assert split.grown("  <think> a </think>\n b", final=False) == ("a", "b")
    assert split.grown("  <think> a </think>\n b c", final=True) == ("", " c")
