"""The Ollama-native API (/api/chat, /api/generate, /api/tags, /api/show, /api/ps, /api/embed,
/api/embeddings, /api/version) for Ollama clients.

A request for a model on an Ollama backend passes through untouched (NDJSON preserved);
for a model on any other backend it is translated to OpenAI shapes, served, and translated
back. Errors use Ollama's own shape, `{"error": "message"}`, because that is what Ollama
clients parse.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from typing import AsyncIterator

from .. import __version__
from ..backends.base import BUSY_STATUSES, Backend, ModelInfo
from ..backends.model_names import tagged
from ..backends.registry import Registry
from ..core.pipeline import Pipeline
from ..core.service import Service
from ..errors import CONTEXT_LENGTH_EXCEEDED, BadRequest, NotFound, VeloError
from ..http.message import Request, Response
from ..log import current_request_id
from ..wire import wirejson
from ..wire.chunks import merge_tool_call_fragments
from ..wire.ollama import (
    THINK_LEVELS,
    done_reason_of,
    keep_alive_seconds,
    now_rfc3339,
    rfc3339,
    ollama_chat_request_to_openai,
    ollama_final_fields,
    ollama_generate_request_to_openai,
    ollama_logprobs,
    ollama_tool_calls,
)
from ..wire.request import max_tokens_of
from ..wire.streams import closing
from ..wire.truncate import kept_messages_counted, kept_tokens, prompt_limit
from .access import Access
from .openai import shortened
from .validate import check_dimensions, check_message_tool_calls, validate_chat, validate_completion

log = logging.getLogger("velollmd.api.ollama")

NDJSON = [("content-type", "application/x-ndjson")]
MANAGEMENT_ROUTES = [("POST", "/api/push"), ("POST", "/api/create"), ("POST", "/api/copy"),
                     ("DELETE", "/api/delete"), ("GET", "/api/blobs/{digest}"), ("POST", "/api/blobs/{digest}")]
# Ollama serves any temperature and penalties (llama.cpp's samplers take them) and any number of
# stop strings: OpenAI's narrower ranges (temperature up to 2, penalties -2 to 2, 16 stops) are
# not its own.
OLLAMA_SAMPLING_RANGES = {"temperature": (0, math.inf), "presence_penalty": (-math.inf, math.inf),
                          "frequency_penalty": (-math.inf, math.inf), "stop": (0, math.inf)}
USAGE_TAIL_BYTES = 2048                  # the end of a native answer, where its token counts are
PROMPT_COUNT_RE = re.compile(rb'"prompt_eval_count"\s*:\s*(\d+)')
EVAL_COUNT_RE = re.compile(rb'"eval_count"\s*:\s*(\d+)')


def ollama_error(exc: VeloError) -> Response:
    """Ollama's error shape, plus the request id beside `error` (Ollama clients read `error`)."""
    return Response(exc.status, [("content-type", "application/json"), *exc.headers.items()],
                    json.dumps(ollama_error_body(exc)).encode())


def ollama_error_body(exc: VeloError) -> dict:
    body = {"error": exc.message}
    request_id = current_request_id()
    if request_id is not None:
        body["request_id"] = request_id
    return body


def ollama_route(handler):
    async def wrapped(self, request: Request, **params) -> Response:
        try:
            return await handler(self, request, **params)
        except VeloError as exc:
            return ollama_error(exc)
    return wrapped


def ndjson_line(obj: dict) -> bytes:
    return wirejson.dumps(obj) + b"\n"


