"""Ollama: OpenAI requests become /api/chat and /api/generate; NDJSON becomes chunks.

Ollama-native client requests for a model served here are passed through unchanged
(`native`), so NDJSON streaming, Ollama-only fields and error texts are preserved.
"""
from __future__ import annotations

import time
from datetime import datetime
from typing import AsyncIterator

from ..errors import BadRequest, VeloError
from ..http.client import ClientResponse
from ..wire.ids import response_id
from ..wire.ollama import (
    OllamaChatStream,
    ollama_chat_to_openai,
    ollama_generate_to_openai,
    openai_to_ollama_chat,
    openai_to_ollama_generate,
)
from ..wire.chunks import to_completion_logprobs
from ..wire.request import GenerateRequest, reasoning_effort_of, wants_logprobs
from ..wire.streams import closing
from .base import Backend, ModelInfo, listed_models, refuse_unhonoured, server_count


def _model_names(models) -> list[str]:
    """Each running model under its full name and, for ":latest", its bare name too (what
    clients usually send); one Ollama is stopping is not counted."""
    names = []
    for model in models if isinstance(models, list) else []:
        name = (model.get("name") or model.get("model")) if isinstance(model, dict) else None
        if isinstance(name, str) and not _stopping(model):
            names += [name, name.removesuffix(":latest")]
    return names


def _stopping(model: dict) -> bool:
    """An /api/ps entry whose expires_at has passed: Ollama is unloading it (keep_alive 0 is
    answered before the runner is gone, its expiry set to that moment), and `ollama ps` shows
    it as "Stopping...". An expiry that does not parse, or Go's zero time (no expiry set): loaded.
    (keep_alive -1 is an expiry in the far future: loaded.)"""
    expires_at = model.get("expires_at")
    try:
        when = datetime.fromisoformat(expires_at) if isinstance(expires_at, str) else None
        return when is not None and when.year > 1 and when.timestamp() < time.time()
    except (ValueError, OverflowError):
        return False


class OllamaBackend(Backend):
    kind = "ollama"
    native_ollama = True
    loads_models = True                  # an empty /api/generate loads a model, keep_alive 0 unloads it
    defaults = {"temperature": 0.8, "top_p": 0.9, "top_k": 40}

    def hears_audio(self) -> bool:
        return False                     # Ollama's messages take text and images

    async def discover(self) -> None:
        """The models Ollama holds in memory now (/api/ps), for the scheduler's model
        grouping: requests for a loaded model go first among equals, so Ollama does not
        unload one model to load another and back. An Ollama without /api/ps: unknown."""
        try:
            await self.read_loaded_models()
        except VeloError:
            self.loaded_models = None

    async def read_loaded_models(self) -> None:
        body = await self.get_json("/api/ps")
        self.loaded_models = frozenset(_model_names(body.get("models") if isinstance(body, dict) else None))

    async def load_model(self, model: str) -> None:
        """Ollama's own load: an /api/generate with no prompt (its default keep_alive). What
        /models and the scheduler see of it is read back from /api/ps at once. A model that
        cannot generate (an embedding model: Ollama loads it for /api/embed) is Ollama's 400,
        naming `model`."""
        try:
            await self._generate_nothing({"model": model})
        except BadRequest as exc:
            raise BadRequest(exc.message, param="model", code=exc.code) from None

    async def unload_model(self, model: str) -> None:
        """Ollama's own unload: no prompt and keep_alive 0 (a model busy serving is let go
        once its requests end), read back from /api/ps at once."""
        await self._generate_nothing({"model": model, "keep_alive": 0})

    async def _generate_nothing(self, body: dict) -> None:
        await self.post_json("/api/generate", {**body, "stream": False})
        await self.discover()

    async def list_models(self) -> list[ModelInfo]:
        body = await self.get_json("/api/tags")
        return [ModelInfo(id=m["name"], backend=self.name, identity=f"ollama:{m.get('digest', '')}",
                          size=server_count(m.get("size")) or 0, details=_details(m.get("details")), raw=m)
                for m in listed_models(body.get("models"), "name")]

    def chat_body(self, request: GenerateRequest) -> dict:
        """The /api/chat body; `reasoning_effort` as Ollama's own OpenAI endpoint maps it: "none"
        is `think: false`, a level is `think: "low" | "medium" | "high"` (gpt-oss's levels;
        other thinking models take a level as true). An explicit `think` (or the template's
        thinking switch) wins."""
        _refuse_logit_bias(request.body)
        refuse_unhonoured(request.body, self.vllm_fields, "Ollama")
        body = {**openai_to_ollama_chat(request.body, self.config.num_ctx), **_logprobs_ask(request)}
        effort = reasoning_effort_of(request.body)
        if effort is not None:
            body.setdefault("think", False if effort == "none" else effort)
        return body

    def generate_body(self, request: GenerateRequest) -> dict:
        _refuse_logit_bias(request.body)
        refuse_unhonoured(request.body, self.vllm_fields, "Ollama")
        _refuse_input_extra(request.body)
        return {**openai_to_ollama_generate(request.body, self.config.num_ctx), **_logprobs_ask(request)}

    async def chat(self, request: GenerateRequest) -> dict:
        reply = await self.post_json("/api/chat", self.chat_body(request))
        return _with_logprobs(request, reply, ollama_chat_to_openai(reply, request.model, response_id()))

    async def completion(self, request: GenerateRequest) -> dict:
        reply = await self.post_json("/api/generate", self.generate_body(request))
        return _with_logprobs(request, reply, ollama_generate_to_openai(reply, request.model, response_id("cmpl")))

    async def chat_stream(self, request: GenerateRequest) -> AsyncIterator[dict]:
        converter = OllamaChatStream(request.model, response_id())
        async with closing(self.ndjson("/api/chat", self.chat_body(request))) as source_iter:
            async for reply in source_iter:
                for chunk in _chunks_with_logprobs(request, reply, converter.feed(reply)):
                    yield chunk

    async def completion_stream(self, request: GenerateRequest) -> AsyncIterator[dict]:
        converter = OllamaChatStream(request.model, response_id("cmpl"), chat=False)
        offsets: dict[int, int] = {}
        async with closing(self.ndjson("/api/generate", self.generate_body(request))) as source_iter:
            async for reply in source_iter:
                for chunk in _chunks_with_logprobs(request, reply, converter.feed(reply), offsets):
                    yield chunk

    async def embeddings(self, body: dict) -> dict:
        """Ollama's /api/embed takes texts only: token ids are a 400 naming input here, not
        sent for Ollama's "invalid input type" (or a failure that counts against the breaker).
        The context is the request's num_ctx, else the configured one, as a chat's is: Ollama
        cuts an input over its own default context (truncate) without a word otherwise."""
        if not isinstance(body["input"], str) and not all(isinstance(item, str) for item in body["input"]):
            raise BadRequest("Ollama embeds texts, not token ids", param="input")
        started = time.monotonic()
        truncate = {"truncate": body["truncate"]} if "truncate" in body else {}
        num_ctx = body.get("num_ctx") or self.config.num_ctx
        options = {"options": {"num_ctx": num_ctx}} if num_ctx else {}
        reply = await self.post_json("/api/embed", {"model": body["model"], "input": body["input"],
                                                    **truncate, **options})
        vectors = reply.get("embeddings") or []
        return {"object": "list", "model": body["model"],
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": reply.get("prompt_eval_count", 0),
                          "total_tokens": reply.get("prompt_eval_count", 0)},
                "timings": {"total_ms": (time.monotonic() - started) * 1e3}}

    def ndjson(self, path: str, body: dict) -> AsyncIterator[dict]:
        return self.stream_json(path, {**body, "stream": True}, sse=False)

    async def native(self, method: str, path: str, body: dict | None = None) -> ClientResponse:
        """Pass an Ollama-native request through; the caller streams or reads the answer."""
        return await self.client.request(method, path, json=body)


