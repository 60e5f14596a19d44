"""The tokenizer utility routes llama-server and vLLM serve, answered from the model's own
tokenizer and chat template (the backend's: llama-server's own routes, or the engine's).

POST /tokenize takes two dialects, told apart by their fields: llama-server's (`content`,
`add_special`, `parse_special`, `with_pieces`) answers {"tokens"}; vLLM's (`prompt`, or
`messages` with `add_generation_prompt` and `tools`; `add_special_tokens`,
`return_token_strs`) answers {"count", "max_model_len", "tokens"} (+ "token_strs": each token as
its vocabulary spells it, "▁wor", "<0xC3>", "Ġw", as vLLM's convert_ids_to_tokens). A vLLM chat is
tokenized as generating reads it (the chat template's text, then the tokenizer with its
specials): the count a prompt budget needs. POST /detokenize answers the text as both
llama-server's "content" and vLLM's "prompt": their bodies are alike (llama-server's router mode
sends `model` too), so one answer suits either client. POST /apply-template (llama-server's): the
prompt text the model would see. GET /tokenizer_info (vLLM's, which lm-evaluation-harness's
remote tokenizer reads): the tokenizer's config (bos_token, eos_token, pad_token, chat_template,
model_max_length, tokenizer_class), built from the engine's GGUF or llama-server's /props, or an
OpenAI-compatible server's own answer passed through. Behind an OpenAI-compatible backend (vLLM),
/tokenize and /detokenize are the server's own routes, passed through (llama-server's dialect
of /tokenize as vLLM's `prompt`); /apply-template has no vLLM route (a 501).

`model` is optional, as on llama-server and vLLM: without one, the one model served by a
backend that can answer (several: a 400 asking for one); /tokenizer_info takes it as a query
parameter (`?model=`) or in a JSON body.
"""
from __future__ import annotations

from typing import Callable, NamedTuple
from urllib.parse import parse_qsl

from ..backends.base import Backend, in_vocab
from ..backends.registry import Registry
from ..core.pipeline import Pipeline
from ..errors import BackendError, BadRequest, NotImplementedByBackend
from ..http.message import Request, Response
from .access import Access
from .validate import validate_chat

VLLM_TOKENIZE_FIELDS = ("prompt", "messages")


class Capability(NamedTuple):
    """What the routes here say of a backend capability (a Backend flag) no model has."""
    needs: str                  # the backends that have it
    none_served: str            # the 501 when no model the caller may use has it
    code: str                   # that 501's code
    refusal: Callable[[Backend, str], NotImplementedByBackend]   # the 501 of a model whose backend lacks it


_TOKENIZER = ("no model here exposes its tokenizer", "tokenizer_unavailable", Backend.tokenizer_unavailable)
CAPABILITIES = {"serves_tokenizer": Capability("a llama.cpp or engine backend", *_TOKENIZER),
                "tokenizes": Capability("a llama.cpp, engine or vLLM backend", *_TOKENIZER),
                "serves_tokenizer_info": Capability("an engine, llama.cpp or vLLM backend", *_TOKENIZER),
                "serves_props": Capability("a llama.cpp or engine backend", "no model here answers llama-server's "
                                           "/props", "props_unavailable", Backend.props_unavailable)}
MAX_NAMES_SHOWN = 5            # models named in the "which model?" 400


