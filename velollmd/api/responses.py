"""The OpenAI Responses API: POST /v1/responses, GET and DELETE /v1/responses/{id},
GET /v1/responses/{id}/input_items.

POST /v1/responses/input_tokens counts a request's prompt; POST /v1/responses/{id}/cancel
answers that only background responses (which this server does not run) can be cancelled.

A translation layer, as the Ollama dialect is: the request becomes an internal chat body
(wire/responses_input.py) and goes through the same pipeline as /v1/chat/completions (cache,
single-flight, scheduling, the tool-call layer that repairs broken calls); the chat answer or
chunks become a `response` object or its event stream (wire/responses.py,
wire/responses_stream.py). Responses made with `store: true` (the default) are kept in a
bounded ResponseStore (kept across restarts in [responses] path) so that `previous_response_id`
continues a conversation and an `item_reference` names a stored item. Hosted tools that cannot run here but that clients send
by default (web_search) are dropped, said in the `x-velollm-dropped-tools` header. Errors keep
OpenAI's shape; a mid-stream failure is a `response.failed` event.
"""
from __future__ import annotations

from typing import AsyncIterator, Callable

from ..core.pipeline import Pipeline
from ..errors import CONTEXT_LENGTH_EXCEEDED, BadRequest, NotFound, VeloError
from ..http.message import Request, Response
from ..http.sse import PING, SSE_HEADERS
from ..wire import wirejson
from ..wire.ids import stored_response_id
from ..wire.outcome import Outcome
from ..wire.responses import ResponseDraft, response_from_chat
from ..wire.responses_input import (
    chat_body,
    dropped_tool_types,
    input_items,
    instructions_message,
    items_to_messages,
    resolve_references,
    oldest_turns_dropped,
)
from ..wire.responses_items import item_page, stored_item, with_unique_ids
from ..wire.responses_stream import ResponseEvents
from ..wire.streams import closing
from .access import Access
from .response_store import StoreSnapshots
from .token_count import TOKEN_COUNT_HEADER, count_prompt_tokens
from .validate import validate_chat
from .validate_responses import validate_responses

Keep = Callable[[dict], None]
DROPPED_TOOLS_HEADER = "x-velollm-dropped-tools"
ORDERS = ("asc", "desc")


def event_frame(event: dict) -> bytes:
    """One SSE event named by its type, as OpenAI sends them (`event:` then `data:`)."""
    return b"event: " + event["type"].encode() + b"\ndata: " + wirejson.dumps(event) + b"\n\n"


def frames(events: list[dict]) -> bytes:
    return b"".join(map(event_frame, events))


