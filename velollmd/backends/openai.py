"""Any OpenAI-compatible server (vLLM, LocalAI, LM Studio, llama.cpp's OpenAI endpoints)."""
from __future__ import annotations

import json
from typing import AsyncIterator

from ..api.request import GenerateRequest
from ..errors import BackendError, BadRequest
from ..http.sse import iter_sse_data
from .base import Backend, ModelInfo


class OpenAIBackend(Backend):
    kind = "openai"
    supports_n = True
    defaults = {"temperature": 1.0, "top_p": 1.0}

    async def list_models(self) -> list[ModelInfo]:
        body = await self.get_json("/v1/models")
        return [ModelInfo(id=m["id"], backend=self.name, created=int(m.get("created") or 0), raw=m)
                for m in body.get("data", []) if isinstance(m, dict) and "id" in m]

    def upstream_body(self, request: GenerateRequest) -> dict:
        """The body sent upstream; streams always ask for usage (metrics need it)."""
        body = dict(request.body)
        if request.stream:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        if body.get("n", 1) > 1 and not self.supports_n:
            raise BadRequest(f"backend {self.name} ({self.kind}) does not support n > 1",
                             param="n", code="unsupported_value")
        return body

    async def chat(self, request: GenerateRequest) -> dict:
        return await self.post_json("/v1/chat/completions", self.upstream_body(request))

    def chat_stream(self, request: GenerateRequest) -> AsyncIterator[dict]:
        return self.stream_events("/v1/chat/completions", self.upstream_body(request))

    async def completion(self, request: GenerateRequest) -> dict:
        return await self.post_json("/v1/completions", self.upstream_body(request))

    def completion_stream(self, request: GenerateRequest) -> AsyncIterator[dict]:
        return self.stream_events("/v1/completions", self.upstream_body(request))

    async def embeddings(self, body: dict) -> dict:
        return await self.post_json("/v1/embeddings", body)

    async def stream_events(self, path: str, body: dict) -> AsyncIterator[dict]:
        """Upstream SSE events as dicts; an error event becomes a BackendError."""
        response = await self.client.request("POST", path, json=body)
        if response.status >= 400:
            raise await self.error_from(response, body.get("model"))
        try:
            async for data in iter_sse_data(response.iter_lines()):
                if data == b"[DONE]":
                    continue                  # read on to the end so the connection is reused
                event = _decode_event(data, self.name)
                if "error" in event:
                    raise BackendError(f"backend {self.name} failed mid-stream: "
                                       f"{_error_text(event['error'])}", code="backend_error")
                yield event
        finally:
            response.close()


def _decode_event(data: bytes, name: str) -> dict:
    try:
        event = json.loads(data)
    except ValueError:
        raise BackendError(f"backend {name} sent a non-JSON stream event: {data[:200]!r}") from None
    if not isinstance(event, dict):
        raise BackendError(f"backend {name} sent a stream event that is not an object")
    return event


def _error_text(error) -> str:
    return error.get("message", str(error)) if isinstance(error, dict) else str(error)
