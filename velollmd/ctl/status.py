"""`velollmctl status`: the daemon's health, backends, cache and queue in one short table.

Reads GET /health (always there), then GET /v1/velollm/cache and GET /metrics when the daemon
has them: a 404 (or any non-200) of those reads as "not available", not as a failure.
The whole takes at most --timeout: one deadline for all the GETs (a hung daemon costs the
timeout once, not once per GET); the optional parts left when it has passed read as "skipped".
Exit code 0 when the daemon answers and is healthy, 1 when it is unreachable or draining, 2
when --url is not an http(s) URL.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys

from ..errors import VeloError
from ..http.client import HTTPClient
from .remote import API_KEY_ENV, DAEMON_URL, base_url, error_line
from .report import format_columns, yes_no

HEADLINE_METRICS = ("velollm_http_requests_total", "velollm_tokens_total", "velollm_tool_call_repairs_total",
                    "velollm_tool_call_loops_total")


async def _get(client: HTTPClient, path: str, deadline: float) -> tuple[int, bytes]:
    """GET `path`, its head and body by `deadline` (the loop's clock); TimeoutError past it."""
    async with asyncio.timeout_at(deadline):
        response = await client.request("GET", path)
        return response.status, await response.read()


def json_object(body: bytes) -> dict:
    """The JSON object in `body`; ValueError for any other JSON value (a list, a string)."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


async def _optional(client: HTTPClient, path: str, parse, deadline: float) -> dict:
    """{"available", "status", "data"} of GET `path`, data = parse(body) on a 200; never raises
    for HTTP errors, a body that `parse` cannot read (ValueError) or the deadline. Not asked
    at all once the deadline has passed ("skipped")."""
    unavailable = {"available": False, "status": None, "data": None}
    if asyncio.get_running_loop().time() >= deadline:
        return {**unavailable, "skipped": True}
    try:
        status, body = await _get(client, path, deadline)
        data = parse(body) if status == 200 else None
    except (VeloError, ValueError, TimeoutError):
        return unavailable
    return {"available": data is not None, "status": status, "data": data}


def metrics_summary(body: bytes) -> dict:
    """Headline totals from Prometheus text (label sets summed), plus the number of samples."""
    samples = [sample for line in body.decode("utf-8", "replace").splitlines()
               if line and not line.startswith("#") and (sample := _sample(line)) is not None]
    totals = dict.fromkeys(HEADLINE_METRICS, 0.0)
    for family, value in samples:
        if family in totals:
            totals[family] += float(value)
    return {"num_samples": len(samples), "totals": totals}


def _sample(line: str) -> tuple[str, str] | None:
    """(metric name, value) of a sample line, None when it has no value. Label values may
    hold spaces and braces, so the value is what follows the last `}` (then a timestamp may)."""
    if "{" in line:
        name, _, rest = line.partition("{")
        after = rest.rpartition("}")[2].split()
    else:
        name, *after = line.split()
    return (name.strip(), after[0]) if after else None


async def fetch_status(url: str, api_key: str | None = None, timeout_s: float = 5.0) -> dict:
    """Everything `status` shows, as a JSON-able dict (`reachable` False and `error` on failure)."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else None
    client = HTTPClient(base_url(url), connect_timeout=timeout_s, read_timeout=timeout_s, headers=headers)
    result = {"url": base_url(url), "reachable": False, "healthy": False, "error": None,
              "health": None, "cache": None, "queue": None, "metrics": None}
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        status, body = await _get(client, "/health", deadline)
        result["health"] = json.loads(body)
        result["reachable"] = True
        result["healthy"] = status == 200 and result["health"].get("status") == "ok"
        result["cache"] = await _optional(client, "/v1/velollm/cache", json_object, deadline)
        result["queue"] = await _optional(client, "/v1/velollm/queue", json_object, deadline)
        result["metrics"] = await _optional(client, "/metrics", metrics_summary, deadline)
    except VeloError as exc:
        result["error"] = f"cannot reach velollmd at {result['url']}: {error_line(exc)}"
    except TimeoutError:
        result["error"] = f"velollmd at {result['url']} did not answer /health within {timeout_s:g} s"
    except (ValueError, AttributeError):
        result["error"] = f"{result['url']}/health did not answer with a JSON object: is this velollmd?"
    finally:
        await client.close()
    return result


def _status_text(status) -> str:
    """The daemon's status word; a /health answer without one (`{}`) says so, not "None"."""
    return "no status (/health named none)" if status in (None, "") else str(status)


def _uptime(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _backend_rows(backends: list[dict]) -> list[str]:
    """One row per backend: its width and where it was learnt ("adaptive" when the server does
    not say), and the number of requests the daemon lets run on it at once now."""
    rows = [["backend", "kind", "healthy", "slots", "from", "limit", "models", "error"]]
    for b in backends:
        slots = b.get("slots")
        rows.append([str(b.get("name", "?")), _kind(b), yes_no(b.get("healthy"), "unknown"),
                     "-" if slots is None else str(slots), str(b.get("slots_source") or "adaptive"),
                     str(b.get("concurrency_limit") or "-"), ", ".join(b.get("models") or []) or "-",
                     str(b.get("error") or "")])
    return format_columns(rows, right={3, 5})


def _kind(backend: dict) -> str:
    """The backend's kind; an OpenAI-compatible one's with the server it turned out to be and
    its version when known ("openai:vLLM-0.12.0": one word, as each column is): a vLLM's version
    says how it reads a structured output."""
    kind = str(backend.get("kind", ""))
    server = "-".join(str(part) for part in (backend.get("server"), backend.get("server_version")) if part)
    return f"{kind}:{server}" if server and kind == "openai" else kind


def _engine_lines(backends: list[dict]) -> list[str]:
    """An engine's loaded models and the files it cannot serve, with the reason for each."""
    lines = []
    for b in backends:
        engine = b.get("engine") if isinstance(b.get("engine"), dict) else {}
        if engine.get("loaded"):
            lines.append(f"{b.get('name', '?')}: loaded {', '.join(engine['loaded'])}")
        lines += [f"{b.get('name', '?')}: {model} unavailable: {reason}"
                  for model, reason in (engine.get("unavailable") or {}).items()]
    return lines


def _optional_rows(name: str, part: dict | None, render) -> list[list[str]]:
    if part and part.get("skipped"):
        return [[name, "skipped (--timeout reached)"]]
    if not part or not part["available"]:
        why = f"HTTP {part['status']}" if part and part["status"] else "no answer"
        if part and part["status"] == 401:
            why += f": give a key with --api-key or ${API_KEY_ENV}"
        return [[name, f"not available ({why})"]]
    return [[name if i == 0 else "", text] for i, text in enumerate(render(part["data"]) or ["-"])]


def _flatten(data, prefix: str = "") -> list[str]:
    if not isinstance(data, dict):
        return [f"{prefix}{data}"]
    lines = []
    for key, value in data.items():
        lines += _flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key} {value}"]
    return lines


def _cache_lines(data: dict) -> list[str]:
    """velollmd's own cache stats in one line; any other shape flattened."""
    if not {"entries", "bytes", "hits", "semantic_hits", "misses"} <= set(data):
        return _flatten(data)
    return [f"{data['entries']} entries, {data['bytes'] / 1e6:.1f} MB; hits {data['hits']} exact + "
            f"{data['semantic_hits']} semantic, misses {data['misses']}, bypasses {data.get('bypasses', 0)}"]


def _queue_lines(data: dict) -> list[str]:
    lines = [f"running {data.get('num_running', 0)}, waiting {data.get('num_waiting', 0)}, "
             f"rejected {data.get('num_rejected', 0)}, timed out {data.get('num_timed_out', 0)}, "
             f"failovers {data.get('num_failovers', 0)}"]
    for name, backend in (data.get("backends") or {}).items():
        lines.append(f"{name}: {backend.get('num_running', 0)} running / {backend.get('concurrency_limit', '?')} at once, "
                     f"{backend.get('num_waiting', 0)} waiting, breaker {backend.get('breaker', 'closed')}")
    return lines


def _metrics_lines(data: dict) -> list[str]:
    totals = data.get("totals") or {}
    return [f"{data['num_samples']} samples"] + [f"{name} {value:g}" for name, value in totals.items()]


def format_status(result: dict) -> str:
    health = result["health"]
    rows = [["velollmd", result["url"]], ["status", _status_text(health.get("status"))],
            ["version", str(health.get("version", "-"))], ["uptime", _uptime(health.get("uptime_s"))]]
    rows += _optional_rows("cache", result["cache"], _cache_lines)
    rows += _optional_rows("queue", result.get("queue"), _queue_lines)
    rows += _optional_rows("metrics", result["metrics"], _metrics_lines)
    backends = health.get("backends") or []
    table = _backend_rows(backends) + _engine_lines(backends) if backends else ["backends  none configured"]
    return "\n".join(format_columns(rows) + [""] + table) + "\n"


def add_status_arguments(parser) -> None:
    parser.add_argument("--url", default=DAEMON_URL, help=f"the daemon (default {DAEMON_URL})")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"for the daemon's protected routes: cache, queue, metrics (default ${API_KEY_ENV})")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=cmd_status)


def cmd_status(args) -> int:
    try:
        base_url(args.url)
    except ValueError as exc:
        print(f"velollmctl status: {exc}", file=sys.stderr)
        return 2
    result = asyncio.run(fetch_status(args.url, args.api_key, min(args.timeout, 30.0)))
    if args.json:
        print(json.dumps(result, indent=2))
    elif result["error"]:
        print(f"velollmctl status: {result['error']}", file=sys.stderr)
    else:
        try:
            table = format_status(result)
        except (TypeError, AttributeError, ValueError, OverflowError):
            # /health answered JSON of a shape velollmd never sends (a server that is not velollmd)
            print(f"velollmctl status: {result['url']}/health answered an object velollmd does not send: "
                  "is this velollmd?", file=sys.stderr)
            return 1
        sys.stdout.write(table)
    return 0 if result["healthy"] else 1
