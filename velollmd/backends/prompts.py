"""A completion with several prompts (strings, or arrays of token ids: lm-evaluation-harness
batches its requests so) on a server that answers one prompt a request: a request each, run
together, their answers merged into the one answer OpenAI gives (its choices in prompt order,
the usage summed)."""
from __future__ import annotations

import asyncio
import dataclasses

from ..wire.request import GenerateRequest


def several_prompts(body: dict) -> list | None:
    """A completion's prompts when it has several (strings, or lists of token ids), else None."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
        return prompt
    return None


async def all_of(coroutines) -> list:
    """The results of `coroutines` run together; the first to fail cancels the others, and its
    error is raised as it is."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def with_prompt(request: GenerateRequest, prompt) -> GenerateRequest:
    return dataclasses.replace(request, body={**request.body, "prompt": prompt})


def merged_answers(answers: list[dict]) -> dict:
    """One completion answer of the answers to each prompt, in prompt order: their choices
    numbered in that order, their usage summed (timings, which are one prompt's, left out)."""
    merged = {key: value for key, value in answers[0].items() if key != "timings"}
    merged["choices"] = [{**choice, "index": index} for index, choice in
                         enumerate(choice for answer in answers for choice in answer.get("choices") or [])]
    merged["usage"] = summed_usage([answer.get("usage") for answer in answers])
    return merged


def summed_usage(usages: list) -> dict:
    """Token counts of several answers added up (cached prompt tokens too, when given)."""
    total = {name: sum(_count(u, name) for u in usages) for name in ("prompt_tokens", "completion_tokens")}
    total["total_tokens"] = total["prompt_tokens"] + total["completion_tokens"]
    details = [u.get("prompt_tokens_details") for u in usages if isinstance(u, dict)]
    if any(isinstance(d, dict) for d in details):
        total["prompt_tokens_details"] = {"cached_tokens": sum(_count(d, "cached_tokens") for d in details)}
    return total


def _count(usage, name: str) -> int:
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if type(value) is int and value > 0 else 0