class OllamaRoutes:
    def __init__(self, access: Access, registry: Registry, pipeline: Pipeline, service: Service):
        self.access, self.registry, self.pipeline, self.service = access, registry, pipeline, service
        self.num_ctx_run: dict[tuple[str, str], int | None] = {}     # (backend, model): its last num_ctx

    def register(self, router) -> None:
        router.add("POST", "/api/chat", self.chat)
        router.add("POST", "/api/generate", self.generate)
        router.add("GET", "/api/tags", self.tags)
        router.add("POST", "/api/show", self.show)
        router.add("GET", "/api/ps", self.ps)
        router.add("POST", "/api/embed", self.embed)
        router.add("POST", "/api/embeddings", self.embeddings)
        router.add("GET", "/api/version", self.version)
        router.add("POST", "/api/pull", self.pull)
        for method, path in MANAGEMENT_ROUTES:
            router.add(method, path, self.not_managed)

    # -- generation ----------------------------------------------------------------------

    @ollama_route
    async def chat(self, request: Request) -> Response:
        body = _model_body(request)
        backend = self.registry.pick(body["model"])
        openai_body = ollama_chat_request_to_openai(body)
        if backend.native_ollama:
            return await self._admitted_passthrough(request, "/api/chat", body, "chat", openai_body)
        _refuse_thinking(body, backend, self.registry.resolve(body["model"]))
        keep_alive_s = self._keep(request, backend, body)
        if not body.get("messages"):
            return await self._load_or_unload(backend, body, keep_alive_s, message=True)
        _whole_context_penalty(openai_body, backend, self.registry.resolve(body["model"]))
        validate_chat(openai_body, OLLAMA_SAMPLING_RANGES)
        return await self._translated_or_cut(request, backend, "chat", openai_body, message=True)

    @ollama_route
    async def generate(self, request: Request) -> Response:
        body = _model_body(request)
        backend = self.registry.pick(body["model"])
        if backend.native_ollama:
            endpoint, openai_body = ollama_generate_request_to_openai(body)
            return await self._admitted_passthrough(request, "/api/generate", body, endpoint, openai_body)
        refuse_untranslated(body, backend)
        _refuse_thinking(body, backend, self.registry.resolve(body["model"]))
        keep_alive_s = self._keep(request, backend, body)
        if not body.get("prompt") and not body.get("images"):
            return await self._load_or_unload(backend, body, keep_alive_s, message=False)
        endpoint, openai_body = ollama_generate_request_to_openai(body)
        if endpoint == "chat" and backend.takes_context:
            openai_body["context"] = body.get("context") or []     # and the answer carries the next
        _whole_context_penalty(openai_body, backend, self.registry.resolve(body["model"]))
        validate = validate_chat if endpoint == "chat" else validate_completion
        validate(openai_body, OLLAMA_SAMPLING_RANGES)
        return await self._translated_or_cut(request, backend, endpoint, openai_body, message=False)

    async def _translated_or_cut(self, request: Request, backend: Backend, endpoint: str, body: dict,
                                 message: bool) -> Response:
        """Served; a prompt over the server's context (its 400) served again cut as Ollama cuts it."""
        try:
            return await self._translated(request, endpoint, body, message)
        except BadRequest as exc:
            cut = await _cut_to_context(backend, endpoint, body) if exc.code == CONTEXT_LENGTH_EXCEEDED else None
            if cut is None:
                raise
            return await self._translated(request, *cut, message)

    def _keep(self, request: Request, backend: Backend, body: dict) -> float | None:
        """The request's keep_alive (seconds), passed to the backend for its model."""
        self.access.check_model(self.access.key_name_of(request), body["model"])
        self._note_num_ctx(backend, body)
        return self._keep_alive(backend, body)

    def _note_num_ctx(self, backend: Backend, body: dict) -> None:
        """The num_ctx the request runs its model with (none: the default), which /api/ps shows:
        Ollama reloads a model with each request's num_ctx. Kept under the tagged name: /api/ps
        lists `llama3.2:latest` (as Ollama does) for a model loaded as `llama3.2`."""
        self.num_ctx_run[(backend.name, tagged(self.registry.resolve(body["model"])))] = _num_ctx_of(body)

    def _keep_alive(self, backend: Backend, body: dict) -> float | None:
        try:
            keep_alive_s = keep_alive_seconds(body.get("keep_alive"))
        except ValueError as exc:
            raise BadRequest(str(exc), param="keep_alive") from None
        backend.keep_model(self.registry.resolve(body["model"]), keep_alive_s)
        return keep_alive_s

    async def _load_or_unload(self, backend: Backend, body: dict, keep_alive_s: float | None,
                              message: bool) -> Response:
        """Nothing to generate: Ollama loads the model, or with keep_alive 0 unloads it."""
        if keep_alive_s == 0:
            await backend.unload_model(self.registry.resolve(body["model"]))
            return Response.json(_load_reply(body["model"], message, done_reason="unload"))
        await backend.load_model(self.registry.resolve(body["model"]))
        return Response.json(_load_reply(body["model"], message))

    async def _passthrough(self, backend: Backend, path: str, body: dict) -> Response:
        """The backend's answer as it is; a busy one as our 503 with a Retry-After (BackendBusy)."""
        self.access.refuse_if_draining()
        upstream = await backend.native("POST", path, self._served(body))
        if upstream.status in BUSY_STATUSES:
            try:
                raise await backend.error_from(upstream)
            finally:
                upstream.close()
        content_type = upstream.header("content-type", "application/json")
        headers = [("content-type", content_type), ("x-velollm-backend", backend.name)]
        return Response(upstream.status, headers, stream=upstream.iter_raw())   # closes itself when left early

    async def _admitted_passthrough(self, request: Request, path: str, body: dict,
                                    endpoint: str, openai_body: dict) -> Response:
        """Pass through to Ollama, but through the scheduler: priorities, backpressure,
        routing among the model's Ollama backends and failover apply."""
        generate = self.access.generate_request(request, endpoint, openai_body)
        await self.pipeline.admit(generate.key_name)     # the key's limits, shared when they are
        backend, relay = await self.service.native(generate, path, self._served(body))
        upstream = await relay.__anext__()
        headers = [("content-type", upstream.header("content-type", "application/json")),
                   ("x-velollm-backend", backend.name)]
        return Response(upstream.status, headers, stream=self._counted(relay, generate))

    async def _counted(self, relay: AsyncIterator[bytes], generate) -> AsyncIterator[bytes]:
        """A native answer's bytes, untouched; once it has ended, the token counts of its final
        object are recorded (metrics, the caller's key budgets)."""
        tail = b""
        async with closing(relay) as source:
            async for data in source:
                tail = (tail + data)[-USAGE_TAIL_BYTES:]
                yield data
        self.pipeline.record_usage(generate, self.registry.resolve(generate.model), native_usage(tail))

    async def _translated(self, request: Request, endpoint: str, body: dict, message: bool) -> Response:
        stream = body.get("stream", True)
        body["stream"] = stream
        if stream:
            body["stream_options"] = {"include_usage": True}
        generate = self.access.generate_request(request, endpoint, body)
        generate.keeps_model = True                 # its keep_alive was given to the backend (_keep)
        started = time.monotonic_ns()
        outcome = await self.pipeline.generate(generate)
        headers = list(outcome.headers.items())
        if outcome.chunks is None:
            reply = _reply_from_openai(outcome.body, body["model"], started, message)
            return Response.json(reply, headers=headers)
        lines = _ndjson_from_chunks(outcome.chunks, body["model"], started, message)
        return Response(200, NDJSON + headers, stream=lines)

    def _served(self, body: dict) -> dict:
        """A native body for Ollama names the served model, not the client's alias."""
        target = self.registry.resolve(body["model"])
        return body if target == body["model"] else {**body, "model": target}

    # -- catalogue -----------------------------------------------------------------------

    @ollama_route
    async def tags(self, request: Request) -> Response:
        await self.registry.freshen()
        models = self.access.visible_models(request, self.registry.catalogue())
        return Response.json({"models": [_tag_entry(m) for m in models]})

    @ollama_route
    async def show(self, request: Request) -> Response:
        body = _model_body(request, name_too=True)
        self.access.check_model(self.access.key_name_of(request), body["model"])
        await self.registry.freshen()
        backend = self.registry.pick(body["model"])
        if backend.native_ollama:
            return await self._passthrough(backend, "/api/show", body)
        info = self.registry.find_model(body["model"])
        return Response.json({"modelfile": f"# served by velollmd from backend {info.backend}\nFROM {info.id}\n",
                              "parameters": f"num_ctx {backend.context_size(info.id)}", "template": "",
                              "details": _details(info), "model_info": _model_info(info, backend),
                              "capabilities": _capabilities(backend, info.id),
                              "modified_at": _modified_at(info)})

    @ollama_route
    async def ps(self, request: Request) -> Response:
        await self.registry.freshen()          # a model whose file is gone is let go once idle
        models = []
        for backend in self.registry.backends:
            if backend.healthy is False:
                continue
            if backend.native_ollama:
                models += await _ollama_ps(backend)
            else:
                models += _running_entries(backend, self.num_ctx_run)
        return Response.json({"models": models})

    @ollama_route
    async def embed(self, request: Request) -> Response:
        body = _model_body(request)
        texts = _embed_inputs(body.get("input"))
        key_name = await self._admit(request, body["model"])
        backend = self.registry.pick(body["model"])
        if backend.native_ollama:
            return await self._passthrough(backend, "/api/embed", body)
        check_dimensions(body)
        self._note_num_ctx(backend, body)
        self._keep_alive(backend, body)
        started = time.monotonic_ns()
        vectors, usage = await self._vectors(key_name, body, texts, truncate=body.get("truncate", True))
        if body.get("dimensions") is not None:
            vectors = [shortened(vector, body["dimensions"]) for vector in vectors]
        return Response.json({"model": body["model"], "embeddings": vectors,
                              "total_duration": time.monotonic_ns() - started, "load_duration": 0,
                              "prompt_eval_count": usage.get("prompt_tokens", 0)})

    @ollama_route
    async def embeddings(self, request: Request) -> Response:
        """The older /api/embeddings: one `prompt` in, one `embedding` out (empty for no prompt)."""
        body = _model_body(request)
        key_name = await self._admit(request, body["model"])
        backend = self.registry.pick(body["model"])
        if backend.native_ollama:
            return await self._passthrough(backend, "/api/embeddings", body)
        self._note_num_ctx(backend, body)
        self._keep_alive(backend, body)
        vectors, _ = await self._vectors(key_name, body, [body["prompt"]] if body.get("prompt") else [])
        return Response.json({"embedding": vectors[0] if vectors else []})

    async def _admit(self, request: Request, model) -> str:
        """The key may use `model` and is under its limits (shared ones too, when they are)."""
        key_name = self.access.admit(request, model, defer=True)
        await self.pipeline.admit(key_name)
        return key_name

    async def _vectors(self, key_name: str, body: dict, texts: list[str],
                       truncate: bool = True) -> tuple[list[list[float]], dict]:
        """One vector per text of the request `body`, and the usage; none for no text (Ollama's
        answer to an empty input). Its options.num_ctx sizes the context where the backend
        loads models itself (the engine). `truncate` (Ollama's default): a text over the
        context is cut to fit where the backend can cut it, else it is a 400."""
        if not texts:
            return [], {}
        answer = (await self.service.embeddings({"model": body["model"], "input": texts, "truncate": truncate,
                                                 **_num_ctx_field(body)})).body
        self.pipeline.record_key_usage(key_name, answer.get("usage"))
        return [d["embedding"] for d in answer["data"]], answer.get("usage") or {}

    async def version(self, request: Request) -> Response:
        return Response.json({"version": __version__})

    # -- model management: the backends' own business -------------------------------------

    @ollama_route
    async def pull(self, request: Request) -> Response:
        """A model that is served already is there: Ollama's final progress status, so that apps
        that pull before they chat go on; any other is a clear 501."""
        body = _model_body(request, name_too=True)
        self.access.check_model(self.access.key_name_of(request), body["model"])
        await self.registry.freshen()
        try:
            self.registry.find_model(body["model"])
        except NotFound:
            raise VeloError(f"velollmd does not pull models: {body['model']!r} is not served by any backend; "
                            "pull it on a backend", status=501, error_type="invalid_request_error") from None
        if body.get("stream", True):
            return Response(200, NDJSON, ndjson_line({"status": "success"}))
        return Response.json({"status": "success"})

    @ollama_route
    async def not_managed(self, request: Request, **params) -> Response:
        raise VeloError(f"velollmd does not manage models: {request.method} {request.path} is not supported; "
                        "manage models on a backend", status=501, error_type="invalid_request_error")


