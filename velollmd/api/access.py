"""Who is calling and whether the daemon takes their request: API keys, priorities, draining.

Every route asks the same `Access`, so that the OpenAI and Ollama front doors (and the next
ones) read keys and priorities one way.
"""
from __future__ import annotations

import hmac
import time

from ..config import SchedulerConfig, ServerConfig, configured_digest, supplied_digest
from ..errors import BadRequest, Unauthorized, Unavailable
from ..http.message import Request
from ..wire.request import GenerateRequest

PUBLIC_PATHS = frozenset({"/health"})
METRICS_PATH = "/metrics"
PRIORITY_HEADER = "x-velollm-priority"


class Access:
    def __init__(self, server: ServerConfig, scheduler: SchedulerConfig):
        self.draining = False
        self.started_at = time.time()
        self.configure(server, scheduler)

    def configure(self, server: ServerConfig, scheduler: SchedulerConfig) -> None:
        """Take (new) keys and priorities; requests already admitted keep going."""
        self.server = server
        self.scheduler = scheduler
        self._api_keys = tuple(configured_digest(k) for k in server.api_keys)     # SHA-256 digests
        metrics_key = (configured_digest(server.metrics_key),) if server.metrics_key else ()
        self._metrics_keys = self._api_keys + metrics_key
        self._priorities = {configured_digest(k): p for k, p in scheduler.key_priorities.items()}

    @property
    def keys_required(self) -> bool:
        return bool(self._api_keys)

    def check(self, request: Request) -> None:
        """401 unless the path is public or the request carries a configured key: an API key,
        or on /metrics also the metrics key. With no API keys, only a metrics key guards."""
        if request.path in PUBLIC_PATHS:
            return
        keys = self._metrics_keys if request.path == METRICS_PATH else self._api_keys
        if keys and not _any_matches(supplied_digest(self.key_of(request)), keys):
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
        if not self._priorities:
            return self.scheduler.default_priority
        return self._priorities.get(supplied_digest(key), self.scheduler.default_priority)

    def generate_request(self, request: Request, endpoint: str, body: dict, *, key: str | None = None,
                         raw_key: str = "") -> GenerateRequest:
        """The internal request for an API call, with its headers, the caller's key and
        priority (each read once); 503 while the daemon drains."""
        self.refuse_if_draining()
        key = self.key_of(request) if key is None else key
        return GenerateRequest(endpoint, body, headers=dict(request.headers), api_key=key,
                               priority=self.priority_of(request, key), raw_key=raw_key)

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise Unavailable("server is shutting down", headers={"retry-after": "1"})


def _any_matches(digest: bytes, keys: tuple[bytes, ...]) -> bool:
    """Compared with every key in constant time: neither which key nor how much of it
    matched shows in the timing."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(digest, key)
    return matched
