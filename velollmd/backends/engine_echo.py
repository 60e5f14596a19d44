"""A completion's prompt logprobs on the engine: `echo` with `logprobs` (OpenAI's legacy
completions, what lm-evaluation-harness scores loglikelihoods with), a token-id prompt echoed,
`max_tokens: 0` with echo (the prompt alone, vLLM's), and vLLM's `prompt_logprobs: N`.

The API layer leaves `echo` in the body only for what a backend must echo itself (logprobs
over the prompt, token ids, the prompt alone); a text echo without logprobs is the daemon's
(api/openai.py). Replies follow vLLM's: the choice's text is the prompt then the answer; its
`logprobs` cover the prompt's tokens then the generated ones, the first prompt token's logprob
and top_logprobs null; `prompt_logprobs` is a list, null first, then for each prompt token
{token id: {logprob, rank, decoded_token}} of the token itself and the N likeliest.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import BadRequest


@dataclass(frozen=True)
class Echo:
    """What a completion's choices start with when the engine echoes its prompt."""
    text: str                       # the prompt as sent, or its token ids' text
    token_ids: tuple[int, ...]      # the prompt's tokens, as the engine computes them
    prompt_only: bool               # max_tokens 0: the prompt and nothing generated
    with_logprobs: bool             # the choice's logprobs cover the prompt's tokens


def prompt_logprobs_asked(body: dict, *, chat: bool) -> int | None:
    """How many alternatives each prompt token's logprob comes with (None: no prompt logprobs):
    vLLM's prompt_logprobs, and a completion's echo with logprobs (its top count), the more of
    the two. A chat's prompt_logprobs is refused: the engine computes them for completions."""
    asked = body.get("prompt_logprobs")
    if asked is not None and chat:
        raise BadRequest("prompt_logprobs is served on /v1/completions only", param="prompt_logprobs",
                         code="unsupported_value")
    logprobs = body.get("logprobs")
    if body.get("echo") and logprobs is not None and logprobs is not False:
        echo_top = 0 if logprobs is True else int(logprobs)
        asked = echo_top if asked is None else max(asked, echo_top)
    return asked


def generating_body(body: dict) -> dict:
    """The body sampling reads: `max_tokens: 0` (the prompt alone) runs one token, dropped."""
    return {**body, "max_tokens": 1} if body.get("max_tokens") == 0 else body


def echo_of(body: dict, prompt_ids: list[int], tokenizer) -> Echo | None:
    """The echo a completion asks the engine for, or None."""
    if not body.get("echo"):
        return None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
        prompt = prompt[0]
    text = prompt if isinstance(prompt, str) else tokenizer.decode(prompt_ids)
    logprobs = body.get("logprobs")
    return Echo(text, tuple(prompt_ids), body.get("max_tokens") == 0, logprobs is not None and logprobs is not False)


def vllm_prompt_logprobs(results, token_text) -> list:
    """vLLM's choice.prompt_logprobs from the engine's (None first; SampleResults)."""
    out = []
    for result in results:
        if result is None:
            out.append(None)
            continue
        entries = {str(result.token_id): {"logprob": result.logprob, "rank": result.rank,
                                          "decoded_token": token_text(result.token_id)}}
        for rank, (token_id, logprob) in enumerate(result.top_logprobs, 1):
            entries.setdefault(str(token_id), {"logprob": logprob, "rank": rank,
                                               "decoded_token": token_text(token_id)})
        out.append(entries)
    return out
