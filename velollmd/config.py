"""The daemon's configuration: one frozen dataclass per TOML section.

This module is the only reader of the TOML file. Each field's type annotation is its schema;
`metadata` adds bounds (`min`, `max`) and `choices`. Anything off (unknown key, wrong type,
out of range, missing file, bad syntax) raises ConfigError, which names the file, the key and
the reason on one line.
"""
from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field

from .errors import ConfigError

DEFAULT_PATH = "/etc/velollm.toml"
BACKEND_KINDS = ("ollama", "llamacpp", "openai", "engine")
ENGINE_DEVICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("debug", "info", "warning", "error")
# A backend URL: scheme, host (or [IPv6]), optional port, optional path. Not urllib: config sits
# below cache/ and toolcalls/, which may not import the network modules (tests/test_layers.py).
URL_RE = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[^\s/:@\[\]?#]+)(?::(\d{1,5}))?(?:/\S*)?")
MAX_SECONDS = 1e9                  # any *_s setting: beyond this, timers overflow (about 31 years)


def _opt(default, **meta):
    """A field with a default and schema metadata (min, max, choices)."""
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples / default_factory for mutable defaults")
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = _opt(8000, min=0, max=65535)
    max_connections: int = _opt(1024, min=1)
    max_header_bytes: int = _opt(16384, min=1024, max=1048576)
    max_body_bytes: int = _opt(33554432, min=1)
    header_timeout_s: float = _opt(30.0, min=0.001)
    keepalive_timeout_s: float = _opt(30.0, min=0.001)
    drain_timeout_s: float = _opt(30.0, min=0.0)
    sse_ping_s: float = _opt(15.0, min=0.01)
    api_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackendConfig:
    name: str = ""
    kind: str = _opt("", choices=BACKEND_KINDS)
    url: str = ""
    models: tuple[str, ...] = ("*",)
    slots: int = _opt(0, min=0, max=4096)          # 0 = discover (llama.cpp /props) or 1
    api_key: str = ""
    num_ctx: int = _opt(0, min=0)                  # 0 = the backend's default
    connect_timeout_s: float = _opt(5.0, min=0.001)
    timeout_s: float = _opt(600.0, min=0.001)      # read timeout between bytes of a response
    health_interval_s: float = _opt(5.0, min=0.05)
    # kind = "engine" only (the in-process engine): what it serves and how.
    model: str = ""                                # one GGUF file, served under its stem or `alias`
    alias: str = ""
    models_dir: str = ""                           # every *.gguf in this folder
    ollama_store: bool = True                      # and Ollama's local model store, by Ollama's names
    device: str = _opt("auto", choices=ENGINE_DEVICES)
    threads: int = _opt(0, min=0, max=1024)        # 0 = every core
    kv_cache_mb: int = _opt(0, min=0)              # 0 = num_ctx x max_running tokens of KV
    block_size: int = _opt(16, min=1, max=1024)    # tokens per KV block
    max_batch_tokens: int = _opt(512, min=1)       # tokens per engine step (prefill chunk + decodes)
    max_running: int = _opt(16, min=1, max=1024)   # sequences decoded together
    keep_alive_s: float = _opt(300.0, min=0.0)     # unload a model idle this long (0 = never)
    max_loaded_models: int = _opt(1, min=1, max=64)
    chat_template: str = ""                        # a family name when the GGUF's is not recognised


ENGINE_KEYS = ("model", "alias", "models_dir", "ollama_store", "device", "threads", "kv_cache_mb",
               "block_size", "max_batch_tokens", "max_running", "keep_alive_s", "max_loaded_models",
               "chat_template")


@dataclass(frozen=True)
class CacheConfig:
    enabled: bool = True
    exact: bool = True
    semantic: bool = True
    max_entries: int = _opt(10000, min=0)
    max_bytes: int = _opt(268435456, min=0)
    ttl_s: float = _opt(86400.0, min=0.0)          # 0 = entries never expire
    semantic_threshold: float = _opt(0.95, min=0.0, max=1.0)
    semantic_max_entries: int = _opt(100000, min=0)
    semantic_dtype: str = _opt("float32", choices=("float32", "float16"))
    embedder: str = _opt("builtin", choices=("builtin", "backend"))
    embed_backend: str = ""                        # name of a [[backends]] entry
    embed_model: str = ""
    embed_dim: int = _opt(384, min=8, max=8192)    # dimension of the builtin embedder
    cache_sampled: bool = False
    path: str = "/var/lib/velollm/cache"           # empty = memory only
    snapshot_interval_s: float = _opt(300.0, min=0.0)  # 0 = only on shutdown


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


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True


@dataclass(frozen=True)
class LogConfig:
    level: str = _opt("info", choices=LOG_LEVELS)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    backends: tuple[BackendConfig, ...] = ()
    cache: CacheConfig = field(default_factory=CacheConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    path: str = "<defaults>"


SECTIONS = {"server": ServerConfig, "cache": CacheConfig, "tools": ToolsConfig,
            "scheduler": SchedulerConfig, "metrics": MetricsConfig, "log": LogConfig}


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


def config_from_table(table: dict, path: str = "<table>") -> Config:
    unknown = set(table) - set(SECTIONS) - {"backends"}
    if unknown:
        raise ConfigError(path, sorted(unknown)[0], "unknown section or key")
    sections = {}
    for name, cls in SECTIONS.items():
        sub = table.get(name, {})
        if not isinstance(sub, dict):
            raise ConfigError(path, name, "must be a table [" + name + "]")
        sections[name] = build_section(cls, sub, path, name)
    backends = _build_backends(table.get("backends", []), path)
    _check_embedder(sections["cache"], backends, path)
    _check_concurrency(sections["scheduler"], path)
    return Config(backends=backends, path=path, **sections)


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
        if backend.kind != "engine":
            _check_url(backend.url, path, f"{prefix}.url")
        if backend.kind != "engine":
            for key in ENGINE_KEYS:
                if key in item:
                    raise ConfigError(path, f"{prefix}.{key}", 'applies only to kind = "engine"')
        if backend.name in seen:
            raise ConfigError(path, f"{prefix}.name", f"duplicate backend name {backend.name!r}")
        seen.add(backend.name)
        backends.append(backend)
    return tuple(backends)


def _check_url(url: str, path: str, key: str) -> None:
    match = URL_RE.fullmatch(url)
    if match is None or int(match[2] or 80) > 65535:
        raise ConfigError(path, key, f"must be an http:// URL with a host (and a port up to 65535), got {url!r}")


def build_section(cls, table: dict, path: str, prefix: str):
    """Build dataclass `cls` from a TOML table, checking every key against the schema."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(path, f"{prefix}.{key}", "unknown key")
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