def native_usage(tail: bytes) -> dict | None:
    """OpenAI-style usage from the end of an Ollama answer (its last prompt_eval_count and
    eval_count), None when it has none."""
    prompt, completion = PROMPT_COUNT_RE.findall(tail), EVAL_COUNT_RE.findall(tail)
    if not prompt and not completion:
        return None
    return {"prompt_tokens": int(prompt[-1]) if prompt else 0,
            "completion_tokens": int(completion[-1]) if completion else 0}


def _model_body(request: Request, *, name_too: bool = False) -> dict:
    """The request's JSON body with its `model`; `name_too`: the deprecated `name` that
    Ollama's /api/show and /api/pull still take stands in for a missing `model`."""
    body = request.json()
    if name_too and not body.get("model") and body.get("name"):
        body = {**body, "model": body["name"]}
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("model is required", param="model")
    _check_ollama_fields(body)
    return body


OLLAMA_FIELD_TYPES = {"messages": list, "options": dict, "images": list, "tools": list, "prompt": str,
                      "system": str, "suffix": str, "raw": bool, "stream": bool, "format": (str, dict), "think": (bool, str),
                      "logprobs": bool, "top_logprobs": int, "context": list, "template": str, "truncate": bool}


# Ollama's typed options (api/types.go Options); others pass on to the backend untouched.
INTEGER_OPTIONS = frozenset({"num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "mirostat",
                             "num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread"})
