"""Who is calling and whether the daemon takes their request: API keys, priorities, draining.

Every route asks the same `Access`, so that the OpenAI and Ollama front doors (and the next
ones) read keys and priorities one way.
"""
from __future__ import annotations

import hmac
import time

from ..config import SchedulerConfig, ServerConfig
from ..errors import BadRequest, Unauthorized, Unavailable
from ..http.message import Request
from ..log import current_request
from ..wire.request import GenerateRequest

PUBLIC_PATHS = frozenset({"/health", "/", "/metrics"})
PRIORITY_HEADER = "x-velollm-priority"


class Access:
    def __init__(self, server: ServerConfig, scheduler: SchedulerConfig):
        self.server = server
        self.scheduler = scheduler
        self.draining = False
        self.started_at = time.time()
        self._api_keys = tuple(k.encode() for k in server.api_keys)

    @property
    def keys_required(self) -> bool:
        return bool(self._api_keys)

    def check(self, request: Request) -> None:
        """401 unless the path is public or the request carries a configured API key."""
        if self._api_keys and request.path not in PUBLIC_PATHS:
            supplied = self.key_of(request).encode()
            if not any(hmac.compare_digest(supplied, k) for k in self._api_keys):
                raise Unauthorized("invalid or missing API key", code="invalid_api_key")

    def key_of(self, request: Request) -> str:
        """The caller's API key: a Bearer token or x-api-key ("" when none)."""
        auth = request.header("authorization", "")
        return auth[7:].strip() if auth[:7].lower() == "bearer " else request.header("x-api-key", "")

    def priority_of(self, request: Request, key: str | None = None) -> int:
        """x-velollm-priority (0 highest .. 9), else the API key's configured priority."""
        raw = request.header(PRIORITY_HEADER)
        if raw is not None:
            if not (len(raw) == 1 and raw in "0123456789"):
                raise BadRequest(f"{PRIORITY_HEADER} must be a digit 0..9", param=PRIORITY_HEADER)
            return int(raw)
        key = self.key_of(request) if key is None else key
        return self.scheduler.key_priorities.get(key, self.scheduler.default_priority)

    def generate_request(self, request: Request, endpoint: str, body: dict, *, key: str | None = None,
                         raw_key: str = "") -> GenerateRequest:
        """The internal request for an API call, with its headers, the caller's key and
        priority (each read once); 503 while the daemon drains."""
        self.refuse_if_draining()
        key = self.key_of(request) if key is None else key
        trace = current_request()
        if trace is not None:
            trace.model = body.get("model")
        return GenerateRequest(endpoint, body, headers=dict(request.headers), api_key=key,
                               priority=self.priority_of(request, key), raw_key=raw_key)

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise Unavailable("server is shutting down", headers={"retry-after": "1"})
