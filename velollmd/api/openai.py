"""The OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/models, /v1/embeddings."""
from __future__ import annotations

import base64
import hashlib
import time
from typing import AsyncIterator

import numpy as np

from ..backends.registry import Registry
from ..core.pipeline import Pipeline
from ..core.service import Service
from ..errors import BadRequest
from ..http.message import Request, Response
from ..http.sse import sse_response
from ..wire.functions import (function_call_answer, function_call_chunks, has_legacy_functions,
                              tools_from_functions)
from ..wire.outcome import Outcome
from ..wire.streams import closing
from .access import Access
from .router_models import router_fields
from .validate import dropped_fields, validate_chat, validate_completion, validate_embeddings


class OpenAIRoutes:
    def __init__(self, access: Access, registry: Registry, pipeline: Pipeline, service: Service, *,
                 sse_ping_s: float):
        self.access, self.registry, self.pipeline, self.service = access, registry, pipeline, service
        self.sse_ping_s = sse_ping_s

    def register(self, router) -> None:
        router.add("POST", "/v1/chat/completions", self.chat_completions)
        router.add("POST", "/v1/completions", self.completions)
        router.add("GET", "/v1/models", self.list_models)
        router.add("GET", "/v1/models/{model_id}", self.get_model)
        router.add("POST", "/v1/embeddings", self.embeddings)

    async def chat_completions(self, request: Request) -> Response:
        key = self.access.key_of(request)
        headers = request_headers(request)
        raw_key = ""
        if self.pipeline.cache is not None:           # the memo of exact hits is the cache's
            raw_key = raw_request_key(request, key)
            replay = self.pipeline.replay_memo(raw_key, headers)
            if replay is not None:
                self.access.priority_of(request, key)                 # a bad x-velollm-priority: 400, hit or not
                key_name = self.access.admit(request, key=key, defer=True)  # limits count cache hits too
                await self.pipeline.admit(key_name)                 # (the model was checked for the memo)
                self.pipeline.count_memo_hit(key_name)
                return to_response(replay, self.sse_ping_s)
        body = request.json()
        if has_legacy_functions(body):
            return await self._legacy_chat(request, body, key, headers)
        dropped = dropped_fields(body)
        body = validate_chat(body)
        generate = self.access.generate_request(request, "chat", body, key=key, raw_key=raw_key, headers=headers,
                                                dropped=dropped)
        return to_response(await self.pipeline.generate(generate, frames=True), self.sse_ping_s)

    async def _legacy_chat(self, request: Request, body: dict, key: str, headers: dict) -> Response:
        """A chat in legacy function calling, served as a tools request; an answer to
        `functions` is given back in their shape, a cached one too. Not in the replay memo,
        which replays without converting."""
        legacy_answer = "functions" in body
        dropped = dropped_fields(body)
        body = validate_chat(tools_from_functions(body))
        generate = self.access.generate_request(request, "chat", body, key=key, headers=headers, dropped=dropped)
        outcome = await self.pipeline.generate(generate)
        if legacy_answer and outcome.chunks is not None:
            outcome.chunks = function_call_chunks(outcome.chunks)
        elif legacy_answer:
            outcome.body = function_call_answer(outcome.body)
        return to_response(outcome, self.sse_ping_s)

    async def completions(self, request: Request) -> Response:
        body = validate_completion(request.json())
        prompts = echoed_prompts(body)
        generate = self.access.generate_request(request, "completion", body)
        outcome = await self.pipeline.generate(generate, frames=prompts is None)
        if prompts is not None:
            echo_prompts(outcome, prompts, body.get("n") or 1)
        return to_response(outcome, self.sse_ping_s)

    async def list_models(self, request: Request) -> Response:
        await self.registry.freshen()
        data = [self._entry(m) for m in self.access.visible_models(request, self.registry.catalogue())]
        return Response.json({"object": "list", "data": data})

    async def get_model(self, request: Request, model_id: str) -> Response:
        self.access.check_model(self.access.key_name_of(request), model_id)
        await self.registry.freshen()
        return Response.json(self._entry(self.registry.find_model(model_id)))

    def _entry(self, model) -> dict:
        """A model's OpenAI object, with the fields llama-server's router adds (its `status`...)."""
        return {**model_object(model), **router_fields(self.registry, model)}

    async def embeddings(self, request: Request) -> Response:
        body = validate_embeddings(request.json())
        encoding = body.pop("encoding_format", None) or "float"
        if encoding not in ("float", "base64"):
            raise BadRequest("encoding_format must be 'float' or 'base64'", param="encoding_format")
        dimensions = body.pop("dimensions", None)
        key_name = self.access.admit(request, body["model"], defer=True)
        await self.pipeline.admit(key_name)                  # the key's limits, shared when they are
        outcome = await self.service.embeddings(body)
        self.pipeline.record_key_usage(key_name, outcome.body.get("usage"))
        for item in outcome.body.get("data", []):
            if dimensions is not None:
                item["embedding"] = shortened(item["embedding"], dimensions)
            if encoding == "base64":
                item["embedding"] = base64_floats(item["embedding"])
        return to_response(outcome, 0)


