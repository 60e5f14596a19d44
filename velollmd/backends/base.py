"""What every backend offers, in OpenAI shapes.

A backend takes a GenerateRequest (OpenAI-shaped body) and returns an OpenAI response dict,
or for streams an async iterator of OpenAI `chat.completion.chunk` / `text_completion`
dicts. Backend-specific translation (Ollama's /api/chat, llama.cpp's extras) stays inside
the backend module. Errors are VeloErrors: 404 model_not_found, 502 backend error, 504.
"""
from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from ..config import MAX_SLOTS, BackendConfig, SchedulerConfig
from ..errors import (CONTEXT_LENGTH_EXCEEDED, BackendBusy, BackendError, BadRequest, NotFound,
                      NotImplementedByBackend, VeloError)
from ..http.client import ClientResponse, HTTPClient
from ..wire.request import GenerateRequest
from ..wire.streams import Deferred, closing
from ..wire.vllm import GBNF, asked_vllm_fields
from .model_names import latest_twin

log = logging.getLogger("velollmd.backends")
DEFAULT_NUM_CTX = 4096        # per slot, when neither the backend nor the config says
# A prompt over the context as servers word it where their error has no type or code that says
# so (_is_context_overflow): vLLM ("maximum context length is", as OpenAI), SGLang ("longer than
# the model's context length"), llama-server ("exceeds the available context size").
OVER_CONTEXT_RE = re.compile(r"exceeds? the available context|maximum context length|longer than the model's "
                             r"context length", re.IGNORECASE)
HEALTH_TIMEOUT_S = 5.0        # a health check's whole deadline (connect_timeout_s when longer)
BUSY_STATUSES = (429, 503)    # a backend that answers these is busy (full, loading), not failing
BUSY_RETRY_AFTER_S = 1        # Retry-After for a busy answer that gave none: slots free in seconds


@dataclass
class ModelInfo:
    """One model a backend serves, as /v1/models and /api/tags need it."""
    id: str
    backend: str
    identity: str = ""                  # digest / model path: part of the cache key
    size: int = 0
    created: int = 0
    details: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)   # the backend's own catalogue entry


