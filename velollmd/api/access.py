"""Who is calling and whether the daemon takes their request: API keys, their names, models,
limits and priorities, draining.

Every route asks the same `Access`, so that the OpenAI and Ollama front doors (and the next
ones) read keys, limits and priorities one way. A key has a name: a [[keys]] entry's own, or
for a flat `api_keys` entry "sha256:" and the first 8 hex digits of its digest; the name is
what usage, /metrics and the access log show, never the key.
"""
from __future__ import annotations

import fnmatch
import hmac
import time

from ..config import KeyConfig, SchedulerConfig, ServerConfig, configured_digest, supplied_digest
from ..errors import BadRequest, NotFound, Unauthorized, Unavailable
from ..http.message import Request
from ..log import note_model
from ..sched.keylimits import KeyLedger, KeyLimits
from ..wire.request import GenerateRequest

PUBLIC_PATHS = frozenset({"/health"})
METRICS_PATH = "/metrics"
PRIORITY_HEADER = "x-velollm-priority"
LOOPBACK = ("127.0.0.1", "::1")


class Access:
    def __init__(self, server: ServerConfig, scheduler: SchedulerConfig, keys: tuple[KeyConfig, ...] = (),
                 ledger: KeyLedger | None = None):
        self.draining = False
        self.started_at = time.time()
        self.ledger = ledger or KeyLedger()
        self.configure(server, scheduler, keys)

    def configure(self, server: ServerConfig, scheduler: SchedulerConfig,
                  keys: tuple[KeyConfig, ...] = ()) -> None:
        """Take (new) keys, limits and priorities; requests already admitted keep going, and
        keys whose name stays keep their usage and limit windows."""
        self.server = server
        self.scheduler = scheduler
        named = {k.digest for k in keys}                # a flat key also in [[keys]] goes by its name
        flat = {configured_digest(k): flat_key_name(configured_digest(k)) for k in server.api_keys
                if configured_digest(k) not in named}
        self._names = {**flat, **{k.digest: k.name for k in keys}}               # SHA-256 digest -> name
        self._api_keys = tuple(self._names)
        metrics_key = (configured_digest(server.metrics_key),) if server.metrics_key else ()
        self._metrics_keys = self._api_keys + metrics_key
        self._priorities = {configured_digest(k): p for k, p in scheduler.key_priorities.items()}
        self._priorities.update({k.digest: k.priority for k in keys if k.priority >= 0})
        self._models = {k.name: k.models for k in keys if k.models != ("*",)}   # name -> model globs
        self.ledger.configure({**{name: KeyLimits() for name in flat.values()},
                               **{k.name: KeyLimits(k.rpm, k.tpm, k.tokens_per_day) for k in keys}})

    @property
    def keys_required(self) -> bool:
        return bool(self._api_keys)

    def check(self, request: Request) -> None:
        """401 unless the path is public or the request carries a configured key: an API key,
        or on /metrics also the metrics key. With no API keys, only a metrics key guards.
        The dashboard's page is public (it holds no data: it asks for a key and sends it on
        its feed, which is guarded like every API path)."""
        if request.path in PUBLIC_PATHS or is_dashboard_page(request):
            return
        keys = self._metrics_keys if request.path == METRICS_PATH else self._api_keys
        if keys and not _any_matches(supplied_digest(self.key_of(request)), keys):
            raise Unauthorized("invalid or missing API key", code="invalid_api_key")

    def check_local_or_keyed(self, request: Request, what: str) -> None:
        """For the routes that change the daemon's state (a cache flush, a model load): with no
        keys configured, only a local client may: a loopback TCP peer, or one on a UNIX socket
        (its peer name is a str; the socket file's permissions guard it). With keys, `check`
        has let only a keyed caller in."""
        client = request.client
        local = isinstance(client, str) or isinstance(client, tuple) and client[0] in LOOPBACK
        if not self.keys_required and not local:
            raise Unauthorized(f"{what} needs an API key or a loopback client")

    def key_of(self, request: Request) -> str:
        """The caller's API key: a Bearer token or x-api-key ("" when none)."""
        auth = request.header("authorization", "")
        return auth[7:].strip() if auth[:7].lower() == "bearer " else request.header("x-api-key", "")

    def key_name_of(self, request: Request, key: str | None = None) -> str:
        """The name of the caller's configured key ("" when it has none, or no keys are set)."""
        if not self._names:
            return ""
        return self._names.get(supplied_digest(self.key_of(request) if key is None else key), "")

    def may_use(self, key_name: str, model) -> bool:
        """Whether the key's `models` globs match the model name the client asked for."""
        globs = self._models.get(key_name)
        return globs is None or isinstance(model, str) and any(fnmatch.fnmatchcase(model, g) for g in globs)

    def visible_models(self, request: Request, models: list) -> list:
        """The catalogue entries (with an `id`) the caller's key may use."""
        name = self.key_name_of(request)
        return models if name not in self._models else [m for m in models if self.may_use(name, m.id)]

    def check_model(self, key_name: str, model) -> None:
        """404 model_not_found (as OpenAI answers a model a key may not use) unless the key's
        `models` globs match the name the client asked for."""
        if not self.may_use(key_name, model):
            raise NotFound(f"The model '{model}' does not exist or you do not have access to it.",
                           param="model", code="model_not_found")

    def admit(self, request: Request, model=None, *, key: str | None = None, defer: bool = False) -> str:
        """Let one API request of the caller in: its key may use `model` (when one is named)
        and is under its limits (429 rate_limit_exceeded with Retry-After otherwise). Counts the
        request against the key and returns the key's name. `defer`: the pipeline checks shared
        limits (Pipeline.admit) when the request reaches it."""
        name = self.key_name_of(request, key)
        if model is not None:
            note_model(model)                    # in the access line, refused or not
            self.check_model(name, model)
        self.ledger.admit(name, defer=defer)
        return name

    def priority_of(self, request: Request, key: str | None = None) -> int:
        """The request's priority (0 highest .. 9): x-velollm-priority, else the API key's
        configured priority, else default_priority. A key's configured priority is a ceiling:
        its caller may ask for a lower one (a larger number) but never jump ahead of it."""
        asked = self._asked_priority(request)
        key = self.key_of(request) if key is None else key
        configured = self._priorities.get(supplied_digest(key)) if self._priorities else None
        if asked is None:
            return self.scheduler.default_priority if configured is None else configured
        return asked if configured is None else max(asked, configured)

    def _asked_priority(self, request: Request) -> int | None:
        """x-velollm-priority's digit (None without the header); 400 for anything else."""
        raw = request.header(PRIORITY_HEADER)
        if raw is None:
            return None
        if not (len(raw) == 1 and raw in "0123456789"):
            raise BadRequest(f"{PRIORITY_HEADER} must be a digit 0..9", param=PRIORITY_HEADER)
        return int(raw)

    def generate_request(self, request: Request, endpoint: str, body: dict, *, key: str | None = None,
                         raw_key: str = "", headers: dict[str, str] | None = None,
                         dropped: str = "") -> GenerateRequest:
        """The internal request for an API call, with its headers (`headers`: the request's,
        as a dict already), the caller's key, its name and priority (each read once), once the
        key may use the model and is under its limits (`admit`); 503 while the daemon drains."""
        self.refuse_if_draining()
        key = self.key_of(request) if key is None else key
        priority = self.priority_of(request, key)
        key_name = self.admit(request, body.get("model"), key=key, defer=True)
        headers = dict(request.headers) if headers is None else headers
        return GenerateRequest(endpoint, body, headers=headers, api_key=key,
                               priority=priority, raw_key=raw_key, key_name=key_name, dropped=dropped)

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise Unavailable("server is shutting down", headers={"retry-after": "1"})


def accepts_html(request: Request) -> bool:
    """Whether the Accept header names text/html (with q > 0): a browser. `*/*` alone (curl,
    API clients) does not count, so they keep getting JSON."""
    for media_range in (request.header("accept") or "").split(","):
        kind, *params = media_range.split(";")
        if kind.strip().lower() == "text/html":
            return not any(p.strip().replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params)
    return False


def is_dashboard_page(request: Request) -> bool:
    """GET / from a browser: the dashboard's page."""
    return request.path == "/" and request.method in ("GET", "HEAD") and accepts_html(request)


def flat_key_name(digest: bytes) -> str:
    """The name of a flat `api_keys` entry: stable across reloads and reorderings, and it
    tells nothing usable about the key."""
    return "sha256:" + digest.hex()[:8]


def _any_matches(digest: bytes, keys: tuple[bytes, ...]) -> bool:
    """Compared with every key in constant time: neither which key nor how much of it
    matched shows in the timing."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(digest, key)
    return matched
