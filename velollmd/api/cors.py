"""Which web pages may call the daemon from a browser (CORS), decided as Ollama decides it.

A request without an `Origin` header (the SDKs, curl, other servers) is not affected. A
browser sends `Origin` with every cross-origin request, and asks first (a preflight: OPTIONS
with `Access-Control-Request-Method`) before any request that is not "simple". An allowed
origin gets the `Access-Control-*` answer headers (on errors too, so the page can read
them); any other origin gets 403 before its request is looked at. Refusing outright, not just
leaving the headers off, matters: a page the user happens to visit may send a "simple"
text/plain POST without asking first, and the daemon would otherwise generate for it.

Allowed: the loopback hosts and 0.0.0.0 on any port over http and https, the schemes desktop
apps and editors load their pages from, and `[server] allowed_origins` (globs; "*" allows any
origin): Ollama's defaults plus OLLAMA_ORIGINS. Not the daemon's own address as such: a page
whose name was made to resolve to the daemon (DNS rebinding) would have it, and the
dashboard's own requests (GETs from its own origin) carry no Origin. A preflight needs no API
key (browsers never send one with it); the request that follows is checked as usual.
"""
from __future__ import annotations

import fnmatch
import re

from ..errors import Forbidden
from ..http.message import Request, Response

DEFAULT_ORIGINS = tuple(
    f"{scheme}://{host}{port}"
    for host in ("localhost", "127.0.0.1", "[::1]", "0.0.0.0")
    for scheme in ("http", "https") for port in ("", ":*")
) + ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
ALLOW_METHODS = "GET, HEAD, POST, DELETE, OPTIONS"
# The answer headers a page may read besides the CORS-safelisted ones.
EXPOSE_HEADERS = "x-request-id, x-velollm-backend, x-velollm-cache, retry-after"
MAX_AGE_S = "600"
FIELD_NAMES_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:[ \t]*,[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*")


class Cors:
    def __init__(self, allowed_origins: tuple[str, ...] = ()):
        self.any_origin = "*" in allowed_origins
        patterns = DEFAULT_ORIGINS + tuple(origin.lower().rstrip("/") for origin in allowed_origins)
        self._allowed = re.compile("|".join(fnmatch.translate(p) for p in patterns))
        self._known: dict[str, bool] = {}          # origin -> allowed (a page calls many times)

    def allows(self, origin: str) -> bool:
        if self.any_origin:
            return True
        allowed = self._known.get(origin)
        if allowed is None:
            allowed = bool(self._allowed.match(origin.lower()))
            if len(self._known) < 1024:
                self._known[origin] = allowed
        return allowed

    def check(self, origin: str) -> None:
        """403 for an origin that may not call the daemon."""
        if not self.allows(origin):
            raise Forbidden(f"origin {origin[:200]!r} may not call this server from a browser: add it "
                            f"to [server] allowed_origins", code="origin_not_allowed")

    @staticmethod
    def is_preflight(request: Request) -> bool:
        return request.method == "OPTIONS" and request.header("access-control-request-method") is not None

    @staticmethod
    def preflight(request: Request) -> Response:
        """204 naming the methods and the request headers the page may use."""
        headers = [("access-control-allow-methods", ALLOW_METHODS), ("access-control-max-age", MAX_AGE_S)]
        asked = request.header("access-control-request-headers", "")
        if FIELD_NAMES_RE.fullmatch(asked):
            headers.append(("access-control-allow-headers", asked))
        return Response(204, headers)

    @staticmethod
    def add_headers(response: Response, origin: str) -> Response:
        """The answer to an allowed origin's request, with the headers that let its page read it."""
        response.headers = [*response.headers, ("access-control-allow-origin", origin), ("vary", "origin"),
                            ("access-control-expose-headers", EXPOSE_HEADERS)]
        return response

