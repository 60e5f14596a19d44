"""Prompt token counts for the count endpoints (Anthropic's /v1/messages/count_tokens, the
Responses API's /v1/responses/input_tokens): exact from the first backend that can tokenize
the chat body (its own chat template and tokenizer), else the router's estimate. The answer
says which in the `x-velollm-token-count` header."""
from __future__ import annotations

import json
import logging

from ..backends.registry import Registry
from ..errors import NotFound, VeloError
from ..sched.fingerprint import CHARS_PER_TOKEN, fingerprint_of
from ..wire.request import GenerateRequest

log = logging.getLogger("velollmd.api.token_count")
TOKEN_COUNT_HEADER = "x-velollm-token-count"        # "exact" (the backend's tokenizer) or "estimate"


def estimate_tokens(request: GenerateRequest) -> int:
    """The prompt's tokens as the router estimates them, plus the tool definitions."""
    tools = request.body.get("tools")
    extra = len(json.dumps(tools)) // CHARS_PER_TOKEN if tools else 0
    return fingerprint_of(request).total_tokens + extra


async def count_prompt_tokens(registry: Registry, chat: dict) -> tuple[int, str]:
    """(tokens, "exact" | "estimate") of a validated chat body's prompt; `chat["model"]` is
    the served model (aliases resolved). A model no backend has is a 404."""
    for backend in registry.candidates(chat["model"]):
        try:
            count = await backend.count_prompt_tokens(chat)
        except NotFound:                    # the model itself: a 404, as generating would answer
            raise
        except VeloError as exc:
            log.info("token count fell back to an estimate",
                     extra={"fields": {"backend": backend.name, "error": exc.message}})
            continue
        if count is not None:
            return count, "exact"
    return estimate_tokens(GenerateRequest("chat", chat)), "estimate"
