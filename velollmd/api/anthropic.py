"""The Anthropic Messages API: POST /v1/messages (also `?beta=true`), POST
/v1/messages/count_tokens, and GET /v1/models in Anthropic's shape for clients that send
`anthropic-version`.

A translation layer like the Ollama one: the request becomes an OpenAI chat body
(wire/anthropic.py) served by the same pipeline (cache, single-flight, scheduling, tool-call
repair), and the answer or the chunks become an Anthropic message or event stream
(wire/anthropic_reply.py). Every failure on these routes, auth included, is answered in
Anthropic's error shape {"type": "error", "error": {"type", "message"}}; so is any error for
a request that carries `anthropic-version`.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import AsyncIterator

from ..backends.registry import Registry
from ..core.pipeline import Pipeline
from ..core.service import Service
from ..errors import CONTEXT_LENGTH_EXCEEDED, BadRequest, VeloError
from ..http.message import JSON_TYPE, Request, Response
from ..http.sse import SSE_HEADERS, named_event
from ..log import current_request_id
from ..wire import wirejson
from ..wire.anthropic import anthropic_to_chat
from ..wire.anthropic_reply import MessageEvents, chat_to_message, error_body
from ..wire.streams import closing
from .access import Access
from .anthropic_validate import check_messages_request
from .openai import OpenAIRoutes
from .token_count import TOKEN_COUNT_HEADER, count_prompt_tokens, estimate_tokens
from .validate import validate_chat

log = logging.getLogger("velollmd.api.anthropic")
PING = b'event: ping\ndata: {"type":"ping"}\n\n'
MAX_PAGE = 1000
PROMPT_TOO_LONG = "prompt is too long"


def wants_anthropic_errors(request: Request) -> bool:
    """Errors for this request in Anthropic's shape: the Messages routes, or an Anthropic client."""
    return request.path.startswith("/v1/messages") or request.header("anthropic-version") is not None


def anthropic_error(exc: VeloError) -> Response:
    headers = [("content-type", JSON_TYPE), *exc.headers.items()]
    return Response(exc.status, headers, wirejson.dumps(anthropic_error_body(exc)))


def anthropic_error_body(exc: VeloError) -> dict:
    """Anthropic's error shape with its top-level `request_id` (the x-request-id answered). A
    prompt over the context starts as Anthropic's does ("prompt is too long: ..."): it has no
    error code, and clients (Claude Code's compaction, LiteLLM) know it by that message."""
    message = exc.message
    if exc.code == CONTEXT_LENGTH_EXCEEDED:
        message = f"{PROMPT_TOO_LONG}: {message}"
    body = error_body(exc.status, message)
    request_id = current_request_id()
    if request_id is not None:
        body["request_id"] = request_id
    return body


def anthropic_route(handler):
    """Errors in Anthropic's shape for Anthropic requests; in OpenAI's for the others that a
    shared route (GET /v1/models*) serves."""
    async def wrapped(self, request: Request, **params) -> Response:
        try:
            return await handler(self, request, **params)
        except VeloError as exc:
            return _error(request, exc)
        except Exception:                        # never a traceback on the wire
            log.exception("anthropic route failed for %s %s", request.method, request.path)
            return _error(request, VeloError("internal server error", status=500))
    return wrapped


def _error(request: Request, exc: VeloError) -> Response:
    return anthropic_error(exc) if wants_anthropic_errors(request) else Response.error(exc)


