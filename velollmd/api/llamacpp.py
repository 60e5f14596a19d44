"""llama-server's own generation routes: POST /completion (also /completions) and POST /infill,
for the editors and scripts written against llama.cpp (llama.vim and llama.vscode call /infill),
served on every backend: the native body becomes an OpenAI completion (a fill in the middle
with `suffix` and `input_extra` for /infill) served by the same pipeline as /v1/completions,
and the answer is given back in llama-server's native shape (wire/llamacpp_native.py).

The body: `prompt` (a text, token ids, or texts and token ids mixed: those are tokenized as
llama-server does, on a backend that serves its tokenizer), `n_predict` (-1: no limit; 0 is
one token, as llama-server answers it), `temperature` (under 0: greedy, llama.cpp's meaning),
`top_k`, `top_p`, `min_p`, `seed` (-1: random), `stop`, `stream`, `n_probs`, `logit_bias`
(llama-server's [[token, bias], ...] or an object), `n_indent`, `response_fields`. /infill adds
`input_prefix`, `input_suffix`, `input_extra` and `prompt`, text that goes after the prefix.
`model` is optional: without one, the one model served. Fields that only tune llama-server's own
slots and clock are accepted and ignored (`cache_prompt`, `id_slot`, `t_max_prompt_ms`,
`t_max_predict_ms`, `timings_per_token`); the others pass through as on /v1/completions
(`json_schema` is honoured everywhere and `grammar` on llama-server only, elsewhere a 400, as
validation reads them there; llama-server applies `samplers`, ..., the engine and Ollama do not;
`n_cmpl`, llama.vscode's parallel completions: llama-server answers a list of results, given
back as a list, the engine and Ollama one result). Errors keep the
OpenAI shape, which llama-server's {"error": {"code", "message", "type"}} clients read as well.
"""
from __future__ import annotations

from ..backends.registry import Registry
from ..core.pipeline import Pipeline
from ..errors import BadRequest, NotImplementedByBackend
from ..http.message import Request, Response
from ..http.sse import sse_response
from ..wire.llamacpp_native import NativeShape, native_answer, native_chunks
from .access import Access
from .ollama import OLLAMA_SAMPLING_RANGES
from .tokenize import model_or_only, tokenizer_for
from .validate import validate_completion

# Only llama-server's own slots and clock read these: they change no answer here.
IGNORED_FIELDS = ("cache_prompt", "id_slot", "t_max_prompt_ms", "t_max_predict_ms", "timings_per_token")
# Read here and turned into OpenAI fields (or the answer's shape), not passed on as they are.
NATIVE_FIELDS = ("prompt", "n_predict", "n_probs", "n_indent", "response_fields", "return_tokens", "seed",
                 "logit_bias", "temperature", "input_prefix", "input_suffix", "input_extra", "suffix")
SETTINGS = ("temperature", "top_k", "top_p", "min_p", "seed", "repeat_penalty", "presence_penalty",
            "frequency_penalty", "ignore_eos")
# llama-server takes any temperature, penalties and number of stop strings, as Ollama does.
NATIVE_SAMPLING_RANGES = OLLAMA_SAMPLING_RANGES
MAX_N_PROBS = 20


