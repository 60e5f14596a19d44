"""Fill in the middle on llama-server: a completion with a `suffix` goes to its /infill, which
builds the model's FIM prompt from the GGUF's FIM tokens ([FIM_PRE] prefix [FIM_SUF] suffix
[FIM_MID], llama.cpp's infill) where /v1/completions would ignore the suffix. /infill answers
in llama-server's native completion shape (`content`, `stop_type`, `tokens_evaluated`, ...):
given back in OpenAI's completions shape, a whole answer or a stream's chunks, as its
/v1/completions writes them (usage and timings on the last chunk)."""
from __future__ import annotations

import contextlib
import time
from typing import AsyncIterator, Callable, Iterator

from ..errors import BadRequest, NotImplementedByBackend
from ..wire.chunks import chunk_choice, chunk_head
from ..wire.ids import response_id
from ..wire.streams import closing
from .base import refuse_insert

INFILL_PATH = "/infill"


def infill_body(body: dict) -> dict:
    """An upstream completion body as /infill reads it: the prompt is the text before the gap
    (`input_prefix`, a string or token ids), the suffix the text after it; the rest (max_tokens,
    stop, sampling, id_slot, json_schema) /infill reads under the same names."""
    if body.get("logprobs") is not None:
        raise BadRequest("logprobs with a suffix is not supported on llama.cpp (its /infill answers "
                         "them in its own shape)", param="logprobs")
    infill = {k: v for k, v in body.items() if k not in ("prompt", "suffix", "stream_options")}
    infill["input_prefix"], infill["input_suffix"] = body.get("prompt", ""), body.get("suffix") or ""
    return infill


@contextlib.contextmanager
def insert_refused(body: dict) -> Iterator[None]:
    """/infill's 501 for a model without FIM tokens as the 400 naming `suffix` that a backend
    without fill in the middle answers (Ollama's answer for a model without insert)."""
    try:
        yield
    except NotImplementedByBackend:
        refuse_insert(body)
        raise


def to_completion(answer: dict | list, model: str) -> dict:
    """/infill's whole answer as an OpenAI text_completion. With `n_cmpl` (llama.vscode sends
    its "max parallel completions", 3 by default) llama-server answers a list of results for
    the one prompt: a choice each, the prompt counted once and their tokens summed."""
    results = answer if isinstance(answer, list) else [answer]
    if not results or not all(isinstance(result, dict) for result in results):
        raise ValueError("/infill answered neither a result nor a list of results")
    usage = _usage(results[0])
    usage["completion_tokens"] = sum(_usage(result)["completion_tokens"] for result in results)
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {"id": response_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": index, "text": result.get("content") or "", "logprobs": None,
                         "finish_reason": _finish_reason(result)} for index, result in enumerate(results)],
            "usage": usage, "timings": results[0].get("timings") or {}}


async def completion_chunks(events: AsyncIterator[list[bytes]], decode: Callable[[bytes], dict],
                            model: str) -> AsyncIterator[list[dict]]:
    """/infill's stream events as OpenAI completion chunks, one batch a read: a chunk for each
    piece of text, the last with its finish_reason, usage and timings."""
    head = chunk_head(response_id("cmpl"), model, int(time.time()), chat=False)
    async with closing(events) as batches:
        async for batch in batches:
            yield [_chunk(decode(event), head) for event in batch]


def _chunk(event: dict, head: dict) -> dict:
    if not event.get("stop"):
        return {**head, "choices": [chunk_choice(event.get("content") or "", chat=False)]}
    return {**head, "choices": [chunk_choice(event.get("content") or "", _finish_reason(event), chat=False)],
            "usage": _usage(event), "timings": event.get("timings") or {}}


def _finish_reason(answer: dict) -> str:
    """llama-server's rule: out of tokens (`limit`) is "length", an end token or stop word "stop"."""
    return "length" if answer.get("stop_type") == "limit" else "stop"


def _usage(answer: dict) -> dict:
    prompt, completion = int(answer.get("tokens_evaluated") or 0), int(answer.get("tokens_predicted") or 0)
    cached = int((answer.get("timings") or {}).get("cache_n") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}