def _refuse_input_extra(body: dict) -> None:
    """llama-server's `input_extra` (other files for a fill in the middle), which Ollama's
    /api/generate has no field for: a 400, never a middle filled without them."""
    if body.get("input_extra"):
        raise BadRequest("Ollama does not support input_extra (llama-server's repo-level context for "
                         "fill in the middle)", param="input_extra", code="unsupported_value")


def _refuse_logit_bias(body: dict) -> None:
    """`logit_bias`, which Ollama has no option for: a 400, as `n` > 1 is, never an answer
    sampled as if the bias (a banned token, say) had not been asked."""
    if body.get("logit_bias"):
        raise BadRequest("Ollama does not support logit_bias", param="logit_bias", code="unsupported_value")


def _logprobs_ask(request: GenerateRequest) -> dict:
    """OpenAI's ask for logprobs as Ollama's (0.12.11 on): `logprobs: true` and how many
    alternatives a token (chat's `top_logprobs`, a completion's `logprobs: N`)."""
    if not wants_logprobs(request.body):
        return {}
    top = request.body.get("top_logprobs" if request.endpoint == "chat" else "logprobs")
    return {"logprobs": True, **({"top_logprobs": top} if type(top) is int and top > 0 else {})}


def _with_logprobs(request: GenerateRequest, reply: dict, answer: dict) -> dict:
    """A whole answer with the logprobs Ollama gave, when asked, in OpenAI's shape."""
    if wants_logprobs(request.body):
        choices = answer["choices"]
        choices[0]["logprobs"] = _chat_logprobs(reply.get("logprobs"))
        if request.endpoint == "completion":
            to_completion_logprobs(choices, {})
    return answer


def _chunks_with_logprobs(request: GenerateRequest, reply: dict, chunks: list[dict],
                          offsets: dict[int, int] | None = None) -> list[dict]:
    """A stream's chunks for one Ollama object, its tokens' logprobs (when asked) on the chunk
    with its text; `offsets` keeps a completion's text length across chunks."""
    if not wants_logprobs(request.body) or not reply.get("logprobs"):
        return chunks
    text_chunks = [c for c in chunks if c.get("choices") and _text_of(c["choices"][0])]
    if text_chunks:
        text_chunks[-1]["choices"][0]["logprobs"] = _chat_logprobs(reply["logprobs"])
        if offsets is not None:
            to_completion_logprobs(text_chunks[-1]["choices"], offsets)
    return chunks


def _text_of(choice: dict) -> str:
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


def _chat_logprobs(entries) -> dict | None:
    """Ollama's logprobs ([{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]) in
    chat's shape; bytes, which Ollama may leave out, are the token's UTF-8."""
    if not isinstance(entries, list):
        return None
    return {"content": [{**_token_logprob(e), "top_logprobs": [_token_logprob(t) for t in e.get("top_logprobs") or ()
                                                               if isinstance(t, dict)]}
                        for e in entries if isinstance(e, dict)], "refusal": None}


def _token_logprob(entry: dict) -> dict:
    token = entry.get("token") if isinstance(entry.get("token"), str) else ""
    logprob = entry.get("logprob")
    return {"token": token, "logprob": logprob if isinstance(logprob, (int, float)) else 0.0,
            "bytes": entry.get("bytes") if isinstance(entry.get("bytes"), list) else list(token.encode())}


def _details(details) -> dict:
    """A model's `details` as /api/tags gives them; anything but an object reads as none."""
    return details if isinstance(details, dict) else {}