NUMBER_OPTIONS = frozenset({"temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
                            "frequency_penalty", "mirostat_tau", "mirostat_eta", "tfs_z"})


def _check_ollama_fields(body: dict) -> None:
    """The shapes Ollama's docs give; anything else is a 400 naming the field."""
    for name, kind in OLLAMA_FIELD_TYPES.items():
        if body.get(name) is not None and not isinstance(body[name], kind):
            raise BadRequest(f"invalid {name!r}: wrong type {type(body[name]).__name__}", param=name)
    for key, value in (body.get("options") or {}).items():
        _check_option(key, value)
    if isinstance(body.get("think"), str) and body["think"] not in THINK_LEVELS:
        raise BadRequest(f'invalid think value: {json.dumps(body["think"])} (must be "high", "medium", "low", '
                         'true, or false)', param="think")
    if isinstance(body.get("format"), str) and body["format"] not in ("", "json"):
        raise BadRequest('invalid format: expected "json" or a JSON schema', param="format")
    for i, message in enumerate(body.get("messages") or []):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a 'role'", param=f"messages[{i}]")
        for name, kind in (("content", str), ("images", list)):
            if message.get(name) is not None and not isinstance(message[name], kind):
                raise BadRequest(f"messages[{i}].{name} has the wrong type", param=f"messages[{i}].{name}")
        check_message_tool_calls(message.get("tool_calls"), f"messages[{i}].tool_calls")
    for name in ("images",):
        if any(not isinstance(item, str) for item in body.get(name) or []):
            raise BadRequest(f"{name} must be base64 strings", param=name)


