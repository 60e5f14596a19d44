"""Any OpenAI-compatible server (vLLM, SGLang, TGI, LocalAI, LM Studio, llama.cpp's OpenAI endpoints).

How many requests it runs at once is asked where the server says it (SGLang's
/get_server_info `max_running_requests`, TGI's /info `max_concurrent_requests`), once per
start of the server; vLLM is recognised by its /metrics but does not state a width, and
neither do the others: those get the scheduler's adaptive limit. vLLM's version (its
/version) says how it reads a structured output (wire/vllm.py: guided_* or structured_outputs).
"""
from __future__ import annotations

import json
from typing import AsyncIterator, Awaitable, Callable

from ..errors import BackendError, NotImplementedByBackend, VeloError
from ..wire.request import GenerateRequest
from ..wire.vllm import (CONSTRAINT_KINDS, GENERATION_PROMPT_ASKS, SAMPLING_EXTRAS, STRUCTURED_OUTPUT_OPTIONS,
                         reads_structured_outputs, respell)
from .base import (Backend, ModelInfo, extract_error_message, listed_models, refuse_unhonoured, server_count,
                   server_width)

RERANK_PATH = "/v1/rerank"
RERANK_MISSING = (404, 405, 501)     # no route, or llama-server's "Start it with `--reranking`"
ROUTE_MISSING = (404, 405)           # no such route: not that server, or not started with what serves it
PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}   # by request endpoint
WIDTH_PROBES = (    # (path, server, the JSON field that states how many requests it runs at once)
    ("/get_server_info", "SGLang", "max_running_requests"),
    ("/info", "TGI", "max_concurrent_requests"),
)
VLLM_MARK = b"vllm:num_requests_running"    # a gauge only vLLM's /metrics exports