class ResponsesRoutes:
    def __init__(self, access: Access, pipeline: Pipeline, snapshots: StoreSnapshots, *, sse_ping_s: float):
        self.access, self.pipeline = access, pipeline
        self.store, self.snapshots = snapshots.store, snapshots
        self.sse_ping_s = sse_ping_s

    def register(self, router) -> None:
        router.add("POST", "/v1/responses", self.create)
        router.add("POST", "/v1/responses/input_tokens", self.input_tokens)
        router.add("POST", "/v1/responses/{response_id}/cancel", self.cancel)
        # before /v1/responses/{response_id}: a path parameter matches slashes, the first pattern wins
        router.add("GET", "/v1/responses/{response_id}/input_items", self.list_input_items)
        router.add("GET", "/v1/responses/{response_id}", self.retrieve)
        router.add("DELETE", "/v1/responses/{response_id}", self.delete)

    async def create(self, request: Request) -> Response:
        key = self.access.key_of(request)
        body = validate_responses(request.json())
        chat, stored = self._chat_of(body, key)
        outcome = await self._generate(request, chat, key, truncate=body.get("truncation") == "auto")
        draft = ResponseDraft(stored_response_id(), body)
        keep = self._keeper(key, stored) if body.get("store", True) else _forget
        headers = list(outcome.headers.items())
        dropped = dropped_tool_types(body.get("tools"))
        if dropped:
            headers.append((DROPPED_TOOLS_HEADER, ",".join(dropped)))
        if outcome.chunks is None:
            response = response_from_chat(draft, outcome.body)
            keep(response)
            return Response.json(response, headers=headers)
        return Response(200, [*SSE_HEADERS, *headers], stream=self._events(outcome.chunks, draft, keep),
                        idle_ping=PING, idle_ping_s=self.sse_ping_s)

    async def _generate(self, request: Request, chat: dict, key: str, *, truncate: bool) -> Outcome:
        """The chat's answer. With truncation "auto", a conversation over the model's context
        loses its oldest turns until it fits, as OpenAI drops "items from the beginning": 1,
        then 2, 4, 8... turns (a refusal costs the backend a tokenization, so a few tries)."""
        over_context = None
        for messages in oldest_turns_dropped(chat["messages"]) if truncate else [chat["messages"]]:
            try:
                return await self.pipeline.generate(
                    self.access.generate_request(request, "chat", {**chat, "messages": messages}, key=key))
            except BadRequest as exc:
                if not truncate or exc.code != CONTEXT_LENGTH_EXCEEDED:
                    raise
                over_context = exc
        raise over_context

    async def input_tokens(self, request: Request) -> Response:
        """The prompt tokens a request with this body would have (previous turns included)."""
        key = self.access.key_of(request)
        chat, _ = self._chat_of(validate_responses(request.json(), count_only=True), key)
        key_name = self.access.admit(request, chat["model"], key=key, defer=True)   # a key's model globs and limits
        await self.pipeline.admit(key_name)                                       # shared when they are
        chat["model"] = self.pipeline.registry.resolve(chat["model"])    # an alias counts as its model
        count, how = await count_prompt_tokens(self.pipeline.registry, chat)
        return Response.json({"object": "response.input_tokens", "input_tokens": count},
                             headers=[(TOKEN_COUNT_HEADER, how)])

    async def cancel(self, request: Request, response_id: str) -> Response:
        self._record(response_id, self.access.key_of(request))          # an unknown id: 404
        raise BadRequest("Only responses created with background=true can be cancelled, and this server "
                         "does not run background responses", param="response_id")

    async def retrieve(self, request: Request, response_id: str) -> Response:
        if request.query_params().get("stream") in ("true", "1"):
            raise BadRequest("streaming a stored response again is not supported; retrieve it whole",
                             param="stream")
        return Response.json(self._record(response_id, self.access.key_of(request))["response"])

    async def delete(self, request: Request, response_id: str) -> Response:
        if not self.store.delete(response_id, self.access.key_of(request)):
            raise _not_found(response_id)
        await self.snapshots.removed()
        return Response.json({"id": response_id, "object": "response", "deleted": True})

    async def list_input_items(self, request: Request, response_id: str) -> Response:
        """The input items that led to a stored response (earlier turns included), paged."""
        record = self._record(response_id, self.access.key_of(request))
        params = request.query_params()
        order, limit = params.get("order", "desc"), params.get("limit", "20")
        if order not in ORDERS:
            raise BadRequest("Invalid 'order': must be 'asc' or 'desc'", param="order")
        if not limit.isdigit() or not 1 <= int(limit) <= 100:
            raise BadRequest("Invalid 'limit': must be an integer between 1 and 100", param="limit")
        page = item_page(record["input"], order=order, after=params.get("after"), limit=int(limit))
        return Response.json(page)

    def _chat_of(self, body: dict, key: str) -> tuple[dict, list[dict]]:
        """The chat body for a validated Responses body, and the input items a stored
        response keeps (the earlier turns' first)."""
        history = self._history(body.get("previous_response_id"), key)
        raw = body.get("input")
        items = [] if raw is None else resolve_references(input_items(raw),
                                                          lambda item: self.store.find_item(item, key))
        messages = instructions_message(body.get("instructions"))
        items_to_messages(history, "previous_response_id", messages)
        chat = validate_chat(chat_body(body, items_to_messages(items, "input", messages)))
        return chat, with_unique_ids(history + [stored_item(item) for item in items])

    # -- the store -----------------------------------------------------------------------

    def _history(self, previous_id: str | None, key: str) -> list[dict]:
        """The items a continuation starts from: the earlier input, then the earlier output."""
        if previous_id is None:
            return []
        record = self.store.get(previous_id, key)
        if record is None:
            raise NotFound(f"Previous response with id '{previous_id}' not found.",
                           param="previous_response_id", code="previous_response_not_found")
        return record["input"] + record["response"]["output"]

    def _record(self, response_id: str, key: str) -> dict:
        record = self.store.get(response_id, key)
        if record is None:
            raise _not_found(response_id)
        return record

    def _keeper(self, key: str, items: list[dict]) -> Keep:
        def keep(response: dict) -> None:
            self.store.put(response["id"], key, {"response": response, "input": items})
        return keep

    # -- streaming -----------------------------------------------------------------------

    async def _events(self, chunks: AsyncIterator[dict], draft: ResponseDraft,
                      keep: Keep) -> AsyncIterator[bytes]:
        """Chat chunks -> Responses event frames, one write per chunk; stored before the last."""
        events = ResponseEvents(draft)
        yield frames(events.start())
        try:
            async with closing(chunks) as source_iter:
                async for chunk in source_iter:
                    out = events.feed(chunk)
                    if out:
                        yield frames(out)
        except VeloError as exc:
            last = events.fail(exc.message, exc.status)
        else:
            last = events.finish()
        keep(events.response)
        yield frames(last)


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id",
                    code="response_not_found")


def _forget(response: dict) -> None:
    """store: false: nothing is kept."""
