"""How velollmctl reaches servers: only through velollmd.http.client, never an HTTP library.

`base_url` normalises the URLs people type; `error_line` words the client's errors (written
for the daemon, whose peers are its backends) for a person at a terminal; `error_message`
pulls the message out of an OpenAI- or Ollama-shaped error body; `request` runs one request
to the end from synchronous code.
"""
from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit, urlunsplit

from ..errors import VeloError
from ..http.client import HTTPClient

DAEMON_URL = "http://127.0.0.1:8000"
API_KEY_ENV = "VELOLLM_API_KEY"               # the daemon's key when --api-key is not given
OLLAMA_URL = "http://127.0.0.1:11434"


class ServerError(OSError):
    """A server could not be reached, or answered with an error: one line for the user."""


def base_url(url: str) -> str:
    """`http://h:p/v1` and `http://h:p/` both become `http://h:p` (the routes add /v1);
    ValueError naming `url` for anything but an http(s) URL with a host."""
    try:
        parts = urlsplit(url)
    except ValueError:                                 # "http://[::1": an unclosed IPv6 bracket
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {url!r}")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def error_line(exc: VeloError) -> str:
    """`cannot connect to backend 127.0.0.1:9: ...` without the daemon's word "backend"."""
    return exc.message.replace("backend ", "")


def error_message(body: bytes) -> str:
    """The message of `{"error": {"message": ...}}` (OpenAI) or `{"error": "..."}` (Ollama),
    else the start of the body."""
    try:
        error = json.loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    return message or body[:200].decode("utf-8", "replace").strip() or "(empty body)"


def request(url: str, method: str, path: str, json_body=None, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of one request, from synchronous code; ServerError when unreachable."""
    try:
        return asyncio.run(_request(url, method, path, json_body, timeout_s))
    except VeloError as exc:
        raise ServerError(f"{url}: {error_line(exc)}") from None


async def _request(url: str, method: str, path: str, json_body, timeout_s: float) -> tuple[int, bytes]:
    client = HTTPClient(url, connect_timeout=timeout_s, read_timeout=timeout_s)
    try:
        response = await client.request(method, path, json=json_body)
        return response.status, await response.read()
    finally:
        await client.close()