UNTRANSLATED_GENERATE_FIELDS = {
    "context": "the tokens of an earlier answer are taken by the in-process engine only (not with a suffix); "
               "send the conversation as messages to /api/chat",
    "template": "a prompt template override is not taken by this backend; send the prompt with raw: true "
                "instead",
}


def refuse_untranslated(body: dict, backend: Backend) -> None:
    """/api/generate fields only Ollama itself honours: a 400 naming the field for any other
    backend, never an answer that ignored them (empty ones ask for nothing). `context` is
    Ollama's 400 in raw mode (nothing is rendered to join it to), and elsewhere taken by a
    backend that renders it (takes_context) unless the prompt fills in a middle."""
    check_context(body.get("context"))
    if body.get("raw") and body.get("context"):
        raise BadRequest("raw mode does not support template, system, or context", param="context")
    for name, why in UNTRANSLATED_GENERATE_FIELDS.items():
        taken = name == "context" and backend.takes_context and not body.get("suffix")
        if body.get(name) and not taken:
            raise BadRequest(f"invalid {name!r}: {why}", param=name)


def check_context(context) -> None:
    """Ollama's `context`: none, or an array of token ids (whether each is in the model's
    vocabulary is for the backend that reads them)."""
    if context is not None and not (isinstance(context, list) and all(
            type(token_id) is int for token_id in context)):
        raise BadRequest("invalid 'context': expected an array of token ids", param="context")


