"""One request through the daemon, whatever API it came in by.

`Service.generate` takes a GenerateRequest and returns an Outcome: a whole OpenAI response
or a stream of OpenAI chunks, plus response headers. The steps (cache, scheduling, backend,
tool-call repair, metrics) each live in their own module; this file only puts them in order.
A stream is primed (its first chunk awaited) before the Outcome is returned, so that a
backend failing before its first byte still gets a proper HTTP error status.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator

from .api.request import GenerateRequest
from .backends.base import Backend
from .backends.registry import Registry


@dataclass
class Outcome:
    headers: dict[str, str] = field(default_factory=dict)
    body: dict | None = None                          # non-streaming answer
    chunks: AsyncIterator[dict] | None = None         # streaming answer (OpenAI chunks)


class Service:
    def __init__(self, registry: Registry):
        self.registry = registry

    async def generate(self, request: GenerateRequest) -> Outcome:
        backend = self.registry.pick(request.model)
        headers = {"x-velollm-backend": backend.name}
        if request.stream:
            chunks = await prime(self._stream(backend, request))
            return Outcome(headers, chunks=chunks)
        body = await self._call(backend, request)
        body["model"] = request.model
        return Outcome(headers, body=body)

    async def _call(self, backend: Backend, request: GenerateRequest) -> dict:
        if request.endpoint == "chat":
            return await backend.chat(request)
        return await backend.completion(request)

    async def _stream(self, backend: Backend, request: GenerateRequest) -> AsyncIterator[dict]:
        source = backend.chat_stream(request) if request.endpoint == "chat" else backend.completion_stream(request)
        async for chunk in strip_usage(source, request.include_usage):
            chunk["model"] = request.model
            yield chunk

    async def embeddings(self, body: dict) -> Outcome:
        backend = self.registry.pick(body["model"])
        answer = await backend.embeddings(body)
        answer["model"] = body["model"]
        return Outcome({"x-velollm-backend": backend.name}, body=answer)


async def strip_usage(chunks: AsyncIterator[dict], include_usage: bool) -> AsyncIterator[dict]:
    """Drop the usage-only chunk (choices == []) unless the client asked for it; usage
    on ordinary chunks is removed too, as OpenAI sends it only in that last chunk."""
    async for chunk in chunks:
        if not chunk.get("choices"):
            if include_usage and chunk.get("usage") is not None:
                yield chunk
            continue
        if not include_usage:
            chunk.pop("usage", None)
        elif "usage" in chunk and chunk["usage"] is not None:
            chunk["usage"] = None
        yield chunk


async def prime(stream: AsyncIterator) -> AsyncIterator:
    """Await the first item now (errors surface here), then return an iterator of all items."""
    iterator = stream.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:
        await _aclose(iterator)
        raise
    return _chain(first, iterator)


async def _chain(first, iterator) -> AsyncIterator:
    try:
        if first is not None:
            yield first
            async for item in iterator:
                yield item
    finally:
        await _aclose(iterator)


async def _aclose(iterator) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