class LlamaCppRoutes:
    def __init__(self, access: Access, registry: Registry, pipeline: Pipeline, *, sse_ping_s: float):
        self.access, self.registry, self.pipeline = access, registry, pipeline
        self.sse_ping_s = sse_ping_s

    def register(self, router) -> None:
        router.add("POST", "/completion", self.completion)
        router.add("POST", "/completions", self.completion)
        router.add("POST", "/infill", self.infill)

    async def completion(self, request: Request) -> Response:
        body = request.json()
        model = self._model(request, body)
        prompt = await self._prompt(request, model, body.get("prompt"), "prompt", add_special=True)
        return await self._answer(request, body, {"model": model, "prompt": prompt})

    async def infill(self, request: Request) -> Response:
        """llama-server's /infill: the FIM prompt of the prefix (then `prompt`, the start of the
        middle) and the suffix, with the other files (`input_extra`) before it."""
        body = request.json()
        for name in ("input_prefix", "input_suffix"):
            if name not in body:
                raise BadRequest(f'"{name}" is required', param=name)
        if not isinstance(body["input_suffix"], str):
            raise BadRequest("input_suffix must be a string", param="input_suffix")
        middle = body.get("prompt", "")
        if not isinstance(middle, str):
            raise BadRequest("prompt (the text after the prefix) must be a string", param="prompt")
        model = self._model(request, body)
        prefix = await self._prefix(request, model, body["input_prefix"], middle)
        # input_extra, even empty, keeps it a fill in the middle when the suffix is empty (the
        # gap at the end of a file; llama.vim's context updates): backends.base.fills_in_middle
        completion = {"model": model, "prompt": prefix, "suffix": body["input_suffix"],
                      "input_extra": [] if body.get("input_extra") is None else body["input_extra"]}
        return await self._answer(request, body, completion)

    async def _answer(self, request: Request, body: dict, completion: dict) -> Response:
        shape = native_shape(body, completion["model"])
        if shape.n_indent and body.get("stream"):
            raise BadRequest("n_indent is not supported on a streamed answer here", param="n_indent")
        n_cmpl = _integer(body, "n_cmpl", 1)
        if n_cmpl < 1 or n_cmpl > 1 and body.get("stream"):
            raise BadRequest("n_cmpl must be at least 1, and 1 on a streamed answer here", param="n_cmpl")
        completion = validate_completion({**passed_fields(body), **sampling_fields(body), **completion},
                                         NATIVE_SAMPLING_RANGES)
        generate = self.access.generate_request(request, "completion", completion)
        generate.report_stop_word = bool(shape.stops)
        outcome = await self.pipeline.generate(generate)
        headers = list(outcome.headers.items())
        if outcome.chunks is None:
            return Response.json(native_answer(outcome.body, shape), headers=headers)
        return sse_response(native_chunks(outcome.chunks, shape), self.sse_ping_s, headers=headers, done=False)

    def _model(self, request: Request, body: dict) -> str:
        return model_or_only(self.access, self.registry, request, body)

    async def _prompt(self, request: Request, model: str, prompt, param: str, *, add_special: bool,
                      parse_special: bool = True) -> str | list[int]:
        """A prompt as our completions take it: a text, or token ids (texts and ids mixed are
        tokenized by the model's backend, as llama-server reads them)."""
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str) or is_token_ids(prompt):
            return prompt
        if not isinstance(prompt, list) or not prompt or not all(isinstance(p, str) or is_token_id(p) for p in prompt):
            raise BadRequest(f"{param} must be a string, an array of token ids, or strings and token ids mixed",
                             param=param)
        if all(isinstance(p, str) for p in prompt):
            raise BadRequest(f"one prompt a request: send several to /v1/completions (got {len(prompt)})",
                             param=param)
        return await self._token_ids(request, model, prompt, param, add_special=add_special,
                                     parse_special=parse_special)

    async def _prefix(self, request: Request, model: str, prefix, middle: str) -> str | list[int]:
        """/infill's text before the gap: the prefix, then `prompt`, each tokenized on its own as
        llama-server does (the prefix as plain text, `prompt` with its special tokens) where
        the backend serves its tokenizer; joined as text on one that does not (Ollama)."""
        prefix = await self._prompt(request, model, prefix, "input_prefix", add_special=False, parse_special=False)
        if not middle:
            return prefix
        try:
            backend, served = tokenizer_for(self.registry, model)
        except NotImplementedByBackend:
            if not isinstance(prefix, str):
                raise BadRequest(f"model {model!r} does not serve its tokenizer: input_prefix must be text "
                                 "with a prompt", param="input_prefix") from None
            return prefix + middle
        self.access.check_model(self.access.key_name_of(request), model)
        if isinstance(prefix, str):
            prefix = await backend.tokenize_text(served, prefix, add_special=False, parse_special=False)
        return prefix + await backend.tokenize_text(served, middle, add_special=False, parse_special=True)

    async def _token_ids(self, request: Request, model: str, content: list, param: str, *, add_special: bool,
                         parse_special: bool) -> list[int]:
        self.access.check_model(self.access.key_name_of(request), model)
        try:
            backend, served = tokenizer_for(self.registry, model)
        except NotImplementedByBackend:
            raise BadRequest(f"model {model!r} does not serve its tokenizer: {param} must be a text or token ids, "
                             "not both mixed", param=param) from None
        return await backend.tokenize_text(served, content, add_special=add_special, parse_special=parse_special)