class OpenAIBackend(Backend):
    kind = "openai"
    supports_n = True
    defaults = {"temperature": 1.0, "top_p": 1.0}

    server: str | None = None        # which server it turned out to be, when it said
    server_version: str | None = None    # vLLM's version, as its GET /version states it
    serves_tokenizer_info = True         # vLLM's own, passed through (when it was started with it)
    serves_rerank = True                 # its /v1/rerank, when the server was started with a reranker
    forwards_tokenize = True             # vLLM's /tokenize and /detokenize, passed through

    async def discover(self) -> None:
        """The server's width, asked once per start (config `slots` wins when set)."""
        if self.config.slots or self.server is not None:
            return
        self.server = ""                                  # asked; unknown unless found below
        for path, server, field in WIDTH_PROBES:
            body = await self._probe(path)
            width = server_width(_json_field(body, field))
            if width:
                self.server, self.num_slots, self.slots_source = server, width, path
                return
        if VLLM_MARK in (await self._probe("/metrics") or b""):
            self.server = "vLLM"
            version = _json_field(await self._probe("/version"), "version")
            self.server_version = version if isinstance(version, str) and version else None

    async def _probe(self, path: str) -> bytes | None:
        """The body of GET `path` when it answers 200, else None (most servers lack it)."""
        try:
            response = await self.client.request("GET", path)
            body = await response.read()
        except VeloError:
            return None
        return body if response.status == 200 else None

    def forget_server(self) -> None:
        """The server went away: ask again when it is back (it may be another one)."""
        self.server = self.server_version = None
        if not self.config.slots:
            self.num_slots, self.slots_source = 1, None

    def status(self) -> dict:
        return {**super().status(), "server": self.server or None, "server_version": self.server_version}

    @property
    def vllm_fields(self) -> frozenset[str]:
        """vLLM's extras pass through to vLLM (or to a server not asked what it is: `slots` set);
        another server gets the sampling extras as before (SGLang and others read some), but
        no choice, regex or grammar, which they would ignore without a word."""
        if self.server in (None, "vLLM"):
            return ALL_VLLM_FIELDS
        return frozenset(SAMPLING_EXTRAS)

    async def list_models(self) -> list[ModelInfo]:
        body = await self.get_json("/v1/models")
        return [ModelInfo(id=m["id"], backend=self.name, created=server_count(m.get("created")) or 0, raw=m)
                for m in listed_models(body.get("data"), "id")]

    def upstream_body(self, request: GenerateRequest) -> dict:
        """The body sent upstream, without Ollama's own fields (no field of OpenAI's: a strict
        server refuses them); streams always ask for usage (metrics need it)."""
        refuse_unhonoured(request.body, self.vllm_fields, self.server or f"backend {self.name}")
        body = {k: v for k, v in request.body.items() if k not in OLLAMA_CONTEXT_FIELDS}
        _both_penalty_names(body)
        self._spell_structured_output(body)
        if request.stream:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return body

    def _spell_structured_output(self, body: dict) -> None:
        """A structured output as this vLLM's version reads it (guided_* before 0.10.2, then
        structured_outputs: 0.12.0 ignores guided_*); as the client sent it where the version
        is unknown (another server, `slots` set, no /version answer)."""
        structured_outputs = reads_structured_outputs(self.server_version) if self.server == "vLLM" else None
        if structured_outputs is not None:
            respell(body, structured_outputs)

    def chat(self, request: GenerateRequest) -> Awaitable[dict]:
        """post_json's coroutine itself, awaited by the caller (no coroutine of ours around it)."""
        return self.post_json(PATHS["chat"], self.upstream_body(request))

    def chat_stream(self, request: GenerateRequest) -> AsyncIterator[dict]:
        return self.stream_json(PATHS["chat"], self.upstream_body(request), sse=True)

    def completion(self, request: GenerateRequest) -> Awaitable[dict]:
        return self.post_json(PATHS["completion"], self.upstream_body(request))

    def completion_stream(self, request: GenerateRequest) -> AsyncIterator[dict]:
        return self.stream_json(PATHS["completion"], self.upstream_body(request), sse=True)

    def answer_events(self, request: GenerateRequest) -> AsyncIterator[list[bytes]]:
        return self.stream_events(PATHS[request.endpoint], self.upstream_body(request), sse=True)

    async def embeddings(self, body: dict) -> dict:
        """OpenAI's embeddings; Ollama's `truncate` is no field of theirs (an over-long input
        is the server's own error)."""
        return await self.post_json("/v1/embeddings", {k: v for k, v in body.items() if k not in OLLAMA_CONTEXT_FIELDS})

    def rerank(self, body: dict) -> Awaitable[dict]:
        """The server's own /v1/rerank (llama-server's and vLLM's path both). A server that has
        no such route (404, 405) or was not started for it (llama-server without --reranking:
        501) is a 501 naming this backend; any other error is the server's own."""
        def unavailable(status: int, message: str) -> VeloError:
            return self.rerank_unavailable(body["model"], f" (it answered {status}: {message})")
        return self._own_route("POST", RERANK_PATH, body, RERANK_MISSING, unavailable)

    def tokenizer_info(self, model: str) -> Awaitable[dict]:
        """The server's own GET /tokenizer_info as it answers it (vLLM serves it only when started
        with --enable-tokenizer-info-endpoint)."""
        return self._own_route("GET", "/tokenizer_info", None, ROUTE_MISSING, self._tokenizer_route_missing(
            "GET /tokenizer_info", model, "vLLM serves it when started with --enable-tokenizer-info-endpoint"))

    def forward_tokenize(self, path: str, body: dict) -> Awaitable[dict]:
        """vLLM's /tokenize or /detokenize, the body and answer as they are."""
        return self._own_route("POST", path, body, ROUTE_MISSING,
                               self._tokenizer_route_missing(f"POST {path}", body["model"], "vLLM serves it"))

    def _tokenizer_route_missing(self, route: str, model: str, hint: str) -> Callable[[int, str], VeloError]:
        def unavailable(status: int, message: str) -> VeloError:
            return NotImplementedByBackend(
                f"backend {self.name} ({self.server or self.kind}) has no {route} for model {model!r} "
                f"(it answered {status}); {hint}", param="model", code="tokenizer_unavailable")
        return unavailable

    async def _own_route(self, method: str, path: str, body: dict | None, missing: tuple[int, ...],
                         unavailable: Callable[[int, str], VeloError]) -> dict:
        """A route of the server's own (vLLM's, llama-server's), answered as it is (a JSON
        object); an answer whose status is in `missing` (no such route, or the server was not
        started with what serves it) is unavailable(status, its error message), a 501."""
        response = await self.client.request(method, path, json=body)
        if response.status in missing:
            message = extract_error_message(await response.read()) or f"HTTP {response.status}"
            raise unavailable(response.status, message)
        answer = await self.json_or_raise(response, body and body.get("model"))
        if not isinstance(answer, dict):
            raise BackendError(f"backend {self.name} answered {path} with no JSON object", code="backend_error")
        return answer


ALL_VLLM_FIELDS = frozenset((*CONSTRAINT_KINDS, *SAMPLING_EXTRAS, "prompt_logprobs", *GENERATION_PROMPT_ASKS,
                             *STRUCTURED_OUTPUT_OPTIONS))
OLLAMA_CONTEXT_FIELDS = frozenset({"truncate", "num_ctx", "num_keep"})    # the Ollama API's, read by the engine


def _both_penalty_names(body: dict) -> None:
    """The repetition penalty under both its names, when the request gave one: vLLM, SGLang
    and TGI read `repetition_penalty`, llama-server and LM Studio `repeat_penalty`; each
    ignores the other's without a word (the engine takes either)."""
    for name, other in (("repetition_penalty", "repeat_penalty"), ("repeat_penalty", "repetition_penalty")):
        if body.get(name) is not None and body.get(other) is None:
            body[other] = body[name]


def _json_field(body: bytes | None, field: str):
    try:
        value = json.loads(body) if body else None
    except (ValueError, RecursionError):
        return None
    return value.get(field) if isinstance(value, dict) else None
