"""The daemon's configuration: one frozen dataclass per TOML section.

This module is the only reader of the TOML file. Each field's type annotation is its schema;
`metadata` adds bounds (`min`, `max`) and `choices`. Anything off (unknown key, wrong type,
out of range, missing file, bad syntax) raises ConfigError, which names the file, the key and
the reason on one line.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import hashlib
import ipaddress
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

DEFAULT_PATH = "/etc/velollm.toml"
DEFAULT_MODELS_DIR = "/var/lib/velollm/models"   # etc/velollm.toml's engine models_dir (`make run` fills it)
BACKEND_KINDS = ("ollama", "llamacpp", "openai", "engine")
ENGINE_DEVICES = ("auto", "cpu", "cuda")
KV_CACHE_TYPES = ("f32", "f16")     # the engine's K/V element type (engine/kvcache.KV_CACHE_DTYPES)
# The engine's chat templates by name (engine/templates.py renders them; a test keeps the two equal).
CHAT_TEMPLATES = ("chatml", "qwen2", "qwen3", "llama3", "llama3.2", "mistral", "gemma", "phi3", "phi4-mini", "phi4")
LOG_LEVELS = ("debug", "info", "warning", "error")
# A [cache] redis_url as shared/client.py's RedisAddress reads it (a regex, as URL_RE):
# redis[s]://[[user]:password@]host[:port][/db][?...] or unix://[[user]:password@]/path[?db=N].
REDIS_URL_RE = re.compile(r"rediss?://(?:[^/]*@)?(?:\[[0-9A-Fa-f:.]+\]|[^\s/:@\[\]?#]+)(?::(?P<port>\d{1,5}))?"
                          r"(?:/\d*)?(?:\?\S*)?|unix://(?:[^/]*@)?/[^\s?#]+(?:\?db=\d+)?")
DIGEST_PREFIX = "sha256:"                          # an API key given as its SHA-256 hex digest
# A backend URL: scheme, host (or [IPv6]), optional port, optional path. Not urllib: config sits
# below cache/ and toolcalls/, which may not import the network modules (tests/test_layers.py).
URL_RE = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[^\s/:@\[\]?#]+)(?::(\d{1,5}))?(?:/\S*)?")
# A backend's name goes into the x-velollm-backend header: visible ASCII, inner spaces allowed.
BACKEND_NAME_RE = re.compile(r"[!-~](?:[ -~]*[!-~])?")
# A browser origin in [server] allowed_origins: scheme://host[:port], `*` anywhere after the scheme.
ORIGIN_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/,?#]+/?")
# Tokens of context: more than any model is trained for (10M at most today); llama.cpp's and
# Ollama's n_ctx are 32-bit, and the admission budget (num_ctx x requests at once) must fit too.
MAX_NUM_CTX = 1 << 24
MAX_SECONDS = 1e9                  # any *_s setting: beyond this, timers overflow (about 31 years)


def _opt(default, **meta):
    """A field with a default and schema metadata (min, max, choices)."""
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples / default_factory for mutable defaults")
    return field(default=default, metadata=meta)


# The most slots a backend is taken to have, configured or said by the server itself: a
# scheduler and a prefix-routing table hold an entry per slot.
MAX_SLOTS = 4096


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = _opt(8000, min=0, max=65535)
    max_connections: int = _opt(1024, min=1)
    max_header_bytes: int = _opt(16384, min=1024, max=1048576)
    max_body_bytes: int = _opt(33554432, min=1)
    header_timeout_s: float = _opt(30.0, min=0.001)
    keepalive_timeout_s: float = _opt(30.0, min=0.001)
    send_timeout_s: float = _opt(60.0, min=0.001)
    drain_timeout_s: float = _opt(30.0, min=0.0)
    sse_ping_s: float = _opt(15.0, min=0.01)
    api_keys: tuple[str, ...] = ()                 # plain keys or "sha256:<64 hex digits>"
    metrics_key: str = ""                          # also lets GET /metrics in (a scraper's key)
    allow_open: bool = False                       # serve a non-loopback address with no api_keys
    allowed_origins: tuple[str, ...] = ()          # browser origins (globs) beside the local ones


@dataclass(frozen=True)
class BackendConfig:
    name: str = ""
    kind: str = _opt("", choices=BACKEND_KINDS)
    url: str = ""
    models: tuple[str, ...] = ("*",)
    slots: int = _opt(0, min=0, max=MAX_SLOTS)     # 0 = discover (llama.cpp /props) or 1
    api_key: str = ""
    num_ctx: int = _opt(0, min=0, max=MAX_NUM_CTX)  # 0 = the backend's default
    connect_timeout_s: float = _opt(5.0, min=0.001)
    timeout_s: float = _opt(600.0, min=0.001)      # read timeout between bytes of a response
    health_interval_s: float = _opt(5.0, min=0.05)
    # kind = "engine" only (the in-process engine): what it serves and how.
    model: str = ""                                # one GGUF file, served under its stem or `alias`
    alias: str = ""
    models_dir: str = ""                           # every *.gguf in this folder
    ollama_store: bool = True                      # and Ollama's local model store, by Ollama's names
    device: str = _opt("auto", choices=ENGINE_DEVICES)
    threads: int = _opt(0, min=0, max=1024)        # matmul + BLAS threads; 0 = physical cores
    kv_cache_mb: int = _opt(0, min=0)              # 0 = num_ctx x max_running tokens of KV
    block_size: int = _opt(16, min=1, max=1024)    # tokens per KV block
    kv_cache_type: str = _opt("f16", choices=KV_CACHE_TYPES)   # K/V as float16 or float32 (CPU path)
    max_batch_tokens: int = _opt(512, min=1)       # tokens per engine step (prefill chunk + decodes)
    max_running: int = _opt(16, min=1, max=1024)   # sequences decoded together
    keep_alive_s: float = _opt(300.0, min=0.0)     # unload a model idle this long (0 = never)
    max_loaded_models: int = _opt(1, min=1, max=64)
    chat_template: str = _opt("", choices=("", *CHAT_TEMPLATES))   # when the GGUF's is not recognised


ENGINE_KEYS = ("model", "alias", "models_dir", "ollama_store", "device", "threads", "kv_cache_mb",
               "block_size", "kv_cache_type", "max_batch_tokens", "max_running", "keep_alive_s",
               "max_loaded_models", "chat_template")


SERVER_KEYS = ("url", "api_key")       # a backend reached over HTTP: nothing the engine uses


@dataclass(frozen=True)
class CacheConfig:
    enabled: bool = True
    exact: bool = True
    semantic: bool = True
    max_entries: int = _opt(10000, min=0)
    max_bytes: int = _opt(268435456, min=0)
    ttl_s: float = _opt(86400.0, min=0.0)          # 0 = entries never expire
    semantic_threshold: float = _opt(0.95, min=0.0, max=1.0)
    semantic_max_entries: int = _opt(100000, min=0, max=10_000_000)   # preallocated: embed_dim floats each
    semantic_dtype: str = _opt("float32", choices=("float32", "float16"))
    embedder: str = _opt("builtin", choices=("builtin", "backend"))
    embed_backend: str = ""                        # name of a [[backends]] entry
    embed_model: str = ""
    embed_dim: int = _opt(384, min=8, max=8192)    # dimension of the builtin embedder
    cache_sampled: bool = False
    path: str = "/var/lib/velollm/cache"           # empty = memory only
    snapshot_interval_s: float = _opt(300.0, min=0.0)  # 0 = only on shutdown
    # The shared tier: instances on one Redis share exact entries, single-flight and key limits.
    redis_url: str = ""                            # redis://[:password@]host:port/db, rediss://, unix:///path
    redis_prefix: str = "velollm:"                 # every key and channel starts with it
    redis_timeout_ms: int = _opt(250, min=1, max=60000)   # a slower answer is a fallback to local tiers
    redis_max_entry_bytes: int = _opt(1048576, min=0)     # larger entries stay local
    redis_lock_ttl_ms: int = _opt(30000, min=100)  # single-flight lock: a crashed holder blocks no longer
    redis_flight_wait_ms: int = _opt(30000, min=0) # how long another instance's answer is waited for


@dataclass(frozen=True)
class ToolsConfig:
    repair: bool = True
    validate: bool = True
    coerce: bool = True
    dedup: bool = True
    max_retries: int = _opt(1, min=0, max=5)


@dataclass(frozen=True)
class SchedulerConfig:
    max_queue: int = _opt(256, min=0)
    queue_timeout_s: float = _opt(120.0, min=0.001)
    default_priority: int = _opt(5, min=0, max=9)
    aging_s: float = _opt(10.0, min=0.001)         # a waiting request gains one level per aging_s
    preempt: bool = False
    block_size: int = _opt(16, min=1, max=1024)
    backend_queue_per_slot: int = _opt(1, min=0, max=64)   # admitted beyond the slots, queued in the backend
    adaptive_concurrency: bool = True              # learn the width of backends that do not say it
    initial_concurrency: int = _opt(8, min=1, max=4096)    # where the adaptive limit starts
    min_concurrency: int = _opt(1, min=1, max=4096)
    max_concurrency: int = _opt(256, min=1, max=4096)      # per backend of unknown width
    prefix_routing: bool = True
    pin_slots: bool = True                         # llama.cpp: id_slot for the slot holding the prefix
    tokenize: bool = True                          # prefix routing on llama.cpp's real token ids
    breaker_failures: int = _opt(3, min=1)         # consecutive failures that open a backend's circuit
    breaker_cooldown_s: float = _opt(5.0, min=0.0) # open circuit: wait this long, then one probe
    key_priorities: dict[str, int] = field(default_factory=dict,   # api key -> priority
                                           metadata={"min": 0, "max": 9})


GLOB_CHARS = frozenset("*?[")
KEY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True)
class KeyConfig:
    """One [[keys]] table: a named API key with its own priority, limits and models."""
    name: str = ""                                 # in /metrics, the usage route and the access log
    key: str = ""                                  # the key (or "sha256:<hex>"), or else
    key_sha256: str = ""                           # its SHA-256 digest: 64 hex digits
    priority: int = _opt(-1, min=-1, max=9)        # -1 = [scheduler] key_priorities / default_priority
    rpm: int = _opt(0, min=0)                      # requests per minute (0 = no limit)
    tpm: int = _opt(0, min=0)                      # prompt + completion tokens per minute (0 = no limit)
    tokens_per_day: int = _opt(0, min=0)           # ... per 24 hours, rolling (0 = no limit)
    models: tuple[str, ...] = ("*",)               # globs of the model names it may ask for

    @property
    def digest(self) -> bytes:
        return bytes.fromhex(self.key_sha256) if self.key_sha256 else configured_digest(self.key)


@dataclass(frozen=True)
class ResponsesConfig:
    """The Responses API's store of responses (previous_response_id, GET /v1/responses/{id})."""
    store_max_entries: int = _opt(1000, min=0)     # 0 = keep none
    store_max_bytes: int = _opt(67108864, min=0)   # their JSON, in all
    path: str = "/var/lib/velollm/responses"       # where the store is kept across restarts; "" = memory only
    snapshot_interval_s: float = _opt(30.0, min=0.0)   # write it this often when changed; 0 = only on shutdown