async def _cut_to_context(backend: Backend, endpoint: str, body: dict) -> tuple[str, dict] | None:
    """A prompt over a server's context (its 400), cut as Ollama cuts it (wire/truncate.py) for a
    server that tokenizes prompts (llama-server; the engine cuts its own): a chat's oldest turns
    dropped, and a prompt that still does not fit kept to its first num_keep tokens and its
    latest ones, sent as token ids to the completions endpoint. (endpoint, body), or None when it
    cannot be cut: `truncate: false`, a server that cannot tokenize, a chat with tools (its
    calls are read from a chat answer only). Asked only after the server refused the whole
    prompt, so a prompt that fits costs nothing."""
    if body.get("truncate") is not True:
        return None
    limit = prompt_limit(backend.context_size(body["model"]), max_tokens_of(body))
    try:
        cut = await _recent_turns(backend, body, limit) if endpoint == "chat" else body
        ids = await _token_ids(backend, cut)
    except _CannotCount:
        return None
    num_messages, num_kept = len(body.get("messages") or ()), len(cut.get("messages") or ())
    if len(ids) <= limit and num_kept == num_messages or len(ids) > limit and cut.get("tools"):
        return None
    log.warning("truncating input prompt", extra={"fields": {
        "model": body["model"], "limit": limit, "prompt": len(ids), "messages": num_messages, "kept": num_kept}})
    if len(ids) <= limit:
        return endpoint, cut
    return "completion", _token_completion(cut, kept_tokens(ids, limit, body.get("num_keep")))


async def _recent_turns(backend: Backend, body: dict, limit: int) -> dict:
    """The chat `body` with its oldest turns dropped until it fits in `limit` tokens (the
    system messages and the latest message kept even when they alone do not fit)."""
    async def fits(candidate: list[dict]) -> bool:
        return len(await _token_ids(backend, {**body, "messages": candidate})) <= limit
    return {**body, "messages": await kept_messages_counted(body["messages"], fits)}


async def _token_ids(backend: Backend, body: dict) -> list[int]:
    ids = await backend.prompt_token_ids(body)
    if ids is None:
        raise _CannotCount
    return ids


class _CannotCount(Exception):
    """The server did not tokenize a prompt: nothing is cut blind."""


CHAT_ONLY_FIELDS = frozenset({"messages", "tools", "tool_choice", "chat_template_kwargs", "reasoning_effort",
                              "logprobs", "top_logprobs"})


def _token_completion(chat_or_completion: dict, ids: list[int]) -> dict:
    """A completion body for the prompt `ids` (a chat's already through its template), with
    the request's sampling, format and logprobs."""
    out = {k: v for k, v in chat_or_completion.items() if k not in CHAT_ONLY_FIELDS}
    if chat_or_completion.get("logprobs"):
        out["logprobs"] = chat_or_completion.get("top_logprobs") or 1 \
            if chat_or_completion["logprobs"] is True else chat_or_completion["logprobs"]
    return {**out, "prompt": ids}


def _refuse_thinking(body: dict, backend: Backend, model: str) -> None:
    """Ollama's 400 for `think` (true, or a level) asked of a model that cannot think; a backend
    that cannot tell lets its server decide."""
    if body.get("think") and backend.thinks(model) is False:
        raise BadRequest(f'"{body["model"]}" does not support thinking', param="think")


def _capabilities(backend: Backend, model: str) -> list[str]:
    """/api/show's capabilities, as Ollama names them."""
    return ["completion", "tools", *(["vision"] if backend.sees_images() else []),
            *(["thinking"] if backend.thinks(model) else [])]


def _whole_context_penalty(body: dict, backend: Backend, model: str) -> None:
    """Ollama's repeat_last_n -1 (look back over the whole context) as the size of `model`'s
    context (as the request's num_ctx sizes it on the engine), which every backend takes:
    llama-server refuses -1."""
    if body.get("repeat_last_n") == -1:
        body["repeat_last_n"] = backend.context_size(model, body.get("num_ctx"))


def _num_ctx_of(body: dict) -> int | None:
    """A request's options.num_ctx, None for none (0 and below: the default, as in Ollama)."""
    num_ctx = (body.get("options") or {}).get("num_ctx")
    return int(num_ctx) if num_ctx is not None and num_ctx >= 1 else None