def native_shape(body: dict, model: str) -> NativeShape:
    """What the answer's shape needs from the request (its fields checked: a 400 names them)."""
    if body.get("return_tokens"):
        raise BadRequest("return_tokens is not supported here: the answer's token ids are not known "
                         "on every backend (n_probs gives each token's text)", param="return_tokens")
    n_predict, n_indent = n_predict_of(body), _integer(body, "n_indent", 0)
    n_probs = _integer(body, "n_probs", 0)
    if not 0 <= n_probs <= MAX_N_PROBS:
        raise BadRequest(f"n_probs must be between 0 and {MAX_N_PROBS}, got {n_probs}", param="n_probs")
    fields = body.get("response_fields") or []
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise BadRequest("response_fields must be an array of strings", param="response_fields")
    stops = body.get("stop") or []
    stops = [stops] if isinstance(stops, str) else stops
    settings = {name: body[name] for name in SETTINGS if name in body}
    settings.update(n_predict=n_predict, n_probs=n_probs, stop=stops, stream=bool(body.get("stream")),
                    n_indent=n_indent)
    return NativeShape(model, settings, stops if isinstance(stops, list) else [], n_indent=n_indent,
                       response_fields=fields)


def sampling_fields(body: dict) -> dict:
    """The native fields that have an OpenAI name or meaning of their own."""
    out = {}
    n_predict = n_predict_of(body)
    if n_predict >= 0:
        out["max_tokens"] = max(n_predict, 1)    # 0: one token, as llama-server answers it
    if body.get("n_probs"):
        out["logprobs"] = body["n_probs"]
    if body.get("seed") is not None and body["seed"] != -1:
        out["seed"] = body["seed"]
    temperature = body.get("temperature")
    if temperature is not None:
        out["temperature"] = max(temperature, 0) if isinstance(temperature, (int, float)) \
            and not isinstance(temperature, bool) else temperature
    if body.get("logit_bias") is not None:
        out["logit_bias"] = logit_bias_object(body["logit_bias"])
    if body.get("stream"):
        out["stream_options"] = {"include_usage": True}     # the totals the last event carries
    return out


def passed_fields(body: dict) -> dict:
    """The fields passed on as /v1/completions passes unknown ones (`top_k`, `stop`, `samplers`, ...)."""
    return {k: v for k, v in body.items() if k not in NATIVE_FIELDS and k not in IGNORED_FIELDS
            and k != "max_tokens"}


def logit_bias_object(bias):
    """llama-server's [[token, bias], ...] (a token id or a text; bias a number or false) as
    OpenAI's {token: bias}; an object as it is (validation names a bad one)."""
    if not isinstance(bias, list):
        return bias
    if not all(isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], (str, int))
               and not isinstance(pair[0], bool) for pair in bias):
        raise BadRequest("logit_bias must be an object or an array of [token, bias] pairs", param="logit_bias")
    return {str(token): value for token, value in bias}


def n_predict_of(body: dict) -> int:
    """llama-server's token budget: `n_predict`, else `max_tokens`; under 0 (-1) no limit."""
    name = "n_predict" if "n_predict" in body else "max_tokens"
    return _integer(body, name, -1)


def _integer(body: dict, name: str, default: int) -> int:
    value = body.get(name, default)
    if type(value) is not int:
        raise BadRequest(f"{name} must be an integer", param=name)
    return value


def is_token_id(value) -> bool:
    return type(value) is int and value >= 0


def is_token_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(is_token_id(v) for v in value)
