"""One benchmark endpoint: API detection, default model, and one timed streaming request.

OpenAI-compatible endpoints are streamed over SSE with `stream_options.include_usage` (the
completion token count then comes from `usage`); Ollama-native endpoints over NDJSON from
/api/chat (`eval_count`). Without a reported count, the number of content chunks is used.
Timing uses time.perf_counter(): TTFT is the first chunk that carries content, inter-token
latencies are the gaps between content chunks.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from ...errors import VeloError
from ...http.client import HTTPClient
from ..remote import base_url, error_line, error_message

CACHE_HEADER = "x-velollm-cache"
APIS = ("auto", "openai", "ollama")


class EndpointError(Exception):
    """The endpoint cannot be benchmarked (unreachable, no models, unknown API)."""


@dataclass
class RequestResult:
    ok: bool
    latency_s: float
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    num_tokens: int = 0
    num_prompt_tokens: int | None = None      # as the server reported it, if it did
    text: str = ""
    cache_hit: bool = False
    error: str = ""

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed: tokens after the first over the time from first to last token."""
        if not self.ok or self.ttft_s is None or self.num_tokens < 1:
            return None
        gen_s = self.latency_s - self.ttft_s
        if self.num_tokens > 1 and gen_s > 0:
            return (self.num_tokens - 1) / gen_s
        return self.num_tokens / self.latency_s if self.latency_s > 0 else None


class Endpoint:
    """A server under test; `open()` detects the API and the model."""

    def __init__(self, url: str, label: str, api: str = "auto", model: str | None = None,
                 api_key: str | None = None, timeout_s: float = 300.0, name: str | None = None):
        self.url = base_url(url)
        self.label = label
        self.name = name                  # a human name for tables and the chart's legend
        self.api = api
        self.model = model
        self.chars_per_token: float | None = None     # measured by bench.calibrate()
        headers = {"authorization": f"Bearer {api_key}"} if api_key else None
        self.client = HTTPClient(self.url, connect_timeout=5.0, read_timeout=timeout_s, headers=headers)

    async def open(self) -> Endpoint:
        if self.api == "auto":
            self.api = await self._detect_api()
        if not self.model:
            models = await self._list_models()
            if not models:
                raise EndpointError(f"{self.url} lists no models; pass --model")
            self.model = models[0]
        return self

    async def close(self) -> None:
        await self.client.close()

    async def _get_json(self, path: str):
        try:
            response = await self.client.request("GET", path)
            body = await response.read()
        except VeloError as exc:
            raise EndpointError(f"{self.url}: {error_line(exc)}") from None
        if response.status != 200:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return None

    async def _detect_api(self) -> str:
        if isinstance(await self._get_json("/v1/models"), dict):
            return "openai"
        if isinstance(await self._get_json("/api/tags"), dict):
            return "ollama"
        raise EndpointError(f"{self.url} answers neither GET /v1/models nor GET /api/tags")

    async def _list_models(self) -> list[str]:
        if self.api == "openai":
            body = await self._get_json("/v1/models") or {}
            return [m["id"] for m in body.get("data", []) if isinstance(m, dict) and "id" in m]
        body = await self._get_json("/api/tags") or {}
        return [m["name"] for m in body.get("models", []) if isinstance(m, dict) and "name" in m]

    async def stream_chat(self, messages: list[dict], max_tokens: int) -> RequestResult:
        """Send one streaming chat request and time it; never raises for server errors."""
        start = time.perf_counter()
        timer = _TokenTimer(start)
        try:
            if self.api == "ollama":
                cache_hit, error = await self._stream_ollama(messages, max_tokens, timer)
            else:
                cache_hit, error = await self._stream_openai(messages, max_tokens, timer)
        except VeloError as exc:
            cache_hit, error = False, error_line(exc)
        except ValueError:
            cache_hit, error = False, "the stream carried invalid JSON"
        except OSError as exc:
            cache_hit, error = False, f"{type(exc).__name__}: {exc}"
        return timer.result(time.perf_counter() - start, cache_hit, error)

    async def _stream_openai(self, messages, max_tokens, timer: _TokenTimer) -> tuple[bool, str]:
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "stream": True,
                "temperature": 0, "stream_options": {"include_usage": True}}
        response = await self.client.request("POST", "/v1/chat/completions", json=body)
        cache_hit = _is_cache_hit(response)
        if response.status != 200:
            return cache_hit, _error_text(response.status, await response.read())
        async for data in response.iter_sse():
            if data == b"[DONE]":
                continue          # read on to the end so that the connection can be reused
            event = json.loads(data)
            if "error" in event:
                response.close()
                return cache_hit, _error_text(200, data)
            for choice in event.get("choices") or ():
                delta = choice.get("delta") or {}
                timer.chunk(delta.get("content") or delta.get("reasoning_content") or "",
                            bool(delta.get("tool_calls")))
            if event.get("usage"):
                timer.reported_tokens = event["usage"].get("completion_tokens")
                timer.prompt_tokens = event["usage"].get("prompt_tokens")
        return cache_hit, ""

    async def _stream_ollama(self, messages, max_tokens, timer: _TokenTimer) -> tuple[bool, str]:
        body = {"model": self.model, "messages": messages, "stream": True,
                "options": {"num_predict": max_tokens, "temperature": 0}}
        response = await self.client.request("POST", "/api/chat", json=body)
        cache_hit = _is_cache_hit(response)
        if response.status != 200:
            return cache_hit, _error_text(response.status, await response.read())
        async for line in response.iter_lines():
            if not line.strip():
                continue
            event = json.loads(line)
            if "error" in event:
                response.close()
                return cache_hit, _error_text(200, line)
            message = event.get("message") or {}
            timer.chunk(message.get("content") or message.get("thinking") or "",
                        bool(message.get("tool_calls")))
            if event.get("done"):
                timer.reported_tokens = event.get("eval_count")
                timer.prompt_tokens = event.get("prompt_eval_count")
        return cache_hit, ""


class _TokenTimer:
    """Arrival times of content chunks during one request."""

    def __init__(self, start: float):
        self.start = start
        self.first: float | None = None
        self.last: float | None = None
        self.itl_s: list[float] = []
        self.num_chunks = 0
        self.pieces: list[str] = []
        self.reported_tokens: int | None = None
        self.prompt_tokens: int | None = None

    def chunk(self, content: str, has_tool_call: bool = False) -> None:
        if not content and not has_tool_call:
            return
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        else:
            self.itl_s.append(now - self.last)
        self.last = now
        self.num_chunks += 1
        self.pieces.append(content)

    def result(self, latency_s: float, cache_hit: bool, error: str) -> RequestResult:
        ttft = None if self.first is None else self.first - self.start
        num_tokens = self.reported_tokens if isinstance(self.reported_tokens, int) else self.num_chunks
        ok = not error and num_tokens > 0
        if not error and not ok:
            error = "the stream ended without any content"
        prompt_tokens = self.prompt_tokens if isinstance(self.prompt_tokens, int) else None
        return RequestResult(ok, latency_s, ttft, self.itl_s, num_tokens if ok else 0, prompt_tokens,
                             "".join(self.pieces), cache_hit, error)


def _is_cache_hit(response) -> bool:
    return (response.header(CACHE_HEADER) or "").startswith("hit-")


def _error_text(status: int, body: bytes) -> str:
    """`HTTP 400: message` from an OpenAI- or Ollama-shaped error body."""
    text = error_message(body)
    return f"HTTP {status}: {text}" if status != 200 else f"stream error: {text}"
