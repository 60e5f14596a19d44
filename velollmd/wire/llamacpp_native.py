"""OpenAI completion answers in llama-server's native /completion and /infill shape.

A whole answer: `content`, `tokens`, `stop` (true), `stop_type` ("eos": an end token, "limit":
out of tokens, "word": a stop string, named in `stopping_word`), `tokens_predicted`,
`tokens_evaluated`, `tokens_cached`, `truncated`, `has_new_line`, `model`,
`generation_settings`, `timings` and, with `n_probs`, `completion_probabilities`. A stream:
`{"index", "content", "stop": false}` for each piece of text, then the whole answer's fields
with `content` "" and `stop` true, as llama-server streams them (no `[DONE]`).

What OpenAI's shape cannot carry is left out: the answer's token ids (`tokens` stays empty, as
llama-server leaves it without `return_tokens`) and each probability's token id. A backend that
does not name the stop string that ended an answer (Ollama) gives "eos" for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator

from .stopword import stop_word_of
from .streams import closing


@dataclass
class NativeShape:
    """What the native answer needs beyond the OpenAI one: from the request, and how to cut it."""
    model: str
    settings: dict                       # generation_settings: what the request set
    stops: list[str] = field(default_factory=list)
    n_indent: int = 0                    # llama-server's minimum indentation of each new line
    response_fields: list[str] = field(default_factory=list)


def native_answer(answer: dict, shape: NativeShape) -> dict | list[dict]:
    """A whole OpenAI text_completion as llama-server's /completion answer; several choices
    (`n_cmpl`) as its list of results, one a choice, in their order (the counts, which OpenAI's
    usage gives for all choices together, are those of the whole answer in each)."""
    choices = answer.get("choices") or [{}]
    if len(choices) > 1:
        return [_native_result(answer, choice, shape) for choice in sorted(choices, key=lambda c: c.get("index", 0))]
    return _native_result(answer, choices[0], shape)


def _native_result(answer: dict, choice: dict, shape: NativeShape) -> dict:
    text = choice.get("text") or ""
    native = _final(text, choice.get("finish_reason"), stop_word_of(answer, choice), answer.get("usage"),
                    answer.get("timings"), shape)
    native["index"] = choice.get("index") or 0
    probabilities = native_probabilities(choice.get("logprobs"))
    if probabilities is not None:
        native["completion_probabilities"] = probabilities
    return picked_fields(native, shape.response_fields)


async def native_chunks(chunks: AsyncIterator[dict], shape: NativeShape) -> AsyncIterator[dict]:
    """OpenAI completion chunks as llama-server's stream: the text pieces, then the totals."""
    finish, stop_word, usage, timings, text = None, None, None, None, []
    async with closing(chunks) as source:
        async for chunk in source:
            usage = chunk.get("usage") or usage
            timings = chunk.get("timings") or timings
            for choice in chunk.get("choices") or ():
                finish = choice.get("finish_reason") or finish
                stop_word = stop_word_of(chunk, choice) or stop_word
                piece = choice.get("text") or ""
                if piece:
                    text.append(piece)
                    yield {"index": 0, "content": piece, "stop": False}
    final = _final("".join(text), finish, stop_word, usage, timings, shape)
    yield picked_fields({**final, "content": ""}, shape.response_fields)


def _final(text: str, finish: str | None, stop_word: str | None, usage: dict | None, timings: dict | None,
           shape: NativeShape) -> dict:
    text, cut = cut_at_indent(text, shape.n_indent)
    stop_type = "limit" if cut else stop_type_of(finish, stop_word, shape.stops)
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    predicted = int(usage.get("completion_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {"index": 0, "content": text, "tokens": [], "stop": True, "model": shape.model,
            "tokens_predicted": predicted, "tokens_evaluated": prompt, "tokens_cached": prompt + predicted,
            "truncated": False, "has_new_line": "\n" in text, "stop_type": stop_type,
            "stopping_word": stop_word if stop_type == "word" else "",
            "generation_settings": shape.settings,
            "timings": full_timings({"cache_n": cached, "prompt_n": prompt - cached, **(timings or {}),
                                     "predicted_n": predicted})}


def full_timings(timings: dict) -> dict:
    """llama-server's whole `timings`: the rates it derives from the counts and durations
    (`prompt_per_second`, `predicted_per_token_ms`, ...) where the backend gave the
    durations alone (the engine, Ollama). llama.vim shows its info line only when all of
    prompt_n, prompt_ms, prompt_per_second, predicted_n, predicted_ms and
    predicted_per_second are there; 0.0 where a duration is unknown or zero."""
    timings = dict(timings)
    for stage in ("prompt", "predicted"):
        count, ms = timings.get(f"{stage}_n") or 0, timings.get(f"{stage}_ms")
        known = isinstance(ms, (int, float)) and ms > 0 and count > 0
        timings[f"{stage}_ms"] = float(ms) if isinstance(ms, (int, float)) else 0.0
        for name, value in ((f"{stage}_per_token_ms", ms / count if known else 0.0),
                            (f"{stage}_per_second", count * 1e3 / ms if known else 0.0)):
            if not isinstance(timings.get(name), (int, float)):
                timings[name] = round(value, 3)
    return timings


def stop_type_of(finish: str | None, stop_word: str | None, stops: list[str]) -> str:
    """llama-server's stop_type: "limit" out of tokens, "word" a stop string it names, else "eos"."""
    if finish == "length":
        return "limit"
    return "word" if stop_word is not None and stop_word in stops else "eos"


def cut_at_indent(text: str, n_indent: int) -> tuple[str, bool]:
    """llama-server's `n_indent`: the answer ends at the first line after the first whose
    indentation (spaces and tabs) is under `n_indent`, kept up to that indentation (an editor
    completing a block stops where the block ends). (text, whether it was cut)."""
    if n_indent <= 0:
        return text, False
    newline = text.find("\n")
    while newline != -1:
        start = pos = newline + 1
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos < len(text) and pos - start < n_indent:
            return text[:pos], True
        newline = text.find("\n", start)
    return text, False


def native_probabilities(logprobs: dict | None) -> list[dict] | None:
    """An OpenAI completion's logprobs as llama-server's `completion_probabilities` (without
    the token ids, which OpenAI's shape does not carry)."""
    if not logprobs or not logprobs.get("tokens"):
        return None
    tops = logprobs.get("top_logprobs") or [None] * len(logprobs["tokens"])
    return [{**_probability(token, logprob),
             "top_logprobs": [_probability(t, lp) for t, lp in (top or {}).items()]}
            for token, logprob, top in zip(logprobs["tokens"], logprobs.get("token_logprobs") or [], tops)]


def _probability(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8", errors="replace"))}


def picked_fields(answer: dict, paths: list[str]) -> dict:
    """llama-server's `response_fields`: only those fields, a nested one by its path
    ("timings/prompt_n") under that path as its key; none given: the whole answer."""
    if not paths:
        return answer
    picked = {}
    for path in paths:
        value, found = answer, True
        for part in path.split("/"):
            if not isinstance(value, dict) or part not in value:
                found = False
                break
            value = value[part]
        if found:
            picked[path] = value
    return picked