@dataclass(frozen=True)
class KeyLimitsConfig:
    """Where the [[keys]] limit windows (rpm, tpm, tokens_per_day) outlive a restart."""
    path: str = "/var/lib/velollm/keys"            # "" = memory only (a restart resets every window)
    snapshot_interval_s: float = _opt(30.0, min=0.0)   # write them this often when changed; 0 = only on shutdown


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True


@dataclass(frozen=True)
class LogConfig:
    level: str = _opt("info", choices=LOG_LEVELS)
    access: bool = True                            # one JSON access-log line per request


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    backends: tuple[BackendConfig, ...] = ()
    cache: CacheConfig = field(default_factory=CacheConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    responses: ResponsesConfig = field(default_factory=ResponsesConfig)
    key_limits: KeyLimitsConfig = field(default_factory=KeyLimitsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    aliases: tuple[tuple[str, str], ...] = ()       # [aliases]: client's model name (or glob) -> served model
    keys: tuple[KeyConfig, ...] = ()                # [[keys]]: named keys with limits
    path: str = "<defaults>"


SECTIONS = {"server": ServerConfig, "cache": CacheConfig, "tools": ToolsConfig,
            "scheduler": SchedulerConfig, "responses": ResponsesConfig, "key_limits": KeyLimitsConfig,
            "metrics": MetricsConfig,
            "log": LogConfig}


def load_config(path: str = DEFAULT_PATH) -> Config:
    """Read and validate a TOML file; raises ConfigError."""
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, "(file)", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "(file)", f"cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "(syntax)", str(exc)) from None
    return config_from_table(table, path)


def check_engine_paths(config: Config) -> None:
    """What --check-config adds on disk: an engine's `model` must be a file and its
    `models_dir` a folder (the daemon starts without them, and /health lists the model as
    unavailable). The shipped models_dir may be absent on a fresh machine: `make run` creates
    it, and the engine serves what appears there later."""
    for index, backend in enumerate(config.backends):
        if backend.kind != "engine":
            continue
        if backend.model:
            _check_path(Path(backend.model), "file", config.path, f"backends[{index}].model")
        if backend.models_dir and (backend.models_dir != DEFAULT_MODELS_DIR or os.path.lexists(DEFAULT_MODELS_DIR)):
            _check_path(Path(backend.models_dir), "folder", config.path, f"backends[{index}].models_dir")


def _check_path(path: Path, kind: str, config_path: str, key: str) -> None:
    """`path` is a `kind` ("file" or "folder") that can be read."""
    try:
        is_kind = path.is_file() if kind == "file" else path.is_dir()
        exists = is_kind or path.exists()
    except OSError as exc:
        raise ConfigError(config_path, key, f"cannot read {path}: {exc.strerror or exc}") from None
    if not exists:
        raise ConfigError(config_path, key, f"no such {kind}: {path}")
    if not is_kind:
        raise ConfigError(config_path, key, f"not a {kind}: {path}")


TABLE_NAMES = {**{name: f"[{name}]" for name in SECTIONS}, "backends": "[[backends]]", "keys": "[[keys]]",
               "aliases": "[aliases]"}


def did_you_mean(name: str, known: dict[str, str]) -> str:
    """` (did you mean X?)` for the known name closest to a misspelt one, else ""."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {known[close[0]]}?)" if close else ""


def config_from_table(table: dict, path: str = "<table>") -> Config:
    unknown = sorted(set(table) - set(TABLE_NAMES))
    if unknown:
        raise ConfigError(path, unknown[0], "unknown section or key" + did_you_mean(unknown[0], TABLE_NAMES))
    sections = {}
    for name, cls in SECTIONS.items():
        sub = table.get(name, {})
        if not isinstance(sub, dict):
            raise ConfigError(path, name, "must be a table [" + name + "]")
        sections[name] = build_section(cls, sub, path, name)
    backends = _build_backends(table.get("backends", []), path)
    _check_embedder(sections["cache"], backends, path)
    _check_redis(sections["cache"], path)
    _check_concurrency(sections["scheduler"], path)
    _check_keys(sections["server"], sections["scheduler"], path)
    _check_origins(sections["server"], path)
    keys = _build_named_keys(table.get("keys", []), path)
    check_exposure(sections["server"], sections["server"].host, path, keys)
    aliases = _build_aliases(table.get("aliases", {}), path)
    return Config(backends=backends, aliases=aliases, keys=keys, path=path, **sections)


def is_glob(name: str) -> bool:
    """A model name with fnmatch wildcards (`models` patterns, glob aliases)."""
    return not GLOB_CHARS.isdisjoint(name)


def _build_aliases(table, path: str) -> tuple[tuple[str, str], ...]:
    """`[aliases]` as ordered (name, target) pairs; a glob name applies in file order."""
    if not isinstance(table, dict):
        raise ConfigError(path, "aliases", "must be a table [aliases]")
    for name, target in table.items():
        key = f"aliases.{name}" if name else "aliases"
        if not name.strip():
            raise ConfigError(path, key, "an alias name must not be empty")
        if not isinstance(target, str) or not target.strip():
            raise ConfigError(path, key, "must be the name of a served model (a non-empty string)")
        if is_glob(target):
            raise ConfigError(path, key, f"the target must be one model name, not a glob: {target!r}")
        if any(target == other or (is_glob(other) and fnmatch.fnmatchcase(target, other)) for other in table):
            raise ConfigError(path, key, f"aliases do not chain: the target {target!r} is itself an alias")
    return tuple(table.items())


def _check_redis(cache: CacheConfig, path: str) -> None:
    if not cache.redis_url:
        return
    match = REDIS_URL_RE.fullmatch(cache.redis_url)
    if match is None:
        raise ConfigError(path, "cache.redis_url", "must be redis://[[user]:password@]host[:port][/db], "
                          "rediss://... (TLS) or unix:///path[?db=N]")
    if match["port"] and not 1 <= int(match["port"]) <= 65535:
        raise ConfigError(path, "cache.redis_url", f"port must be 1..65535, got {match['port']}")


def _check_embedder(cache: CacheConfig, backends, path: str) -> None:
    if cache.embedder != "backend":
        return
    if cache.embed_backend not in {b.name for b in backends}:
        raise ConfigError(path, "cache.embed_backend", f"names no [[backends]] entry: {cache.embed_backend!r}")
    if not cache.embed_model:
        raise ConfigError(path, "cache.embed_model", 'is required when embedder = "backend"')


def _check_concurrency(scheduler: SchedulerConfig, path: str) -> None:
    if scheduler.min_concurrency > scheduler.max_concurrency:
        raise ConfigError(path, "scheduler.min_concurrency",
                          f"must be <= max_concurrency ({scheduler.max_concurrency}), got {scheduler.min_concurrency}")
    if not scheduler.min_concurrency <= scheduler.initial_concurrency <= scheduler.max_concurrency:
        raise ConfigError(path, "scheduler.initial_concurrency",
                          f"must be between min_concurrency and max_concurrency, got {scheduler.initial_concurrency}")


def _check_origins(server: ServerConfig, path: str) -> None:
    for i, origin in enumerate(server.allowed_origins):
        if origin != "*" and not ORIGIN_RE.fullmatch(origin):
            raise ConfigError(path, f"server.allowed_origins[{i}]", "must be an origin such as "
                              f"\"https://app.example.com\" (globs allowed) or \"*\", got {origin!r}")


def _check_keys(server: ServerConfig, scheduler: SchedulerConfig, path: str) -> None:
    for i, key in enumerate(server.api_keys):
        _check_key(key, path, f"server.api_keys[{i}]")
    if server.metrics_key:
        _check_key(server.metrics_key, path, "server.metrics_key")
    for key in scheduler.key_priorities:
        _check_key(key, path, f"scheduler.key_priorities.{key[:16]}")


def _check_key(key: str, path: str, name: str) -> None:
    if not key:
        raise ConfigError(path, name, "must not be empty")
    if key.startswith(DIGEST_PREFIX) and not _is_hex_digest(key[len(DIGEST_PREFIX):]):
        raise ConfigError(path, name, f"{DIGEST_PREFIX} must be followed by 64 hex digits")


def _is_hex_digest(text: str) -> bool:
    return len(text) == 64 and HEX_DIGITS.issuperset(text)


def _build_named_keys(items, path: str) -> tuple[KeyConfig, ...]:
    """`[[keys]]`: each needs a unique name and one unique key (plain or its digest)."""
    if not isinstance(items, list):
        raise ConfigError(path, "keys", "must be an array of tables [[keys]]")
    keys, names, digests = [], set(), {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(path, f"keys[{i}]", "must be a table")
        name = item.get("name")
        if not isinstance(name, str) or not KEY_NAME_RE.fullmatch(name):
            raise ConfigError(path, f"keys[{i}].name", "is required: 1-64 letters, digits, '_' or '-', "
                              f"got {name!r}")
        prefix = f"keys.{name}"
        if name in names:
            raise ConfigError(path, f"{prefix}.name", f"duplicate key name {name!r}")
        names.add(name)
        entry = build_section(KeyConfig, item, path, prefix)
        _check_named_key(entry, path, prefix)
        if entry.digest in digests:
            raise ConfigError(path, prefix, f"the same key as keys.{digests[entry.digest]}")
        digests[entry.digest] = name
        keys.append(entry)
    return tuple(keys)


def _check_named_key(entry: KeyConfig, path: str, prefix: str) -> None:
    if bool(entry.key) == bool(entry.key_sha256):
        raise ConfigError(path, prefix, "needs exactly one of key and key_sha256")
    if entry.key:
        _check_key(entry.key, path, f"{prefix}.key")
    elif not _is_hex_digest(entry.key_sha256):
        raise ConfigError(path, f"{prefix}.key_sha256", "must be 64 hex digits (printf %s KEY | sha256sum)")
    if not entry.models or not all(m.strip() for m in entry.models):
        raise ConfigError(path, f"{prefix}.models", 'must list model names or globs ("*" for every model)')


def configured_digest(entry: str) -> bytes:
    """The SHA-256 digest of a key in the file: a `sha256:<hex>` entry as given, a plain key
    hashed. (What a client sends is always hashed: see `supplied_digest`.)"""
    if entry.startswith(DIGEST_PREFIX):
        return bytes.fromhex(entry[len(DIGEST_PREFIX):])
    return supplied_digest(entry)


def supplied_digest(key: str) -> bytes:
    """The digest of a key a client sent: hashed whatever it looks like, so that knowing a
    configured digest is not knowing the key."""
    return hashlib.sha256(key.encode()).digest()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False                                  # a name or "" (every address)


def check_exposure(server: ServerConfig, host: str, path: str, keys: tuple[KeyConfig, ...] = ()) -> None:
    """A server reachable from the network needs API keys, unless the operator says open."""
    if not server.api_keys and not keys and not server.allow_open and not is_loopback(host):
        raise ConfigError(path, "server.host", f"{host or '(every address)'!s} is not loopback and "
                          "api_keys and [[keys]] are empty: set api_keys or [[keys]], or [server] "
                          "allow_open = true to serve it unauthenticated")


def _build_backends(items, path: str) -> tuple[BackendConfig, ...]:
    if not isinstance(items, list):
        raise ConfigError(path, "backends", "must be an array of tables [[backends]]")
    backends, seen = [], set()
    for i, item in enumerate(items):
        prefix = f"backends[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(path, prefix, "must be a table")
        backend = build_section(BackendConfig, item, path, prefix)
        for required in ("name", "kind"):
            if not getattr(backend, required):
                raise ConfigError(path, f"{prefix}.{required}", "is required")
        if not BACKEND_NAME_RE.fullmatch(backend.name):
            raise ConfigError(path, f"{prefix}.name", "must be ASCII letters, digits, punctuation and inner spaces "
                              f"(it is sent in the x-velollm-backend header), got {backend.name!r}")
        if backend.kind != "engine":
            _check_url(backend.url, path, f"{prefix}.url")
        for key in ENGINE_KEYS if backend.kind != "engine" else SERVER_KEYS:
            if key in item:
                raise ConfigError(path, f"{prefix}.{key}", 'applies only to kind = "engine"' if key in ENGINE_KEYS
                                  else 'does not apply to kind = "engine" (it serves in this process)')
        if backend.name in seen:
            raise ConfigError(path, f"{prefix}.name", f"duplicate backend name {backend.name!r}")
        seen.add(backend.name)
        backends.append(backend)
    return tuple(backends)


def _check_url(url: str, path: str, key: str) -> None:
    match = URL_RE.fullmatch(url)
    if match is None or not 1 <= int(match[2] or 80) <= 65535:
        raise ConfigError(path, key, f"must be an http:// URL with a host (and a port from 1 to 65535), got {url!r}")


def build_section(cls, table: dict, path: str, prefix: str):
    """Build dataclass `cls` from a TOML table, checking every key against the schema."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(path, f"{prefix}.{key}", "unknown key" + did_you_mean(key, {k: k for k in known}))
        values[key] = _check_value(value, hints[key], known[key].metadata, path, f"{prefix}.{key}")
    return cls(**values)


def _check_value(value, hint, meta, path: str, key: str):
    value = _check_type(value, hint, path, key)
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(path, key, f"must be one of {', '.join(map(repr, meta['choices']))}, got {value!r}")
    for item_key, item in (value.items() if isinstance(value, dict) else [(key, value)]):
        _check_bounds(item, meta, path, item_key if item_key == key else f"{key}.{item_key}")
    return value


def _check_bounds(value, meta, path: str, key: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(path, key, f"must be a finite number, got {value!r}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(path, key, f"must be >= {meta['min']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(path, key, f"must be <= {meta['max']}, got {value!r}")
    if key.endswith("_s") and value > MAX_SECONDS:
        raise ConfigError(path, key, f"must be <= {MAX_SECONDS:g} seconds, got {value!r}")


def _check_type(value, hint, path: str, key: str):
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(path, key, f"must be a list of strings, got {value!r}")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
            raise ConfigError(path, key, f"must be a table of integers, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > MAX_SECONDS:               # float() of a huge int overflows
            raise ConfigError(path, key, f"is out of range, got {value!r}")
        return float(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(path, key, f"must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value