class Backend:
    """A backend says what it can do through its capabilities, so that the scheduler and the
    API layer ask those instead of testing a kind or a class."""
    kind = "base"
    supports_n = False
    can_tokenize = False        # `tokenize(text)` gives the model's own token ids
    serves_tokenizer = False    # the model's tokenizer and chat template as routes: tokenize_text, detokenize,
                                # apply_template, vocab_size (velollmd's /tokenize, /detokenize, /apply-template)
    serves_tokenizer_info = False   # tokenizer_info(model): vLLM's GET /tokenizer_info, built or passed through
    serves_props = False        # server_props(model): llama-server's GET /props, passed through or built
    serves_rerank = False       # rerank(body): a cross-encoder's scores (/v1/rerank), when its server was started for it
    forwards_tokenize = False   # vLLM's POST /tokenize and /detokenize are the server's own (forward_tokenize)
    pins_slots = False          # a request may name the slot (`id_slot`) that holds its prefix
    native_ollama = False       # speaks Ollama's own API: Ollama clients pass through (`native`)
    takes_context = False       # a chat body's `context` (Ollama's token ids of earlier turns) is
                                # rendered before its prompt, and the answer carries the next one
    loaded_models: frozenset[str] | None = None   # models held in memory now; None = unknown
    loads_models = False        # loads and unloads its models itself on request (load_model, unload_model)
    retired = False             # taken out by a reload: finishes its requests, takes no new one
    freshens = False            # `freshen()` has something to check (the engine: its files)
    # vLLM's extras it honours (wire/vllm.py: constraint kinds such as "choice", sampling
    # extras such as "min_tokens"); any other a request asks for is a 400 naming its field.
    vllm_fields: frozenset[str] = frozenset()
    # Sampling defaults the server applies to omitted fields: the cache key applies them too,
    # so that an explicit default and an omitted field share one entry.
    defaults: dict = {}

    def __init__(self, config: BackendConfig):
        self.config = config
        self.name = config.name
        headers = {"authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self.client = HTTPClient(config.url, connect_timeout=config.connect_timeout_s,
                                 read_timeout=config.timeout_s, headers=headers) if config.url else None
        self.healthy: bool | None = None        # None = not checked yet
        self.last_error = ""
        self.models: list[ModelInfo] = []
        self._names: set[str] = set()                 # ids and untagged names of `models`
        self._names_of: list[ModelInfo] | None = None   # the `models` list they were made from
        self.checked_at = 0.0
        self.num_slots = config.slots or 1
        self.slots_source: str | None = "config" if config.slots else None   # None: width unknown

    # -- routing -------------------------------------------------------------------------

    def matches(self, model: str) -> bool:
        """Whether the `models` globs send `model` here; a name and its `:latest` are one model,
        as in Ollama (`llama3.2` and llama3.2:latest)."""
        return _glob_matches(model, self.config.models) or _glob_matches(latest_twin(model), self.config.models)

    def has_model(self, model: str) -> bool:
        """Listed by its id or its `:latest` twin (`llama3.2` for llama3.2:latest, not for
        llama3.2:1b)."""
        if self._names_of is not self.models:           # the catalogue was refreshed
            self._names = {m.id for m in self.models}
            self._names_of = self.models
        return model in self._names or latest_twin(model) in self._names

    def identity(self, model: str) -> str:
        for info in self.models:
            if info.id == model:
                return info.identity or info.id
        return model

    def context_size(self, model: str | None = None, num_ctx: int | None = None) -> int:
        """Tokens of context per slot (of `model` where a backend's models differ): what the
        server reports, else `num_ctx`, else 4096. A request's `num_ctx` (Ollama's) sizes it
        only where the backend loads models itself (the engine): a server's context is its own."""
        return self.config.num_ctx or DEFAULT_NUM_CTX

    def num_parallel(self, request: GenerateRequest) -> int:
        """How many requests the server runs for `request` at once, a slot each: one, but where
        it splits a request (llama-server: a completion's prompts)."""
        return 1

    def sees_images(self) -> bool | None:
        """Whether its model takes image input; None when unknown (the server decides)."""
        return None

    def thinks(self, model: str) -> bool | None:
        """Whether `model` can think (Ollama's `thinking` capability); None when unknown (the
        server decides)."""
        return None

    def hears_audio(self) -> bool | None:
        """Whether its model takes audio input (input_audio parts); None when unknown."""
        return None

    def check_servable(self, model: str) -> None:
        """Unavailable (503 model_unavailable, with the reason) for a model this backend has but
        cannot serve, such as the engine's corrupt GGUF or manifest. Listings leave such a model
        out; a lookup of it (/api/show, GET /v1/models/{id}) answers as a chat for it does."""

    def keep_model(self, model: str, keep_alive_s: float | None) -> None:
        """Keep `model` loaded this long after its last use (Ollama's keep_alive: math.inf for
        good, 0 to unload once idle, None for the backend's default). Only a backend that loads
        models itself takes it; servers such as llama-server keep theirs."""

    def configure_scheduler(self, config: SchedulerConfig) -> None:
        """New [scheduler] settings (a reload that keeps this backend) for a backend that queues
        requests in a scheduler of its own; the others' queues are theirs."""

    async def load_model(self, model: str) -> None:
        """Load `model` now (a client warming it up) where the backend loads models itself."""

    async def unload_model(self, model: str) -> None:
        """Unload `model` now if idle (Ollama's empty request with keep_alive 0) where the
        backend loads models itself."""

    async def read_loaded_models(self) -> None:
        """Bring `loaded_models` (model_status) up to date now, before a load or unload decides
        on it, where they come from the server (Ollama's /api/ps); raises as its calls do."""

    def loaded_model_info(self, model: str) -> ModelInfo | None:
        """A loaded model's listing entry as it was loaded, for /api/ps to show a model whose
        file is gone while its last requests still run (it leaves the catalogue at once, and
        stays loaded until they end); None where the backend loads no models itself."""
        return None

    def model_status(self, model: str) -> str:
        """The served `model`'s state in llama-server's router words (its /models `status.value`):
        "loaded" or "unloaded" as the backend's `loaded_models` say (Ollama's /api/ps); a server
        that keeps its models itself (llama-server, vLLM: `loaded_models` unknown) holds them
        loaded while it answers, and the listings show only healthy backends' models."""
        return "loaded" if self.loaded_models is None or model in self.loaded_models else "unloaded"

    def model_path(self, model: str) -> str:
        """The file the served `model` is read from, where this daemon knows it ("" otherwise)."""
        return ""

    def in_vram(self, model: str) -> bool:
        """Whether a model this daemon loads itself runs in GPU memory (/api/ps's size_vram)."""
        return False

    def loaded_until(self) -> dict[str, float] | None:
        """The models held in memory now, each with the wall-clock time it is unloaded once idle
        (math.inf: never), for Ollama's /api/ps; None where the server keeps its models itself."""
        return None

    def status(self) -> dict:
        return {"name": self.name, "kind": self.kind, "url": self.config.url,
                "healthy": self.healthy, "error": self.last_error or None,
                "slots": self.num_slots if self.slots_source else None, "slots_source": self.slots_source,
                "models": [m.id for m in self.models]}

    # -- lifecycle -----------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Health check plus catalogue refresh; never raises. A server reached over HTTP has
        `health_timeout_s()` to answer: one that accepts connections but answers nothing
        (stopped, deadlocked) is down, not healthy until the generations' read timeout."""
        try:
            async with asyncio.timeout(self.health_timeout_s()):
                self.models = await self.list_models()
                await self.discover()
            self.healthy, self.last_error = True, ""
        except TimeoutError:
            self.healthy, self.last_error = False, f"no answer to the health check in {self.health_timeout_s():g} s"
        except VeloError as exc:
            self.healthy, self.last_error = False, exc.message
        except Exception as exc:                       # a broken backend must not kill the loop
            self.healthy, self.last_error = False, f"{type(exc).__name__}: {exc}"
        if not self.healthy:
            self.forget_server()
        self.checked_at = time.time()
        return bool(self.healthy)

    async def freshen(self) -> None:
        """Bring the catalogue up to date for a listing, where the backend can tell cheaply that
        it changed (the engine: its files); a server's is refreshed by the health loop."""

    def health_timeout_s(self) -> float | None:
        """How long a health check may take; None (no deadline) for an in-process backend."""
        if self.client is None:
            return None
        return max(HEALTH_TIMEOUT_S, self.config.connect_timeout_s)

    def forget_server(self) -> None:
        """The server is down: what was learnt of it may not hold when it is back."""

    async def discover(self) -> None:
        """Learn what the server says of itself (slots, context, loaded models); optional."""

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    # -- the API ---------------------------------------------------------------------------

    async def list_models(self) -> list[ModelInfo]:
        raise NotImplementedByBackend(f"backend {self.name} cannot list models")

    async def chat(self, request: GenerateRequest) -> dict:
        raise NotImplementedByBackend(f"backend {self.name} ({self.kind}) cannot serve chat completions yet")

    def chat_stream(self, request: GenerateRequest) -> AsyncIterator[dict]:
        raise NotImplementedByBackend(f"backend {self.name} ({self.kind}) cannot stream chat completions yet")

    async def completion(self, request: GenerateRequest) -> dict:
        raise NotImplementedByBackend(f"backend {self.name} ({self.kind}) cannot serve completions")

    def completion_stream(self, request: GenerateRequest) -> AsyncIterator[dict]:
        raise NotImplementedByBackend(f"backend {self.name} ({self.kind}) cannot stream completions")

    async def answer_events(self, request: GenerateRequest) -> AsyncIterator[list[bytes] | list[dict]]:
        """The streamed answer as it comes, a batch per backend read: the backend's own JSON
        bytes per event where it speaks OpenAI's chunks already (decoded later, re-encoded
        only when something must change), else chunk dicts. The default: the dict stream,
        one chunk per batch."""
        chunks = self.chat_stream(request) if request.endpoint == "chat" else self.completion_stream(request)
        async with closing(chunks) as source_iter:
            async for chunk in source_iter:
                yield [chunk]

    async def count_prompt_tokens(self, body: dict) -> int | None:
        """Tokens of an OpenAI chat body's prompt as the model sees it (chat template and
        tools included), or None when this backend cannot tell (callers then estimate)."""
        return None

    async def prompt_token_ids(self, body: dict) -> list[int] | None:
        """The token ids of an OpenAI chat or completion body's prompt as the server reads
        them, for a server that takes a prompt as token ids (llama-server); None otherwise."""
        return None

    async def tokenize_text(self, model: str, content: str | list, *, add_special: bool, parse_special: bool,
                            with_pieces: bool = False) -> list:
        """llama-server's /tokenize: ids of `content` (a text, or texts and token ids mixed), or
        with_pieces [{"id", "piece"}], piece a string, or its bytes when they are no UTF-8 text."""
        raise self.tokenizer_unavailable(model)

    async def detokenize(self, model: str, tokens: list[int]) -> str:
        """llama-server's /detokenize: the text of token ids (special tokens written out)."""
        raise self.tokenizer_unavailable(model)

    async def token_strs(self, model: str, tokens: list[dict]) -> list[str]:
        """vLLM's /tokenize `token_strs` for tokenize_text's with_pieces answer: each token as
        its vocabulary spells it (HF's convert_ids_to_tokens: '▁the', '<0xE2>', 'Ġthe'), not
        its text: a byte token's text alone is no UTF-8 (it would read U+FFFD)."""
        raise self.tokenizer_unavailable(model)

    async def apply_template(self, body: dict) -> str:
        """llama-server's /apply-template: the prompt text a validated chat body (`messages`,
        `tools`, `add_generation_prompt`) becomes, as generating renders it."""
        raise self.tokenizer_unavailable(body["model"])

    async def vocab_size(self, model: str) -> int | None:
        """The number of token ids `model`'s tokenizer knows, or None when it cannot tell."""
        return None

    @property
    def tokenizes(self) -> bool:
        """/tokenize and /detokenize answer for its models: from its own tokenizer
        (serves_tokenizer), or as the server's own routes (forwards_tokenize)."""
        return self.serves_tokenizer or self.forwards_tokenize

    async def forward_tokenize(self, path: str, body: dict) -> dict:
        """vLLM's POST /tokenize or /detokenize (`path`), answered by the server itself."""
        raise self.tokenizer_unavailable(body.get("model", ""))

    async def tokenizer_info(self, model: str) -> dict:
        """vLLM's GET /tokenizer_info for `model`: its tokenizer_config.json fields (bos_token,
        eos_token, pad_token, chat_template, model_max_length, ...) and `tokenizer_class`."""
        raise self.tokenizer_unavailable(model)

    def tokenizer_unavailable(self, model: str) -> NotImplementedByBackend:
        return NotImplementedByBackend(
            f"model {model!r} is served by backend {self.name} ({self.kind}), which does not expose its tokenizer "
            "or chat template; tokenizing needs a llama.cpp or engine backend", param="model",
            code="tokenizer_unavailable")

    async def server_props(self, model: str) -> dict:
        """llama-server's GET /props for `model` (backends/props.py)."""
        raise self.props_unavailable(model)

    def props_unavailable(self, model: str) -> NotImplementedByBackend:
        return NotImplementedByBackend(
            f"model {model!r} is served by backend {self.name} ({self.kind}), which has no llama-server /props; "
            "/props answers for a llama.cpp or engine backend", param="model", code="props_unavailable")

    async def embeddings(self, body: dict) -> dict:
        raise NotImplementedByBackend(f"backend {self.name} ({self.kind}) cannot compute embeddings")

    async def rerank(self, body: dict) -> dict:
        raise self.rerank_unavailable(body["model"])

    def rerank_unavailable(self, model: str, why: str = "") -> NotImplementedByBackend:
        """A 501 saying which backend cannot rerank `model` and how reranking is served."""
        return NotImplementedByBackend(
            f"model {model!r} is served by backend {self.name} ({self.kind}), which cannot rerank{why}; "
            "reranking needs a reranker GGUF (pooling type RANK with a cls.output head, e.g. Qwen3-Reranker) "
            "on the engine or on llama-server started with --reranking, or a vLLM serving a reranker "
            "(cross-encoder) model", param="model", code="rerank_unavailable")

    # -- helpers for subclasses ----------------------------------------------------------

    async def post_json(self, path: str, body: dict) -> dict:
        response = await self.client.request("POST", path, json=body)
        if response.status >= 400:                      # (json_or_raise, one coroutine fewer per answer)
            raise await self.error_from(response, body.get("model"))
        return await response.json()

    async def get_json(self, path: str) -> dict:
        response = await self.client.request("GET", path)
        return await self.json_or_raise(response)

    def stream_events(self, path: str, body: dict, *, sse: bool) -> AsyncIterator[list[bytes]]:
        """POST and yield the JSON bytes of the events that each read of an SSE (OpenAI) or
        NDJSON (Ollama) stream completes, blank events and `[DONE]` left out (never an empty
        list). The body is read to its end so the connection can be reused. The request goes
        out on the first `__anext__`; after it, each batch comes straight from the response's
        own iterator (no generator level of ours in between)."""
        return Deferred(lambda: self._open_events(path, body, sse))

    async def _open_events(self, path: str, body: dict, sse: bool) -> AsyncIterator[list[bytes]]:
        response = await self.client.request("POST", path, json=body)
        if response.status >= 400:
            raise await self.error_from(response, body.get("model"))
        return response.iter_sse_batches(events=True) if sse else response.iter_line_batches(events=True)

    async def stream_json(self, path: str, body: dict, *, sse: bool) -> AsyncIterator[dict]:
        """`stream_events`, one decoded event at a time (see `decode_event`)."""
        async with closing(self.stream_events(path, body, sse=sse)) as source_iter:
            async for events in source_iter:
                for data in events:
                    yield self.decode_event(data)

    def decode_event(self, data: bytes) -> dict:
        """One stream event as a JSON object; an `{"error": ...}` event raises BackendError."""
        try:
            event = json.loads(data)
        except (ValueError, RecursionError):     # not JSON, or nested past any decoder
            raise BackendError(f"backend {self.name} sent a stream event that is not JSON: {data[:200]!r}") from None
        if not isinstance(event, dict):
            raise BackendError(f"backend {self.name} sent a stream event that is not an object")
        if "error" in event:
            raise BackendError(f"backend {self.name} failed mid-stream: {_error_text(event['error'])}",
                               code="backend_error")
        return event

    async def json_or_raise(self, response: ClientResponse, model: str | None = None) -> dict:
        if response.status >= 400:
            raise await self.error_from(response, model)
        return await response.json()

    async def error_from(self, response: ClientResponse, model: str | None = None) -> VeloError:
        """Turn a backend's error response into our error with the right status; a prompt over
        the context is OpenAI's context_length_exceeded (the service names the prompt's field)."""
        body = await response.read()
        message = extract_error_message(body) or f"HTTP {response.status}"
        if response.status == 404 and model is not None:
            return NotFound(f"model {model!r} not found on backend {self.name}: {message}",
                            param="model", code="model_not_found")
        if response.status in (400, 422) and (_is_context_overflow(body) or OVER_CONTEXT_RE.search(message)):
            return BadRequest(f"backend {self.name} rejected the request: {message}",
                              code=CONTEXT_LENGTH_EXCEEDED)
        if response.status in (400, 422):
            return BadRequest(f"backend {self.name} rejected the request: {message}")
        if response.status == 501:
            return NotImplementedByBackend(f"backend {self.name}: {message}")
        if response.status in BUSY_STATUSES:
            return BackendBusy(f"backend {self.name} is busy ({response.status}): {message}",
                               code="backend_busy", headers={"retry-after": _retry_after(response)})
        return BackendError(f"backend {self.name} answered {response.status}: {message}",
                            code="backend_error")