def _num_ctx_field(body: dict) -> dict:
    num_ctx = _num_ctx_of(body)
    return {"num_ctx": num_ctx} if num_ctx else {}


def _embed_inputs(value) -> list[str]:
    """/api/embed's `input` as a list: a string or an array of strings (Ollama's docs); an
    empty string or none at all means no input."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise BadRequest("invalid input type: expected a string or an array of strings", param="input")


def _check_option(key: str, value) -> None:
    """Ollama's own 400 for an option of the wrong type, naming the option (not the OpenAI
    field it becomes)."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key in INTEGER_OPTIONS and value is not None and not (is_number and value == int(value)):
        raise BadRequest(f"option {key!r} must be of type integer", param=f"options.{key}")
    if key in NUMBER_OPTIONS and value is not None and not is_number:
        raise BadRequest(f"option {key!r} must be of type number", param=f"options.{key}")
    if key == "stop" and value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise BadRequest(f"option {key!r} must be of type array of strings", param=f"options.{key}")


async def _ollama_ps(backend: Backend) -> list[dict]:
    upstream = await backend.native("GET", "/api/ps")
    if upstream.status != 200:
        upstream.close()
        return []
    return (await upstream.json()).get("models", [])


GO_MAX_DURATION_S = (2 ** 63 - 1) / 1e9     # Ollama's keep_alive "for good": time.Duration's maximum


def _running_entries(backend: Backend, num_ctx_run: dict[tuple[str, str], int | None]) -> list[dict]:
    """/api/ps for a backend that is not Ollama: the models it holds loaded (every listed one
    where the server keeps its own), when each is let go and the context it serves, as its
    last request's num_ctx sized it (`ollama ps` shows it as CONTEXT)."""
    until = backend.loaded_until()
    if until is None:                   # loaded for good, as far as anyone here can tell
        until = {m.id: math.inf for m in backend.models}
    return [{**_tag_entry(m), "expires_at": _expires_at(until[m.id]),
             "size_vram": m.size if backend.in_vram(m.id) else 0,    # `ollama ps`: "100% GPU" / "100% CPU"
             "context_length": backend.context_size(m.id, num_ctx_run.get((backend.name, tagged(m.id))))}
            for m in _loaded_infos(backend, until)]


def _loaded_infos(backend: Backend, until: dict[str, float]) -> list[ModelInfo]:
    """The loaded models' entries: the listed ones, then any whose file is gone while its last
    requests still run (out of the catalogue, still loaded until they end)."""
    listed = [m for m in backend.models if m.id in until]
    if len(listed) == len(until):
        return listed
    names = {m.id for m in listed}
    gone = (backend.loaded_model_info(name) for name in until if name not in names)
    return listed + [info for info in gone if info is not None]


def _expires_at(wall_time: float) -> str:
    """RFC 3339; a model kept for good expires as in Ollama, the longest Go duration from now
    (`ollama ps` shows it as Forever; 0001-01-01, the zero time, as Stopping...)."""
    return rfc3339(time.time() + GO_MAX_DURATION_S if math.isinf(wall_time) else wall_time)


def _model_info(info, backend: Backend) -> dict:
    """What clients size their prompts by: `<architecture>.context_length` (Continue, Open WebUI
    read it), the context a request gets on this backend, when the architecture is known."""
    arch = info.details.get("family", "")
    context = backend.context_size(info.id)
    return {"general.architecture": arch, **({f"{arch}.context_length": context} if arch else {})}


def _details(info) -> dict:
    return {"parent_model": "", "format": "gguf", "family": info.details.get("family", ""),
            "families": info.details.get("families") or [], "parameter_size": info.details.get("parameter_size", ""),
            "quantization_level": info.details.get("quantization_level", ""), **info.details}


def _tag_entry(info) -> dict:
    if info.raw.get("digest"):                  # Ollama's own entry (renamed when an alias lists it)
        return info.raw if info.raw.get("name") == info.id else {**info.raw, "name": info.id, "model": info.id}
    digest = hashlib.sha256((info.identity or info.id).encode()).hexdigest()
    return {"name": info.id, "model": info.id, "modified_at": _modified_at(info), "size": info.size,
            "digest": digest, "details": _details(info)}


