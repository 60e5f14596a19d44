"""Request and Response as the application sees them (no sockets, no parsing)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator
from urllib.parse import parse_qsl

from ..errors import BadRequest, VeloError
from ..log import current_request_id
from ..wire import wirejson
from ..wire.headers import header_value

READ_SIZE = 65536               # bytes per socket read, server and client alike

JSON_TYPE = "application/json"
REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 413: "Content Too Large",
    414: "URI Too Long", 415: "Unsupported Media Type", 422: "Unprocessable Content",
    429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}


class Burst(bytes):
    """Stream body bytes that are all there is for now (a whole backend read, relayed): the
    server sends them at once instead of corking them until the end of the loop turn."""
    __slots__ = ()


@dataclass(slots=True)
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    version: str = "1.1"
    client: tuple | None = None
    path: str = ""
    query: str = ""
    _fields: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if not self.path:
            path, _, self.query = self.target.partition("?")
            # `/v1/models/` is `/v1/models` (Ollama's router redirects there; answered in place,
            # since a POST client may not follow a redirect), for the key check as for the routes
            self.path = path[:-1] if path[-1:] == "/" and len(path) > 1 else path

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header `name` (lowercase). The fields are looked up several times
        per request (key, priority, access line), so the first lookup makes a dict of them:
        `headers` is not to be changed once a handler has the request."""
        fields = self._fields
        if fields is None:
            fields = self._fields = dict(reversed(self.headers))    # the first value wins
        return fields.get(name, default)

    def query_params(self) -> dict[str, str]:
        return dict(parse_qsl(self.query))

    def json(self) -> dict:
        """The body as a JSON object; a clear 400 otherwise."""
        if not self.body:
            raise BadRequest("request body is empty; expected a JSON object")
        try:
            value = wirejson.loads(self.body)
        except ValueError as exc:                    # UnicodeDecodeError, too deep, NaN
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise BadRequest("request body must be a JSON object")
        return value


@dataclass(slots=True)
class Response:
    """A whole body (`body`) or a streamed one (`stream`, sent with chunked framing)."""
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    idle_ping: bytes = b""              # written into a stream silent for idle_ping_s (SSE)
    idle_ping_s: float = 0.0

    @classmethod
    def json(cls, value, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Response:
        body = wirejson.dumps(value)
        return cls(status, [("content-type", JSON_TYPE), *(headers or [])], body)

    @classmethod
    def error(cls, exc: VeloError) -> Response:
        """The error in the OpenAI shape, with the current request's id in it."""
        headers = [("content-type", JSON_TYPE), *exc.headers.items()]
        return cls(exc.status, headers, exc.to_json_bytes(current_request_id()))

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)
