"""Any OpenAI-compatible server (vLLM, LocalAI, LM Studio, llama.cpp's OpenAI endpoints)."""
from __future__ import annotations

from typing import AsyncIterator

from ..errors import BadRequest
from ..wire.request import GenerateRequest
from .base import Backend, ModelInfo

PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}   # by request endpoint


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
        return await self.post_json(PATHS["chat"], self.upstream_body(request))

    def chat_stream(self, request: GenerateRequest) -> AsyncIterator[dict]:
        return self.stream_json(PATHS["chat"], self.upstream_body(request), sse=True)

    async def completion(self, request: GenerateRequest) -> dict:
        return await self.post_json(PATHS["completion"], self.upstream_body(request))

    def completion_stream(self, request: GenerateRequest) -> AsyncIterator[dict]:
        return self.stream_json(PATHS["completion"], self.upstream_body(request), sse=True)

    def answer_events(self, request: GenerateRequest) -> AsyncIterator[list[bytes]]:
        return self.stream_events(PATHS[request.endpoint], self.upstream_body(request), sse=True)

    async def embeddings(self, body: dict) -> dict:
        return await self.post_json("/v1/embeddings", body)