def in_vocab(ids: list, vocab_size: int, param: str) -> list[int]:
    """Token ids a client sent, each an integer of the vocabulary (else a 400 naming `param`:
    an id outside it would fail the engine's whole batch, or llama-server with a 500)."""
    for token_id in ids:
        if type(token_id) is not int or not 0 <= token_id < vocab_size:
            raise BadRequest(f"token id {token_id!r} is outside the vocabulary (0..{vocab_size - 1})", param=param)
    return ids


def server_count(value) -> int | None:
    """A count a server reports of itself (slots, context, a size, a time) when it is a
    positive whole number, else None: garbage there reads as a server that does not say, not
    as an exception in each listing, admission or /health."""
    return value if type(value) is int and value > 0 else None


def server_width(value) -> int | None:
    """The slots a server says it has (server_count), at most MAX_SLOTS: a server's word of a
    billion slots would have the daemon build a billion-entry slot table (a hang, then out of
    memory) before its first request."""
    count = server_count(value)
    return min(count, MAX_SLOTS) if count else None


def listed_models(entries, name_key: str) -> list[dict]:
    """The entries of a server's model list that are objects with a non-empty text name."""
    return [m for m in entries if isinstance(m, dict) and isinstance(m.get(name_key), str) and m[name_key]] \
        if isinstance(entries, list) else []