class TokenizeRoutes:
    def __init__(self, access: Access, registry: Registry, pipeline: Pipeline):
        self.access, self.registry, self.pipeline = access, registry, pipeline

    def register(self, router) -> None:
        router.add("POST", "/tokenize", self.tokenize)
        router.add("POST", "/detokenize", self.detokenize)
        router.add("POST", "/apply-template", self.apply_template)
        router.add("GET", "/tokenizer_info", self.tokenizer_info)

    async def tokenize(self, request: Request) -> Response:
        body = request.json()
        vllm = [name for name in VLLM_TOKENIZE_FIELDS if name in body]
        if vllm and "content" in body or len(vllm) > 1:
            raise BadRequest("send `content` (llama-server), `prompt` or `messages` (vLLM): only one of them",
                             param=vllm[-1])
        backend, model = await self._backend_for(request, body, capability="tokenizes")
        if vllm:
            if not backend.serves_tokenizer:
                return Response.json(await backend.forward_tokenize("/tokenize", {**body, "model": model}))
            return Response.json(await _vllm_tokens(backend, model, body))
        content = body.get("content", "")
        flags = {name: _flag(body, name, default) for name, default in
                 (("add_special", False), ("parse_special", True), ("with_pieces", False))}
        if not isinstance(content, (str, list)) or isinstance(content, list) and not all(
                isinstance(item, (str, int)) and type(item) is not bool for item in content):
            raise BadRequest("content must be a string, or an array of strings and token ids", param="content")
        if not backend.serves_tokenizer:
            return Response.json(await _forwarded_content(backend, model, content, flags))
        if isinstance(content, list):
            await _check_ids(backend, model, [i for i in content if not isinstance(i, str)], "content")
        return Response.json({"tokens": await backend.tokenize_text(model, content, **flags)})

    async def detokenize(self, request: Request) -> Response:
        body = request.json()
        backend, model = await self._backend_for(request, body, capability="tokenizes")
        tokens = body.get("tokens", [])
        if not isinstance(tokens, list):
            raise BadRequest("tokens must be an array of token ids", param="tokens")
        await _check_ids(backend, model, tokens, "tokens")
        if not backend.serves_tokenizer:
            text = (await backend.forward_tokenize("/detokenize", {"model": model, "tokens": tokens})).get("prompt")
            if not isinstance(text, str):
                raise BackendError(f"backend {backend.name} answered /detokenize with no prompt text",
                                   code="backend_error")
        else:
            text = await backend.detokenize(model, tokens)
        return Response.json({"content": text, "prompt": text})

    async def apply_template(self, request: Request) -> Response:
        body = request.json()
        backend, model = await self._backend_for(request, body)
        return Response.json({"prompt": await backend.apply_template(_chat_body(body, model))})

    async def tokenizer_info(self, request: Request) -> Response:
        backend, model = await self._backend_for(request, model_query_or_body(request),
                                                 capability="serves_tokenizer_info")
        return Response.json(await backend.tokenizer_info(model))

    async def _backend_for(self, request: Request, body: dict,
                           capability: str = "serves_tokenizer") -> tuple[Backend, str]:
        return await admitted_backend(self.access, self.registry, self.pipeline, request, body, capability)


async def admitted_backend(access: Access, registry: Registry, pipeline: Pipeline, request: Request, body: dict,
                           capability: str = "serves_tokenizer") -> tuple[Backend, str]:
    """The backend that answers for the body's model (that has `capability`: its tokenizer,
    its /props...), and the served model (aliases resolved); the caller's key may use it and
    is under its limits."""
    asked = model_or_only(access, registry, request, body, capability=capability)
    key_name = access.admit(request, asked, defer=True)
    await pipeline.admit(key_name)
    return tokenizer_for(registry, asked, capability)


def model_query_or_body(request: Request) -> dict:
    """A GET route's `model`: the `?model=` query parameter (empty: a 400 as any bad name), else
    a JSON body's, else none."""
    asked = dict(parse_qsl(request.query, keep_blank_values=True)).get("model")
    return {"model": asked} if asked is not None else request.json() if request.body else {}


def tokenizer_for(registry: Registry, asked: str, capability: str = "serves_tokenizer") -> tuple[Backend, str]:
    """The backend whose tokenizer answers for the model `asked` (the first candidate with
    `capability`), and the served model (aliases resolved); 400 bad name, 404 unknown, 503 none
    healthy, 501 none has it (its refusal names the backend)."""
    candidates = registry.candidates(asked)
    model = registry.resolve(asked)
    for backend in candidates:
        if getattr(backend, capability):
            return backend, model
    raise CAPABILITIES[capability].refusal(candidates[0], model)


def model_or_only(access: Access, registry: Registry, request: Request, body: dict, *, capability: str = "") -> str:
    """The body's `model` (a non-empty string, else a 400), or without one `only_model`."""
    model = body.get("model")
    if model is None:
        return only_model(access, registry, request, capability=capability)
    if not isinstance(model, str) or not model:
        raise BadRequest("model must be a non-empty string", param="model")
    return model