def echoed_prompts(body: dict) -> list[str] | None:
    """`echo`: the prompt texts the choices start with (None: no echo here), taken out of the
    body: the daemon echoes a text prompt itself, as no backend does (llama-server and Ollama
    ignore it). An echo the daemon cannot make alone stays in the body for the backend, which
    makes it or refuses it with a 400 naming `echo` (backends/base.refuse_unhonoured): with
    logprobs (the prompt's own, lm-evaluation-harness's loglikelihoods), of token ids, or of
    the prompt alone (max_tokens 0)."""
    if not body.get("echo", False):
        body.pop("echo", None)
        return None
    prompts = [body["prompt"]] if isinstance(body["prompt"], str) else body["prompt"]
    if body.get("logprobs") is not None or body.get("max_tokens") == 0 or \
            not all(isinstance(p, str) for p in prompts):
        return None
    del body["echo"]
    return prompts


def echo_prompts(outcome: Outcome, prompts: list[str], n: int) -> None:
    """Each choice's text (the first chunk of it in a stream) after its prompt: choice i
    answers prompt i // n, as OpenAI numbers them."""
    if outcome.chunks is None:
        outcome.body = {**outcome.body, "choices": [_echoed(c, prompts, n) for c in outcome.body["choices"]]}
    else:
        outcome.chunks = _echoed_chunks(outcome.chunks, prompts, n)


def _echoed(choice: dict, prompts: list[str], n: int) -> dict:
    prompt_index = choice.get("index", 0) // n
    prompt = prompts[prompt_index] if prompt_index < len(prompts) else ""
    return {**choice, "text": prompt + (choice.get("text") or "")}


async def _echoed_chunks(chunks: AsyncIterator[dict], prompts: list[str], n: int) -> AsyncIterator[dict]:
    started: set[int] = set()
    async with closing(chunks) as source_iter:
        async for chunk in source_iter:
            choices = chunk.get("choices") or []
            if any(c.get("index", 0) not in started for c in choices):
                chunk = {**chunk, "choices": [c if c.get("index", 0) in started else _echoed(c, prompts, n)
                                              for c in choices]}
                started.update(c.get("index", 0) for c in choices)
            yield chunk


def raw_request_key(request: Request, api_key: str) -> str:
    material = b"\0".join((request.path.encode(), api_key.encode(), request.body))
    return hashlib.blake2b(material, digest_size=16).hexdigest()


def request_headers(request: Request) -> dict[str, str]:
    return dict(request.headers)


def shortened(vector: list[float], dimensions: int) -> list[float]:
    """OpenAI's `dimensions`: the first `dimensions` numbers, normalised again to length 1."""
    if dimensions > len(vector):
        raise BadRequest(f"dimensions must be at most {len(vector)}, the model's embedding size, "
                         f"got {dimensions}", param="dimensions")
    head = np.asarray(vector[:dimensions], dtype=np.float64)       # (dimensions,)
    norm = float(np.linalg.norm(head))
    return (head / norm if norm else head).tolist()


def base64_floats(vector: list[float]) -> str:
    """OpenAI's base64 embedding encoding: little-endian float32 bytes."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()  # (dim,) float32


def model_object(model) -> dict:
    return {"id": model.id, "object": "model", "created": model.created or int(time.time()),
            "owned_by": model.backend}


def to_response(outcome: Outcome, ping_s: float) -> Response:
    headers = list(outcome.headers.items())
    if outcome.chunks is not None:
        return sse_response(outcome.chunks, ping_s, headers=headers)
    return Response.json(outcome.body, headers=headers)