def _glob_matches(model: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(model, pattern) for pattern in patterns)


def refuse_unhonoured(body: dict, honoured: frozenset[str], server: str) -> None:
    """A 400 naming the first vLLM field (wire/vllm.py) of `body` that asks for something the
    `server` cannot honour: never an answer that ignored a constraint the client asked for.
    `echo` left in a completion's body (what the daemon cannot echo alone: logprobs over the
    prompt, a token-id prompt, the prompt with max_tokens 0) is honoured where "echo" is."""
    if body.get("echo") and "echo" not in honoured:
        raise BadRequest(f"{server} does not compute a prompt's own logprobs: echo with logprobs, a token-id "
                         "prompt echoed and max_tokens 0 are served by the in-process engine only",
                         param="echo", code="unsupported_value")
    for name, param in asked_vllm_fields(body):
        if name not in honoured:
            owner = "llama.cpp's" if name == GBNF else "vLLM's"
            raise BadRequest(f"{server} does not support {param!r} ({owner}); see the README's table of "
                             "vLLM fields for what each backend honours", param=param, code="unsupported_value")


def fills_in_middle(body: dict) -> bool:
    """A completion body that asks to fill in the middle: a suffix, or llama-server's
    `input_extra` (its /infill, whose gap may be at the end of the file: an empty suffix).
    An empty suffix alone asks for nothing (Ollama's and OpenAI's reading)."""
    return "messages" not in body and (bool(body.get("suffix")) or body.get("input_extra") is not None)