def only_model(access: Access, registry: Registry, request: Request, *, capability: str = "") -> str:
    """The model a request without `model` means, as llama-server's routes take none: the one
    model the caller may use (`capability`, e.g. "serves_tokenizer": among those whose backend
    has it); several are a 400 asking for one."""
    names = served_names(access, registry, request, capability)
    if len(names) == 1:
        return names[0]
    if not names and capability:
        wanted = CAPABILITIES[capability]
        raise NotImplementedByBackend(f"{wanted.none_served} (that needs {wanted.needs})", param="model",
                                      code=wanted.code)
    if not names:
        raise BadRequest("model is required: no model is served here", param="model")
    shown = ", ".join(names[:MAX_NAMES_SHOWN]) + (", ..." if len(names) > MAX_NAMES_SHOWN else "")
    what = "can tokenize" if capability else "are served"
    raise BadRequest(f"model is required: {len(names)} models {what} here ({shown})", param="model")


def served_names(access: Access, registry: Registry, request: Request, capability: str = "") -> list[str]:
    """The models (aliases resolved, each once) the caller may use, among those whose backend
    has `capability` (all: "")."""
    backends = {b.name for b in registry.backends if not capability or getattr(b, capability)}
    return list(dict.fromkeys(registry.resolve(m.id) for m in access.visible_models(
        request, registry.catalogue()) if m.backend in backends))


async def _vllm_tokens(backend: Backend, model: str, body: dict) -> dict:
    """vLLM's TokenizeResponse for a `prompt` or a chat."""
    add_special = _flag(body, "add_special_tokens", True)
    want_strs = _flag(body, "return_token_strs", False)
    if "messages" in body:
        prompt = await backend.apply_template(_chat_body(body, model))
        add_special = True                      # the ids generating reads (the template's text and BOS)
    else:
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string", param="prompt")
    tokens = await backend.tokenize_text(model, prompt, add_special=add_special, parse_special=True,
                                         with_pieces=want_strs)
    answer = {"count": len(tokens), "max_model_len": backend.context_size(model)}
    if not want_strs:
        return {**answer, "tokens": tokens}
    return {**answer, "tokens": [t["id"] for t in tokens], "token_strs": await backend.token_strs(model, tokens)}


async def _forwarded_content(backend: Backend, model: str, content: str | list, flags: dict) -> dict:
    """llama-server's /tokenize body for a server with vLLM's route: its text, with or
    without the specials, as vLLM's `prompt`; what vLLM cannot answer (token ids among the
    texts, each token's piece, special tokens read as text) is a 400 naming the field."""
    refused = [name for name, wanted in (("content", isinstance(content, list)), ("with_pieces", flags["with_pieces"]),
                                         ("parse_special", not flags["parse_special"])) if wanted]
    if refused:
        raise BadRequest(f"backend {backend.name} tokenizes with vLLM's /tokenize, "
                         "which takes one text and reads its special tokens: token ids in `content`, `with_pieces` "
                         "and `parse_special: false` are llama-server's", param=refused[0], code="unsupported_value")
    answer = await backend.forward_tokenize("/tokenize", {"model": model, "prompt": content,
                                                          "add_special_tokens": flags["add_special"]})
    return {"tokens": answer.get("tokens")}


def _chat_body(body: dict, model: str) -> dict:
    """The validated chat body of /apply-template or a vLLM chat tokenize (400s as a chat
    completion gives them for its messages and tools)."""
    chat = {name: body[name] for name in ("messages", "tools", "chat_template_kwargs", "reasoning_effort",
                                          "continue_final_message") if name in body}
    _flag(body, "add_generation_prompt", True)
    if "add_generation_prompt" in body:
        chat["add_generation_prompt"] = body["add_generation_prompt"]
    return validate_chat({**chat, "model": model})


async def _check_ids(backend: Backend, model: str, ids: list, param: str) -> None:
    """Each id an integer of the model's vocabulary (when its backend can tell the size)."""
    vocab_size = await backend.vocab_size(model)
    if vocab_size is not None:
        in_vocab(ids, vocab_size, param)
    elif not all(type(i) is int and i >= 0 for i in ids):
        raise BadRequest("token ids must be non-negative integers", param=param)


def _flag(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if type(value) is not bool:
        raise BadRequest(f"{name} must be a boolean", param=name)
    return value