def _modified_at(info) -> str:
    """The model's own time where the backend gives one (the engine: the file's mtime), else now."""
    return rfc3339(info.created) if info.created else now_rfc3339()


def _load_reply(model: str, message: bool, done_reason: str = "load") -> dict:
    """Ollama's answer to a request with nothing to generate (no prompt, no messages): the
    model is ready ("load"), or gone ("unload")."""
    text = {"message": {"role": "assistant", "content": ""}} if message else {"response": ""}
    return {"model": model, "created_at": now_rfc3339(), **text, "done": True, "done_reason": done_reason}


def _reply_from_openai(answer: dict, model: str, started: int, message: bool) -> dict:
    choice = answer["choices"][0]
    done = ollama_final_fields(answer.get("usage"), answer.get("timings"), started,
                               done_reason_of(choice.get("finish_reason")))
    out = {"model": model, "created_at": now_rfc3339()}
    msg = choice.get("message") or {}
    text = choice.get("text") if "text" in choice else msg.get("content") or ""   # a cut chat: a completion
    if message:
        out["message"] = {"role": "assistant", "content": text}
        if msg.get("tool_calls"):
            out["message"]["tool_calls"] = ollama_tool_calls(msg["tool_calls"])
    else:
        out["response"] = text
    _add_thinking(out, msg.get("reasoning_content"), message)
    _add_logprobs(out, choice)
    return {**out, **done, **_context_field(answer)}


def _context_field(answer: dict) -> dict:
    """The answer's Ollama `context` (the engine's, for a generate that is not raw) for the
    final object, where Ollama sends it."""
    return {"context": answer["context"]} if isinstance(answer.get("context"), list) else {}


def _add_logprobs(out: dict, choice: dict) -> None:
    logprobs = ollama_logprobs(choice.get("logprobs"))
    if logprobs:
        out["logprobs"] = logprobs


def _add_thinking(out: dict, thinking, message: bool) -> None:
    """The backend's reasoning where Ollama puts it: `message.thinking` (chat), `thinking`
    (generate)."""
    if thinking and isinstance(thinking, str):
        (out["message"] if message else out)["thinking"] = thinking


async def _ndjson_from_chunks(chunks, model: str, started: int, message: bool) -> AsyncIterator[bytes]:
    """OpenAI chunks -> Ollama NDJSON; tool calls are gathered and sent whole, as Ollama does."""
    calls: dict[int, dict] = {}
    finish, usage, timings, context = None, None, None, {}
    try:
        async with closing(chunks) as source_iter:
            async for chunk in source_iter:
                usage = chunk.get("usage") or usage
                timings = chunk.get("timings") or timings
                context = _context_field(chunk) or context
                for choice in chunk.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    text, thinking = _gather_delta(choice, calls)
                    partial = _partial(model, text, message, thinking)
                    _add_logprobs(partial, choice)
                    if text or thinking or "logprobs" in partial:
                        yield ndjson_line(partial)
    except VeloError as exc:
        yield ndjson_line(ollama_error_body(exc))
        return
    final = _partial(model, "", message)
    if calls and message:
        final["message"]["tool_calls"] = ollama_tool_calls([calls[i] for i in sorted(calls)])
    yield ndjson_line({**final, **ollama_final_fields(usage, timings, started, done_reason_of(finish)), **context})


def _partial(model: str, text: str, message: bool, thinking: str = "") -> dict:
    out = {"model": model, "created_at": now_rfc3339()}
    if message:
        out["message"] = {"role": "assistant", "content": text}
    else:
        out["response"] = text
    _add_thinking(out, thinking, message)
    return {**out, "done": False}


def _gather_delta(choice: dict, calls: dict[int, dict]) -> tuple[str, str]:
    """(content text, reasoning text) of a chunk choice; tool-call fragments are merged into `calls`."""
    if "text" in choice:
        return choice.get("text") or "", ""
    delta = choice.get("delta") or {}
    merge_tool_call_fragments(delta.get("tool_calls"), calls)
    return delta.get("content") or "", delta.get("reasoning_content") or ""
