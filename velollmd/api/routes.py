"""Route table: (method, path pattern) -> async handler, with `{name}` path parameters.

HEAD is served by the GET handler (the server drops the body); OPTIONS (one that is not a
CORS preflight) by a 204 whose Allow names the path's methods. Unknown paths get 404, known
paths with another method 405 with that Allow (RFC 9110 15.5.6), both in the OpenAI error shape.
"""
from __future__ import annotations

import functools
import re
from typing import Awaitable, Callable
from urllib.parse import unquote

from ..errors import NotFound, VeloError
from ..http.message import Request, Response

RouteHandler = Callable[..., Awaitable[Response]]
PARAM_RE = re.compile(r"\{(\w+)\}")


class Router:
    def __init__(self):
        self._exact: dict[str, dict[str, RouteHandler]] = {}
        self._patterns: list[tuple[re.Pattern, dict[str, RouteHandler]]] = []

    def add(self, method: str, path: str, handler: RouteHandler) -> None:
        if "{" in path:
            parts = PARAM_RE.split(path)     # literal, name, literal, name, ...
            regex = re.compile("".join(
                re.escape(part) if i % 2 == 0 else f"(?P<{part}>.+)" for i, part in enumerate(parts)) + "$")
            for pattern, methods in self._patterns:
                if pattern.pattern == regex.pattern:
                    methods[method] = handler
                    return
            self._patterns.append((regex, {method: handler}))
        else:
            self._exact.setdefault(path, {})[method] = handler

    def resolve(self, method: str, path: str) -> tuple[RouteHandler, dict[str, str]]:
        methods, params = self._exact.get(path), {}
        if methods is None:
            for pattern, candidate in self._patterns:
                match = pattern.match(path)
                if match:          # a parameter percent-decoded: the openai SDK sends a model's "/" as %2F
                    methods, params = candidate, {name: unquote(value) for name, value in match.groupdict().items()}
                    break
        if methods is None:
            raise NotFound(f"no route for {path}", code="not_found")
        handler = methods.get("GET" if method == "HEAD" else method)
        if handler is None and method == "OPTIONS":
            return functools.partial(_options, allow=_allow(methods)), {}
        if handler is None:
            raise VeloError(f"method {method} not allowed for {path}", status=405,
                            error_type="invalid_request_error", headers={"allow": _allow(methods)})
        return handler, params

    def is_route(self, path: str) -> bool:
        """A fixed route (metrics label it by path; parametrised and unknown paths are "other")."""
        return path in self._exact

    def dispatch(self, request: Request) -> Awaitable[Response]:
        """The handler's coroutine, for the caller to await (404 and 405 raise here)."""
        handler, params = self.resolve(request.method, request.path)
        return handler(request, **params)


def _allow(methods) -> str:
    """The Allow field of a path whose routes take `methods`: HEAD with GET, and OPTIONS."""
    return ", ".join(sorted({*methods, "OPTIONS", *(("HEAD",) if "GET" in methods else ())}))


async def _options(request: Request, allow: str) -> Response:
    return Response(204, [("allow", allow)])