def refuse_insert(body: dict) -> None:
    """`suffix` (fill in the middle) for a server whose completions would ignore it: a 400, as
    Ollama answers for a model without the insert capability, never a silent ignore."""
    if body.get("suffix"):
        raise BadRequest(f"model {body.get('model')!r} does not support insert (suffix)", param="suffix",
                         code="unsupported_value")


def _retry_after(response: ClientResponse) -> str:
    """The busy backend's Retry-After when it is whole seconds, else BUSY_RETRY_AFTER_S: a
    client told nothing retries at once, or gives up (the OpenAI SDK backs off by its own
    guess, Ollama's clients not at all)."""
    retry_after = response.header("retry-after", "")
    return retry_after if _is_seconds(retry_after) else str(BUSY_RETRY_AFTER_S)


def _is_seconds(value: str) -> bool:
    """A Retry-After worth passing on: whole seconds, under a day (not a date, not junk)."""
    return value.isascii() and value.isdigit() and int(value) < 86400


def _error_text(error) -> str:
    return error.get("message", str(error)) if isinstance(error, dict) else str(error)


def _is_context_overflow(body: bytes) -> bool:
    """An error saying the prompt does not fit the context: llama-server's type
    exceed_context_size_error, or OpenAI's own code (vLLM and others that copy it)."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, RecursionError, AttributeError):
        return False
    return isinstance(error, dict) and (error.get("type") == "exceed_context_size_error"
                                        or error.get("code") == CONTEXT_LENGTH_EXCEEDED)


def extract_error_message(body: bytes) -> str:
    """The message of an OpenAI ({"error": {"message"}}) or Ollama ({"error": "..."}) error."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return body[:300].decode("utf-8", "replace").strip()
    error = value.get("error") if isinstance(value, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error) if error else body[:300].decode("utf-8", "replace")
