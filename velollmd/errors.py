"""One root error for everything a client may see.

Every error carries the HTTP status and the OpenAI error `type` it maps to, so that any layer
can raise and the HTTP layer alone turns it into `{"error": {"message", "type", "param",
"code"}}` with the right status. Nothing else ever reaches the wire: an unexpected exception
becomes a plain 500 without a traceback.
"""
from __future__ import annotations

import json

CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"   # OpenAI's code for a prompt over the context:
                                                      # clients and routes act on it (truncation, wording)
QUEUE_TIMEOUT = "queue_timeout"      # a request waited past queue_timeout_s (the daemon's queue or the engine's)


class VeloError(Exception):
    """An error with an HTTP status and an OpenAI-shaped body."""

    status = 500
    error_type = "server_error"

    def __init__(self, message: str, *, status: int | None = None, error_type: str | None = None,
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if error_type is not None:
            self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def to_dict(self, request_id: str | None = None) -> dict:
        """The OpenAI error shape; `request_id` (the x-request-id answered) is added inside
        `error` when given, which OpenAI clients ignore and people can quote."""
        error = {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}
        if request_id is not None:
            error["request_id"] = request_id
        return {"error": error}

    def to_json_bytes(self, request_id: str | None = None) -> bytes:
        return json.dumps(self.to_dict(request_id), separators=(",", ":")).encode()


class BadRequest(VeloError):
    status, error_type = 400, "invalid_request_error"


class Unauthorized(VeloError):
    status, error_type = 401, "authentication_error"


class Forbidden(VeloError):
    status, error_type = 403, "permission_error"


class NotFound(VeloError):
    status, error_type = 404, "invalid_request_error"


class RateLimited(VeloError):
    status, error_type = 429, "rate_limit_error"


class BackendError(VeloError):
    """The backend answered with an error or broke the protocol."""
    status, error_type = 502, "api_error"


class Unavailable(VeloError):
    """No healthy backend, or the daemon is draining."""
    status, error_type = 503, "api_error"


class BackendTimeout(BackendError):
    """The backend went silent: a backend failure like the others (breaker, failover), 504."""
    status, error_type = 504, "timeout_error"


class BackendBusy(BackendError):
    """The backend said 429 or 503 (overloaded, loading): 503 to the client, with the
    backend's Retry-After when it gave one, so that clients back off instead of hammering."""
    status, error_type = 503, "api_error"


class NotImplementedByBackend(VeloError):
    status, error_type = 501, "not_implemented_error"


class ConfigError(Exception):
    """Invalid configuration: one line naming the file, the key and the reason."""

    def __init__(self, path: str, key: str, reason: str):
        super().__init__(f"{path}: {key}: {reason}")
        self.path, self.key, self.reason = path, key, reason
