"""Sampling: SamplingParams from a request, and a Sampler per sequence.

The chain follows llama.cpp's default sampler order:

    penalties -> logit bias -> top_k -> top_p -> min_p -> temperature -> draw

top_p and min_p therefore see the untempered distribution (as in llama.cpp); temperature 0
means greedy: the argmax of the penalised, biased logits, ties going to the lowest token id.

Logprobs follow OpenAI (and vLLM's default `raw_logprobs`): they are the log-softmax of the
model's raw logits, before penalties, logit bias, truncation and temperature, so they do not
change with the sampling settings and exp() of them sums to 1 over the whole vocabulary.

Penalties use llama.cpp's semantics and window: over the last `repeat_last_n` tokens of the
history the caller passes (-1: the whole history, 0: no penalties), a token seen c times has
its logit divided by repeat_penalty when positive (multiplied when not), then lowered by
c * frequency_penalty + (c > 0) * presence_penalty (OpenAI's formula).

JSON mode (`json_mode`: OpenAI's response_format json_object, Ollama's format "json"; with
`json_schema` for a json_schema response_format or an Ollama format schema, the subset of
engine/json_schema.py): the token must keep the output a JSON prefix (of the schema), and the
end tokens come only once the object is complete (engine/json_constraint.py). Candidates are checked in the order the sampler would
pick them: greedy takes the most likely allowed token (the argmax of the masked logits, ties to
the lowest id); sampling draws, and a rejected token is removed and the draw repeated, which
samples exactly the sampler's distribution restricted to the allowed tokens. After
MAX_REJECTIONS the allowed tokens are computed all at once; when none of the sampler's
candidates (top_k / top_p / min_p) is allowed, the chain runs again over the masked logits
(llama.cpp's grammar resampling).

vLLM's guided_choice (`choices`) is a constraint of the same kind (engine/choice_constraint.py):
the output is exactly one of the texts, then an end token. vLLM's `min_tokens`: the end tokens
(stop_token_ids, EOS among them) are masked out until that many tokens were sampled; the
runner's TextStream checks no stop string before then either.

Seeds: a Sampler owns a numpy Generator. With `seed` set, choice i of an `n > 1` request uses
seed + i (mod 2**64), so choice 0 reproduces the `n = 1` answer; `seed` None or -1 (llama.cpp's
and Ollama's "random") draws fresh OS entropy for every choice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Callable, Sequence

import numpy as np

from ..wire.request import logit_bias_of
from ..wire.vllm import vllm_constraint
from .choice_constraint import ChoiceConstraint
from .json_constraint import JsonConstraint, JsonVocab
from .json_schema import SchemaError, compile_schema

MAX_TOP_LOGPROBS = 20
RANDOM_SEED = -1                       # llama.cpp's and Ollama's "pick a random seed"
NUCLEUS_HEAD = 1024                    # top_p sorts this many first, the whole vocab if short
MAX_REJECTIONS = 32                    # JSON mode: candidates checked one by one before a full mask


class SamplingParamError(ValueError):
    """A bad sampling field; `param` names it as the request did (for a 400's `param`)."""

    def __init__(self, param: str, reason: str):
        super().__init__(f"invalid '{param}': {reason}")
        self.param, self.reason = param, reason


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0           # 0: greedy
    top_k: int = 0                     # 0 or -1: off
    top_p: float = 1.0                 # in [0, 1]; 1: off, 0: the most likely token only
    min_p: float = 0.0                 # in [0, 1]; 0: off
    repeat_penalty: float = 1.0        # llama.cpp; 1: off
    presence_penalty: float = 0.0      # OpenAI
    frequency_penalty: float = 0.0     # OpenAI
    repeat_last_n: int = 64            # penalty window; -1: whole history, 0: off
    seed: int | None = None            # None or -1: random
    logit_bias: dict[int, float] = field(default_factory=dict)   # token id -> added to its logit
    logprobs: bool = False
    top_logprobs: int = 0              # 0 .. 20, needs logprobs
    max_tokens: int | None = None      # None: until a stop or the context is full
    num_ctx: int | None = None         # Ollama's num_ctx: this request's context; None: the model's
    n: int = 1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()   # eos and friends: end the sequence when sampled
    json_mode: bool = False            # the output is one JSON object (response_format json_object)
    json_schema: tuple | None = None   # with json_mode: the object's schema node (engine/json_schema.py)
    think_end: str | None = None       # with json_mode: the object starts after this marker ("</think>")
    json_prefix: str = ""              # with json_mode: the object's start the answer continues (a prefill)
    choices: tuple[str, ...] = ()      # vLLM's guided_choice: the output is exactly one of these texts
    min_tokens: int = 0                # vLLM's: no stop token or stop string ends the output before this many
    include_stop_str: bool = False     # vLLM's include_stop_str_in_output: the stop string ends the text
    prompt_logprobs: int | None = None  # the prompt's own logprobs with this many alternatives (None: not asked)
    skip_special_tokens: bool = True   # vLLM's: false writes every control token's text (llama-server's --special)
    preserved_ids: frozenset[int] = frozenset()   # control tokens written as text all the same (see writes_special)

    def __post_init__(self) -> None:
        _check_params(self)

    def writes_special(self, token_id: int) -> bool:
        """Whether a sampled control token adds its text to the answer: llama-server's
        accept_special_token (its --special, or one of the chat format's preserved tokens: the
        tool-call and thinking markers its parsers read); vLLM's skip_special_tokens false."""
        return not self.skip_special_tokens or token_id in self.preserved_ids

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def has_penalties(self) -> bool:
        return self.repeat_last_n != 0 and (
            self.repeat_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0)

    @classmethod
    def from_request(cls, body: dict, *, eos_token_ids: Sequence[int] = (),
                     vocab_size: int | None = None, defaults: SamplingParams | None = None,
                     ) -> SamplingParams:
        """SamplingParams from an OpenAI chat/completions body, with Ollama `options` names.

        Top-level OpenAI names (and the llama.cpp/vLLM extras top_k, min_p, repeat_penalty,
        repetition_penalty, repeat_last_n, stop_token_ids, ignore_eos) are read first; Ollama's
        `options` object, when present, wins, as Ollama options given explicitly do elsewhere.
        `eos_token_ids` become stop_token_ids unless `ignore_eos` is true. Fields absent from the
        request keep `defaults` (neutral OpenAI defaults when None). Raises SamplingParamError
        naming the field as the request spelled it.
        """
        values, names = _read_request(body)
        _read_logprobs(body, values, names)
        ignore_eos = _read_value(body, "ignore_eos", "ignore_eos", bool)
        values["json_mode"], values["json_schema"] = _json_mode_of(body)
        names["json_mode"] = "response_format"
        _read_vllm_extras(body, values, names)
        if not ignore_eos:
            values["stop_token_ids"] = tuple(dict.fromkeys(
                [*eos_token_ids, *values.get("stop_token_ids", ())]))
        defaults = defaults or cls()
        base = {f.name: getattr(defaults, f.name) for f in fields(cls)}
        try:
            params = cls(**{**base, **values})
        except SamplingParamError as error:
            raise SamplingParamError(names.get(error.param, error.param), error.reason) from None
        if vocab_size is not None:
            _check_token_ids(params, vocab_size, names)
        return params


def _check_params(p: SamplingParams) -> None:
    _require(p, "temperature", math.isfinite(p.temperature) and p.temperature >= 0, "must be >= 0")
    _require(p, "top_k", p.top_k >= -1, "must be >= 0, or -1 for off")
    _require(p, "top_p", 0 <= p.top_p <= 1, "must be in [0, 1]")
    _require(p, "min_p", 0 <= p.min_p <= 1, "must be in [0, 1]")
    _require(p, "repeat_penalty", math.isfinite(p.repeat_penalty) and p.repeat_penalty > 0, "must be > 0")
    _require(p, "presence_penalty", math.isfinite(p.presence_penalty), "must be a finite number")
    _require(p, "frequency_penalty", math.isfinite(p.frequency_penalty), "must be a finite number")
    _require(p, "repeat_last_n", p.repeat_last_n >= -1, "must be >= 0, or -1 for the whole history")
    _require(p, "top_logprobs", 0 <= p.top_logprobs <= MAX_TOP_LOGPROBS,
             f"must be between 0 and {MAX_TOP_LOGPROBS}")
    _require(p, "top_logprobs", p.logprobs or p.top_logprobs == 0, "needs 'logprobs' to be true")
    _require(p, "prompt_logprobs", p.prompt_logprobs is None or 0 <= p.prompt_logprobs <= MAX_TOP_LOGPROBS,
             f"must be between 0 and {MAX_TOP_LOGPROBS}")
    _require(p, "max_tokens", p.max_tokens is None or p.max_tokens >= 1, "must be >= 1")
    _require(p, "num_ctx", p.num_ctx is None or p.num_ctx >= 1, "must be >= 1")
    _require(p, "n", p.n >= 1, "must be >= 1")
    _require(p, "json_mode", not p.json_mode or bool(p.stop_token_ids),
             "JSON mode ends at an end-of-sequence token: it needs one, and ignore_eos off")
    _require(p, "choices", not p.choices or bool(p.stop_token_ids),
             "a choice ends at an end-of-sequence token: it needs one, and ignore_eos off")
    _require(p, "choices", all(isinstance(c, str) and c for c in p.choices), "must be non-empty strings")
    _require(p, "min_tokens", p.min_tokens >= 0, "must be >= 0")
    _require(p, "stop", all(isinstance(s, str) and s for s in p.stop), "must be non-empty strings")
    for token_id, bias in p.logit_bias.items():
        if not (isinstance(token_id, int) and token_id >= 0):
            raise SamplingParamError("logit_bias", f"token id {token_id!r} is not a non-negative integer")
        if math.isnan(bias) or bias == math.inf:
            raise SamplingParamError("logit_bias", f"bias {bias!r} for token {token_id} is not below +inf")


def _require(p: SamplingParams, name: str, ok: bool, reason: str) -> None:
    if not ok:
        raise SamplingParamError(name, f"{reason}, got {getattr(p, name)!r}")


def _check_token_ids(p: SamplingParams, vocab_size: int, names: dict[str, str]) -> None:
    for name, ids in (("logit_bias", p.logit_bias), ("stop_token_ids", p.stop_token_ids)):
        bad = [t for t in ids if t >= vocab_size]
        if bad:
            raise SamplingParamError(names.get(name, name),
                                     f"token id {bad[0]} is outside the vocabulary (size {vocab_size})")


# ---- reading a request ------------------------------------------------------------------------

_NUMBER, _INT = "a number", "an integer"
_OPENAI_NAMES = {              # request name -> (field, kind); a later name wins over an earlier one
    "temperature": ("temperature", _NUMBER), "top_p": ("top_p", _NUMBER),
    "top_k": ("top_k", _INT), "min_p": ("min_p", _NUMBER),
    "repetition_penalty": ("repeat_penalty", _NUMBER), "repeat_penalty": ("repeat_penalty", _NUMBER),
    "presence_penalty": ("presence_penalty", _NUMBER),
    "frequency_penalty": ("frequency_penalty", _NUMBER),
    "repeat_last_n": ("repeat_last_n", _INT), "seed": ("seed", _INT), "n": ("n", _INT),
    "max_tokens": ("max_tokens", _INT), "max_completion_tokens": ("max_tokens", _INT),
    "num_ctx": ("num_ctx", _INT),
}
_OLLAMA_OPTIONS = {            # Ollama option -> (field, kind)
    "num_predict": ("max_tokens", _INT), "temperature": ("temperature", _NUMBER),
    "top_k": ("top_k", _INT), "top_p": ("top_p", _NUMBER), "min_p": ("min_p", _NUMBER),
    "repeat_penalty": ("repeat_penalty", _NUMBER), "repeat_last_n": ("repeat_last_n", _INT),
    "presence_penalty": ("presence_penalty", _NUMBER),
    "frequency_penalty": ("frequency_penalty", _NUMBER), "seed": ("seed", _INT),
    "num_ctx": ("num_ctx", _INT),
}


def _read_request(body: dict) -> tuple[dict, dict[str, str]]:
    """(field values, field -> the request's name for it) from the top level, then `options`."""
    values: dict = {}
    names: dict[str, str] = {}
    _read_fields(body, "", _OPENAI_NAMES, values, names)
    _read_stops(body, "stop", values, names)
    _read_logit_bias(body.get("logit_bias"), "logit_bias", values, names)
    ids = body.get("stop_token_ids")
    if ids is not None:
        if not isinstance(ids, list) or not all(_is_int(t) and t >= 0 for t in ids):
            raise SamplingParamError("stop_token_ids", "expected an array of token ids")
        values["stop_token_ids"], names["stop_token_ids"] = tuple(ids), "stop_token_ids"
    options = body.get("options")
    if options is not None:
        if not isinstance(options, dict):
            raise SamplingParamError("options", "expected an object")
        _read_fields(options, "options.", _OLLAMA_OPTIONS, values, names)
        _read_stops(options, "options.stop", values, names)
    if values.get("seed") == RANDOM_SEED:
        values["seed"] = None
    return values, names


def _read_fields(source: dict, prefix: str, table: dict, values: dict, names: dict) -> None:
    for name, (field_name, kind) in table.items():
        value = _read_value(source, name, prefix + name, kind)
        if value is None:
            continue
        if name == "num_predict" and value < 0 or name == "num_ctx" and value < 1:
            value = None           # Ollama: -1 infinite, -2 until the context is full; num_ctx 0: the default
        values[field_name], names[field_name] = value, prefix + name


def _read_value(source: dict, name: str, param: str, kind):
    """source[name] checked against kind (_NUMBER, _INT or bool); None when absent or null."""
    value = source.get(name)
    if value is None:
        return None
    if kind is bool:
        if not isinstance(value, bool):
            raise SamplingParamError(param, f"expected a boolean, got {type(value).__name__}")
        return value
    if kind == _INT and isinstance(value, float) and value.is_integer():
        value = int(value)         # 40.0 from a client that only has floats
    ok = _is_int(value) if kind == _INT else _is_number(value)
    if not ok:
        raise SamplingParamError(param, f"expected {kind}, got {type(value).__name__}")
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_stops(source: dict, param: str, values: dict, names: dict) -> None:
    stop = source.get("stop")
    if stop is None:
        return
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise SamplingParamError(param, "expected a string or an array of strings")
    values["stop"] = tuple(dict.fromkeys(s for s in stop if s))   # "" would stop at once: dropped
    names["stop"] = param


def _read_logit_bias(bias, param: str, values: dict, names: dict) -> None:
    """OpenAI's {"token id": bias} or llama.cpp's [[id, bias], ...] (wire.request.logit_bias_of)."""
    if bias is None:
        return
    try:
        values["logit_bias"] = logit_bias_of(bias)
    except ValueError as exc:
        raise SamplingParamError(param, str(exc)) from None
    names["logit_bias"] = param


def _json_mode_of(body: dict) -> tuple[bool, tuple | None]:
    """(JSON mode, the schema's node) from response_format json_object or json_schema."""
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind != "json_schema":
        return kind == "json_object", None
    json_schema = response_format.get("json_schema")
    schema = json_schema.get("schema", {}) if isinstance(json_schema, dict) else None
    try:
        return True, compile_schema({"type": "object"} if schema == {} else schema)
    except SchemaError as exc:
        raise SamplingParamError("response_format", str(exc)) from None


def _read_vllm_extras(body: dict, values: dict, names: dict) -> None:
    """vLLM's guided_choice (or structured_outputs.choice), min_tokens, include_stop_str_in_output,
    skip_special_tokens (wire/vllm.py); the other constraint kinds are refused before (backends/engine.py)."""
    constraint = vllm_constraint(body)
    if constraint is not None and constraint[0] == "choice":
        values["choices"], names["choices"] = tuple(dict.fromkeys(constraint[2])), constraint[1]
    min_tokens = _read_value(body, "min_tokens", "min_tokens", _INT)
    if min_tokens is not None:
        values["min_tokens"], names["min_tokens"] = min_tokens, "min_tokens"
    if _read_value(body, "include_stop_str_in_output", "include_stop_str_in_output", bool):
        values["include_stop_str"], names["include_stop_str"] = True, "include_stop_str_in_output"
    if _read_value(body, "skip_special_tokens", "skip_special_tokens", bool) is False:
        values["skip_special_tokens"], names["skip_special_tokens"] = False, "skip_special_tokens"


def _read_logprobs(body: dict, values: dict, names: dict) -> None:
    """Chat: logprobs bool + top_logprobs; completions: logprobs is the top count (an int)."""
    logprobs = body.get("logprobs")
    top = _read_value(body, "top_logprobs", "top_logprobs", _INT)
    if logprobs is not None and not isinstance(logprobs, bool):
        if not _is_int(logprobs):
            raise SamplingParamError("logprobs", f"expected a boolean or an integer, got {logprobs!r}")
        top = logprobs if top is None else top
        names["top_logprobs"] = "logprobs" if body.get("top_logprobs") is None else "top_logprobs"
        logprobs = True
    if logprobs is not None:
        values["logprobs"], names["logprobs"] = logprobs, "logprobs"
    if top is not None:
        values["top_logprobs"] = top
        names.setdefault("top_logprobs", "top_logprobs")


# ---- the sampler chain ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SampleResult:
    token_id: int
    logprob: float | None                     # of token_id under the raw logits; None unless asked
    top_logprobs: list[tuple[int, float]]     # (token id, logprob), most likely first
    rank: int | None = None                   # a prompt token's: 1 + how many tokens are likelier


def apply_penalties(logits: np.ndarray, history: Sequence[int], params: SamplingParams) -> np.ndarray:
    """llama.cpp's penalties over the last repeat_last_n tokens of history (a new array)."""
    # logits: (vocab,)
    if not params.has_penalties or len(history) == 0:
        return logits
    window = history if params.repeat_last_n < 0 else history[-params.repeat_last_n:]
    ids, counts = np.unique(np.asarray(window, dtype=np.int64), return_counts=True)   # (m,), (m,)
    keep = (ids >= 0) & (ids < logits.shape[0])
    ids, counts = ids[keep], counts[keep]
    seen = logits[ids]                                                                  # (m,)
    if params.repeat_penalty != 1:
        seen = np.where(seen <= 0, seen * params.repeat_penalty, seen / params.repeat_penalty)
    seen = seen - (counts * params.frequency_penalty + params.presence_penalty)
    out = logits.copy()
    out[ids] = seen
    return out


def top_k_ids(logits: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest logits, largest first, ties to the lowest id (all ids when k <= 0)."""
    # logits: (vocab,) -> (k,)
    size = logits.shape[0]
    if k <= 0 or k >= size:
        return np.argsort(-logits, kind="stable")
    kth = np.partition(logits, size - k)[size - k]          # the k-th largest value
    above = np.flatnonzero(logits > kth)
    ties = np.flatnonzero(logits == kth)[: k - above.size]
    ids = np.concatenate([above, ties])
    return ids[np.argsort(-logits[ids], kind="stable")]


def top_p_ids(logits: np.ndarray, ids: np.ndarray, top_p: float, total: float | None = None,
              ) -> np.ndarray:
    """The shortest prefix of ids (sorted by logit, largest first) whose probability mass
    reaches top_p (llama.cpp: the token that crosses is kept). The mass is renormalised over
    ids, or over `total`: the sum of exp(logit - max logit) over a set that ids heads."""
    # logits: (vocab,), ids: (m,) -> (m',)
    if top_p >= 1:
        return ids
    weights = np.exp(logits[ids].astype(np.float64) - logits[ids[0]])     # (m,)
    cdf = np.cumsum(weights) / (weights.sum() if total is None else total)  # (m,)
    cut = int(np.searchsorted(cdf, top_p, side="left")) + 1
    return ids[:min(cut, ids.size)]


def _top_p_of_vocab(logits: np.ndarray, top_p: float) -> np.ndarray:
    """top_p over the whole vocabulary, sorting only the NUCLEUS_HEAD most likely tokens when
    they hold the mass (a full sort of 150k logits costs ~20 ms); the same ids either way."""
    # logits: (vocab,) -> (m,)
    head = top_k_ids(logits, NUCLEUS_HEAD)                    # (h,) most likely first
    total = float(np.exp(logits.astype(np.float64) - logits[head[0]]).sum())
    kept = top_p_ids(logits, head, top_p, total)
    if kept.size < head.size or head.size == logits.shape[0]:
        return kept
    return top_p_ids(logits, top_k_ids(logits, 0), top_p, total)


def min_p_ids(logits: np.ndarray, ids: np.ndarray, min_p: float) -> np.ndarray:
    """The ids whose probability is at least min_p times the most likely one's."""
    # logits: (vocab,), ids: (m,) -> (m',)
    if min_p <= 0:
        return ids
    candidates = logits[ids]                                  # (m,)
    return ids[candidates - candidates.max() >= math.log(min_p)]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-probabilities of a (vocab,) or (rows, vocab) array over its last axis."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


PROMPT_ROWS_AT_ONCE = 64     # prompt rows through the LM head and into logprobs together (n_vocab floats each)


def prompt_logprobs_of(hidden: np.ndarray, next_ids: Sequence[int], num_top: int,
                       head: Callable[[np.ndarray], np.ndarray]) -> list[SampleResult]:
    """Each row reduced to what the prompt's next token gets there: its logprob, its rank
    (vLLM's: the tokens at least as likely, itself among them) and the `num_top` most likely.
    The rows are final hidden states that `head` (the model's LM head) turns into logits
    PROMPT_ROWS_AT_ONCE at a time, so that no more than that many n_vocab rows exist at once
    however long the chunk, and none outlives the step that computed it."""
    # hidden: (rows, n_embd), row i giving the distribution next_ids[i] was drawn from
    results = []
    for first in range(0, len(next_ids), PROMPT_ROWS_AT_ONCE):
        logits = head(hidden[first:first + PROMPT_ROWS_AT_ONCE])              # (<= 64, n_vocab) float32
        logprobs = log_softmax(logits)                                        # (<= 64, n_vocab) float64
        for row, token_id in zip(logprobs, next_ids[first:first + PROMPT_ROWS_AT_ONCE]):
            chosen = row[token_id]
            top = top_k_ids(row, num_top)[:num_top] if num_top else ()
            results.append(SampleResult(int(token_id), float(chosen), [(int(t), float(row[t])) for t in top],
                                        rank=int(np.count_nonzero(row >= chosen))))
    return results


class Sampler:
    """The sampler chain of one sequence (one choice of a request), with its own random stream."""

    def __init__(self, params: SamplingParams, vocab_size: int, choice_index: int = 0,
                 json_vocab: JsonVocab | None = None):
        self.params, self.vocab_size = params, vocab_size
        self.constraint: JsonConstraint | ChoiceConstraint | None = None
        self.num_sampled = 0               # tokens this sequence has sampled (min_tokens counts them)
        if params.choices:
            if json_vocab is None:
                raise ValueError("sampler: a choice needs the model's JsonVocab")
            self.constraint = ChoiceConstraint(json_vocab, params.stop_token_ids, params.choices)
        elif params.json_mode:
            if json_vocab is None:
                raise ValueError("sampler: JSON mode needs the model's JsonVocab")
            self.constraint = JsonConstraint(json_vocab, params.stop_token_ids, params.json_schema,
                                             after=params.think_end.encode() if params.think_end else None,
                                             prefix=params.json_prefix.encode())
        self._seed = None if params.seed is None else (params.seed + choice_index) % 2**64
        self._rng: np.random.Generator | None = None
        bad = [t for t in params.logit_bias if t >= vocab_size]
        if bad:
            raise SamplingParamError("logit_bias", f"token id {bad[0]} is outside the vocabulary "
                                                   f"(size {vocab_size})")
        self._bias_ids = np.fromiter(params.logit_bias.keys(), np.int64, len(params.logit_bias))  # (b,)
        self._bias = np.fromiter(params.logit_bias.values(), np.float32, len(params.logit_bias))  # (b,)

    @property
    def rng(self) -> np.random.Generator:
        """Made at the first draw: an unseeded generator reads the OS's entropy (tens of us on
        the event loop, where sequences are submitted), which greedy sequences never need."""
        if self._rng is None:
            self._rng = np.random.default_rng(self._seed)
        return self._rng

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing to apply first: the token is the argmax of the raw logits."""
        return (self.params.greedy and not self.params.has_penalties and not self.params.logit_bias
                and self.constraint is None and self.num_sampled >= self.params.min_tokens)

    def process(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        """Penalties then logit bias: the logits every later stage sees."""
        # logits: (vocab,) -> (vocab,)
        out = apply_penalties(logits, history, self.params)
        if self._bias_ids.size:
            out = out.copy() if out is logits else out
            out[self._bias_ids] += self._bias
        if self.num_sampled < self.params.min_tokens and self.params.stop_token_ids:
            out = out.copy() if out is logits else out
            out[list(self.params.stop_token_ids)] = -np.inf   # vLLM's min_tokens: no end token yet
        return out

    def candidates(self, logits: np.ndarray) -> np.ndarray:
        """top_k -> top_p -> min_p over processed logits: the ids left to draw from, ascending."""
        # logits: (vocab,) -> (m,)
        p = self.params
        if p.top_k > 0:
            ids = top_p_ids(logits, top_k_ids(logits, p.top_k), p.top_p)
        elif p.top_p < 1:
            ids = _top_p_of_vocab(logits, p.top_p)
        else:
            ids = np.arange(logits.shape[0])                  # no sort needed for min_p alone
        return np.sort(min_p_ids(logits, ids, p.min_p))

    def sample(self, logits: np.ndarray, history: Sequence[int]) -> SampleResult:
        """The next token for this sequence from its (vocab,) float32 logits.

        history: the token ids the penalties look at (a list or an array; the caller picks
        prompt + generated, as llama.cpp does, or generated only). Draws one rng.random() per
        call unless greedy, so the same seed and logits give the same tokens.
        """
        logits = np.asarray(logits, dtype=np.float32)         # (vocab,)
        if logits.shape != (self.vocab_size,):
            raise ValueError(f"sampler: logits of shape {logits.shape}, expected ({self.vocab_size},)")
        processed = self.process(logits, history)
        if self.constraint is not None:
            token_id = self._constrained(processed)
            self.constraint.advance(token_id)
        elif self.params.greedy or not np.isfinite(processed.max()):
            token_id = int(np.argmax(processed))              # ties: np.argmax takes the first
        else:
            token_id = self._draw(processed)
        return self.result(logits, token_id)

    def _draw(self, logits: np.ndarray) -> int:
        ids, probs = self._weighted_candidates(logits)
        return int(ids[self._pick(probs)])

    def _weighted_candidates(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The candidates' ids and unnormalised tempered probabilities, none of them 0."""
        ids = self.candidates(logits)                         # (m,) ascending
        candidates = logits[ids].astype(np.float64)           # (m,)
        probs = np.exp((candidates - candidates.max()) / self.params.temperature)   # (m,) unnormalised
        return ids[probs > 0], probs[probs > 0]               # a -inf bias is never drawn

    def _pick(self, probs: np.ndarray) -> int:
        """An index drawn from unnormalised probabilities (one rng.random())."""
        cdf = np.cumsum(probs)                                # (m,)
        index = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
        return min(index, probs.size - 1)

    # ---- JSON mode ----

    def _constrained(self, logits: np.ndarray) -> int:
        if self.params.greedy or not np.isfinite(logits.max()):
            return self._greedy_allowed(logits)
        ids, probs = self._weighted_candidates(logits)
        for _ in range(min(MAX_REJECTIONS, ids.size)):
            index = self._pick(probs)
            if self.constraint.allows(int(ids[index])):
                return int(ids[index])
            ids, probs = np.delete(ids, index), np.delete(probs, index)   # draw again without it
        allowed = self.constraint.mask()                      # (vocab,)
        keep = allowed[ids]
        if keep.any():
            return int(ids[keep][self._pick(probs[keep])])
        return self._draw_masked(logits, allowed)

    def _draw_masked(self, logits: np.ndarray, allowed: np.ndarray) -> int:
        """None of the candidates is allowed: the chain again over the allowed tokens only."""
        masked = np.where(allowed, logits, -np.inf)           # (vocab,)
        if not np.isfinite(masked.max()):
            return self._greedy_allowed(logits, allowed)
        return self._draw(masked)

    def _greedy_allowed(self, logits: np.ndarray, allowed: np.ndarray | None = None) -> int:
        """The argmax of the logits over the allowed tokens (ties to the lowest id), checking
        the most likely tokens one by one before computing the mask."""
        if allowed is None:
            best = int(np.argmax(logits))
            if self.constraint.allows(best):
                return best
            for token_id in top_k_ids(logits, MAX_REJECTIONS).tolist():
                if self.constraint.allows(token_id):
                    return token_id
            allowed = self.constraint.mask()                  # (vocab,)
        ids = np.flatnonzero(allowed)                         # (m,)
        if not ids.size:              # a vocabulary that cannot spell the rest: end the sequence
            return min(self.constraint.end_ids)
        return int(ids[np.argmax(logits[ids])])

    def result(self, raw_logits: np.ndarray, token_id: int) -> SampleResult:
        """token_id with its logprobs (of the raw logits) when the request asked for them."""
        self.num_sampled += 1
        if not self.params.logprobs:
            return SampleResult(token_id, None, [])
        logprobs = log_softmax(raw_logits)                    # (vocab,) float64
        top = top_k_ids(logprobs, self.params.top_logprobs)[: self.params.top_logprobs]
        return SampleResult(token_id, float(logprobs[token_id]),
                            [(int(t), float(logprobs[t])) for t in top])


def make_samplers(params: SamplingParams, vocab_size: int, json_vocab: JsonVocab | None = None,
                  ) -> list[Sampler]:
    """One Sampler per choice of an `n` request; choice i is seeded with seed + i."""
    return [Sampler(params, vocab_size, choice_index=i, json_vocab=json_vocab) for i in range(params.n)]


def sample_batch(samplers: Sequence[Sampler], logits: np.ndarray,
                 histories: Sequence[Sequence[int]]) -> list[SampleResult]:
    """Sample every row of a (B, vocab) batch; the plain-greedy rows share one argmax.

    Returns exactly what samplers[i].sample(logits[i], histories[i]) would, row by row.
    """
    # logits: (B, vocab)
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2 or logits.shape[0] != len(samplers) or len(histories) != len(samplers):
        raise ValueError(f"sample_batch: logits {logits.shape} for {len(samplers)} samplers "
                         f"and {len(histories)} histories")
    results: list[SampleResult | None] = [None] * len(samplers)
    greedy_rows = [i for i, s in enumerate(samplers) if s.plain_greedy]
    if greedy_rows:
        greedy = logits if len(greedy_rows) == len(samplers) else logits[greedy_rows]   # (g, vocab)
        tokens = np.argmax(greedy, axis=1)                    # (g,): no copy when all rows are greedy
        for row, token_id in zip(greedy_rows, tokens.tolist()):
            results[row] = samplers[row].result(logits[row], token_id)
    for row, sampler in enumerate(samplers):
        if results[row] is None:
            results[row] = sampler.sample(logits[row], histories[row])
    return results