class AnthropicRoutes:
    def __init__(self, access: Access, registry: Registry, pipeline: Pipeline, service: Service,
                 openai: OpenAIRoutes, *, sse_ping_s: float):
        self.access, self.registry, self.pipeline, self.service = access, registry, pipeline, service
        self.openai = openai                     # answers GET /v1/models for everyone else
        self.sse_ping_s = sse_ping_s

    def register(self, router) -> None:
        """After the OpenAI routes: GET /v1/models* is shared, by the anthropic-version header."""
        router.add("POST", "/v1/messages", self.messages)
        router.add("POST", "/v1/messages/count_tokens", self.count_tokens)
        router.add("GET", "/v1/models", self.list_models)
        router.add("GET", "/v1/models/{model_id}", self.get_model)

    @anthropic_route
    async def messages(self, request: Request) -> Response:
        body = check_messages_request(request.json())
        chat = validate_chat(anthropic_to_chat(body))
        generate = self.access.generate_request(request, "chat", chat)
        generate.report_stop_word = bool(body.get("stop_sequences"))
        outcome = await self.pipeline.generate(generate)
        headers = list(outcome.headers.items())
        stops = body.get("stop_sequences")
        if outcome.chunks is None:
            return Response.json(chat_to_message(outcome.body, body["model"], stops), headers=headers)
        events = MessageEvents(body["model"], estimate_tokens(generate), stops)
        return Response(200, [*SSE_HEADERS, *headers], stream=event_frames(events, outcome.chunks),
                        idle_ping=PING, idle_ping_s=self.sse_ping_s)

    @anthropic_route
    async def count_tokens(self, request: Request) -> Response:
        body = check_messages_request(request.json(), count_only=True)
        chat = validate_chat(anthropic_to_chat(body))
        key_name = self.access.admit(request, chat["model"], defer=True)   # a key's model globs and limits
        await self.pipeline.admit(key_name)                           # shared when they are
        chat["model"] = self.registry.resolve(chat["model"])          # an alias counts as its model
        count, how = await count_prompt_tokens(self.registry, chat)
        return Response.json({"input_tokens": count}, headers=[(TOKEN_COUNT_HEADER, how)])

    @anthropic_route
    async def list_models(self, request: Request) -> Response:
        if request.header("anthropic-version") is None:
            return await self.openai.list_models(request)
        await self.registry.freshen()
        models = [self._model(m) for m in self.access.visible_models(request, self.registry.catalogue())]
        page, has_more = _page(models, request.query_params())
        return Response.json({"data": page, "has_more": has_more,
                              "first_id": page[0]["id"] if page else None,
                              "last_id": page[-1]["id"] if page else None})

    @anthropic_route
    async def get_model(self, request: Request, model_id: str) -> Response:
        if request.header("anthropic-version") is None:
            return await self.openai.get_model(request, model_id)
        self.access.check_model(self.access.key_name_of(request), model_id)
        await self.registry.freshen()
        return Response.json(self._model(self.registry.find_model(model_id)))

    def _model(self, info) -> dict:
        created = datetime.fromtimestamp(info.created or self.access.started_at, timezone.utc)
        return {"type": "model", "id": info.id, "display_name": info.id,
                "created_at": created.isoformat().replace("+00:00", "Z")}


def _page(models: list[dict], params: dict[str, str]) -> tuple[list[dict], bool]:
    """(page, has_more) by Anthropic's list paging: `limit` (1..1000, default 20), then
    `after_id` or `before_id`."""
    try:
        limit = int(params.get("limit", 20))
    except ValueError:
        raise BadRequest("limit: expected an integer", param="limit") from None
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit: must be between 1 and {MAX_PAGE}", param="limit")
    ids = [m["id"] for m in models]
    if "before_id" in params:
        end = ids.index(params["before_id"]) if params["before_id"] in ids else 0
        start = max(0, end - limit)
        return models[start:end], start > 0
    start = ids.index(params["after_id"]) + 1 if params.get("after_id") in ids else 0
    if "after_id" in params and params["after_id"] not in ids:
        start = len(ids)
    return models[start:start + limit], start + limit < len(models)


async def event_frames(events: MessageEvents, chunks: AsyncIterator[dict]) -> AsyncIterator[bytes]:
    """The SSE frames of an Anthropic stream; a failure midway becomes an `error` event and
    the stream ends there (no message_stop), which is how Anthropic clients learn of it."""
    for name, data in events.start():
        yield named_event(name, data)
    try:
        async with closing(chunks) as source_iter:
            async for chunk in source_iter:
                frames = events.feed(chunk)
                if frames:
                    yield b"".join(named_event(name, data) for name, data in frames)
    except VeloError as exc:
        yield named_event("error", anthropic_error_body(exc))
        return
    yield b"".join(named_event(name, data) for name, data in events.finish())
