"""llama.cpp's llama-server: its OpenAI endpoints plus /props (slots, context) and /tokenize."""
from __future__ import annotations

import json
import os
from typing import AsyncIterator, Callable

from ..engine.pretokenize import BYTE_TO_UNICODE
from ..engine.tokenizer import SPACE_MARK
from ..errors import BackendError, BadRequest, VeloError
from ..wire.chunks import to_completion_logprobs
from ..wire.request import GenerateRequest, reasoning_effort_of, wants_json, wants_logprobs
from ..wire.streams import closing
from ..wire.vllm import GBNF, GUIDED_FIELDS, choice_grammar, vllm_constraint
from .base import ModelInfo, fills_in_middle, refuse_insert, server_count, server_width
from .prompts import all_of, merged_answers, several_prompts, summed_usage, with_prompt
from .llamacpp_infill import INFILL_PATH, completion_chunks, infill_body, insert_refused, to_completion
from .openai import OpenAIBackend
from .props import passed_through_props
from .tokenizer_info import GENERIC_CLASS, tokenizer_info

VOCAB_TYPE_BPE = 2             # llama.cpp's LLAMA_VOCAB_TYPE_BPE (1: SentencePiece), its /v1/models meta.vocab_type


class LlamaCppBackend(OpenAIBackend):
    kind = "llamacpp"
    server = "llama.cpp"
    supports_n = False
    can_tokenize = True
    serves_tokenizer = True
    serves_tokenizer_info = True
    serves_props = True
    forwards_tokenize = False       # its /tokenize is llama-server's dialect: tokenize_text and the others
    pins_slots = True
    defaults = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05}
    # choice as a GBNF `grammar`; its own ignore_eos, continue_final_message and add_generation_prompt
    # (not false after an assistant message: llama-server continues that message all the same)
    vllm_fields = frozenset({"choice", "grammar", GBNF, "ignore_eos", "continue_final_message", "add_generation_prompt"})

    def __init__(self, config):
        super().__init__(config)
        self.props: dict = {}

    async def list_models(self) -> list[ModelInfo]:
        models = await super().list_models()
        path = self.props.get("model_path", "")
        for model in models:
            model.identity = f"llamacpp:{path or model.id}"
        return models

    async def _read_props(self) -> None:
        """/props as the server answers it; any JSON but an object reads as one that says nothing."""
        props = await self.get_json("/props")
        self.props = props if isinstance(props, dict) else {}

    def forget_server(self) -> None:
        """/props is read again at every health check."""

    async def discover(self) -> None:
        """Slots and the model file from /props (config `slots` wins when set)."""
        try:
            await self._read_props()
        except VeloError:
            return
        total_slots = server_width(self.props.get("total_slots"))
        if not self.config.slots and total_slots:
            self.num_slots, self.slots_source = total_slots, "/props"
        path = self.props.get("model_path", "")
        for model in self.models:
            model.identity = f"llamacpp:{path or model.id}"
            if path and os.path.exists(path):
                model.size = os.path.getsize(path)

    def context_size(self, model: str | None = None, num_ctx: int | None = None) -> int:
        """Per-slot context from /props (`n_ctx`), else the configured one."""
        settings = self.props.get("default_generation_settings")
        n_ctx = server_count(settings.get("n_ctx")) if isinstance(settings, dict) else None
        return n_ctx or super().context_size()

    def sees_images(self) -> bool | None:
        """/props `modalities.vision` (a server started with a projector, --mmproj)."""
        return self._modality("vision")

    def hears_audio(self) -> bool | None:
        """/props `modalities.audio` (a projector for audio, --mmproj)."""
        return self._modality("audio")

    def _modality(self, name: str) -> bool | None:
        modalities = self.props.get("modalities")
        return bool(modalities.get(name)) if isinstance(modalities, dict) else None

    def upstream_body(self, request: GenerateRequest) -> dict:
        """`verbose` when the caller needs the stop string that ended the answer: llama.cpp
        names it (`__verbose.stopping_word`) only there; OpenAI's answer shape has no field."""
        body = super().upstream_body(request)
        _refuse_endless_grammar(body)
        if request.endpoint == "chat":
            refuse_insert(body)               # a chat has no middle to fill (a completion's suffix goes to /infill)
        if request.endpoint == "chat" and body.get("logprobs") is not True:
            body.pop("top_logprobs", None)      # 0 (OpenAI's "none"): llama-server refuses it without logprobs
        elif request.endpoint == "chat" and _no_alternatives(request.body):
            body["top_logprobs"] = 1            # without it 20 alternatives, with 0 no logprobs at all
        if request.report_stop_word and body.get("stop"):
            body["verbose"] = True
        if request.endpoint == "chat":
            body["messages"] = _parsable_history(body.get("messages"))
            _reasoning_switch(body)
            body.pop("continue_final_message", None)   # its prefill: the same prompt, echoed in streams too
        else:
            _completion_schema(body)
        _grammar_of_vllm_fields(body)
        return body

    def num_parallel(self, request: GenerateRequest) -> int:
        """A completion's prompts run one a slot: sent one a request (`completion`), or split
        by llama-server itself (a stream)."""
        prompts = several_prompts(request.body) if request.endpoint != "chat" else None
        return len(prompts) if prompts is not None else 1

    async def completion(self, request: GenerateRequest) -> dict:
        """llama.cpp answers a completion's logprobs in the chat shape: given in OpenAI's. Several
        prompts go one a request, their answers merged: llama-server answers them in one with
        the usage of the first prompt alone."""
        prompts = several_prompts(request.body)
        if prompts is not None:
            return merged_answers(await all_of(self.completion(with_prompt(request, p)) for p in prompts))
        if fills_in_middle(request.body):
            return await self._infill(request)
        body = await super().completion(request)
        _completion_id(body)
        if wants_logprobs(request.body):
            to_completion_logprobs(body.get("choices") or [], {})
        return body

    async def chat(self, request: GenerateRequest) -> dict:
        """llama-server answers a prefilled assistant turn with the prefill again in front:
        the answer is the continuation only, as vLLM, the engine and Anthropic give it. (It
        continues a final assistant message without being asked: vLLM's continue_final_message
        is not sent, as with it the stream leaves the echo out and the non-stream answer keeps it.) Token
        logprobs without top_logprobs have no alternatives, as OpenAI gives them."""
        body = await super().chat(request)
        prefill = _prefill(request.body)
        for choice in body.get("choices") or [] if prefill else ():
            message = choice.get("message") or {}
            if isinstance(message.get("content"), str):
                message["content"] = _without_echo(prefill, message["content"])[0]
        if _no_alternatives(request.body):
            _drop_alternatives(body)
        return body

    def answer_events(self, request: GenerateRequest) -> AsyncIterator[list[bytes] | list[dict]]:
        if request.endpoint == "completion" and fills_in_middle(request.body):
            return self._infill_chunks(request)
        events = super().answer_events(request)
        if request.endpoint == "completion" and wants_logprobs(request.body):
            return self._completion_logprob_chunks(events, several_prompts(request.body))
        if request.endpoint != "chat":
            prompts = several_prompts(request.body)
            if prompts is not None:
                return self._rewritten_chunks(events, _completion_id, _usage_summer(len(prompts)))
            return _completion_id_events(events)
        rewrites = [_drop_alternatives] if _no_alternatives(request.body) else []
        prefill = _prefill(request.body)
        if prefill:
            rewrites.append(_prefill_remover(prefill))
        if not rewrites:
            return events
        return self._rewritten_chunks(events, *rewrites)

    async def _infill(self, request: GenerateRequest) -> dict:
        """A completion with a suffix, filled in by /infill (see llamacpp_infill)."""
        with insert_refused(request.body):
            answer = await self.post_json(INFILL_PATH, infill_body(self.upstream_body(request)))
        return to_completion(answer, request.body.get("model", ""))

    async def _infill_chunks(self, request: GenerateRequest) -> AsyncIterator[list[dict]]:
        """A completion stream with a suffix, from /infill's stream, in completion chunks."""
        if several_prompts(request.body) is not None:
            raise BadRequest("a suffix takes one prompt per streamed request on llama.cpp", param="prompt")
        events = self.stream_events(INFILL_PATH, infill_body(self.upstream_body(request)), sse=True)
        with insert_refused(request.body):
            async with closing(completion_chunks(events, self.decode_event, request.body.get("model", ""))) as chunks:
                async for batch in chunks:
                    yield batch

    def _completion_logprob_chunks(self, events: AsyncIterator[list[bytes]],
                                   prompts: list | None) -> AsyncIterator[list[dict]]:
        """A completion stream's chunks with their logprobs in the completions shape (and with
        several `prompts`, one usage for all of them)."""
        offsets: dict[int, int] = {}
        rewrites = [_completion_id, lambda chunk: to_completion_logprobs(chunk.get("choices") or [], offsets)]
        if prompts is not None:
            rewrites.append(_usage_summer(len(prompts)))
        return self._rewritten_chunks(events, *rewrites)

    async def _rewritten_chunks(self, events: AsyncIterator[list[bytes]],
                                *rewrites: Callable[[dict], None]) -> AsyncIterator[list[dict]]:
        """A stream's events decoded, each chunk changed in place by `rewrites`, one batch a read."""
        async with closing(events) as batches:
            async for batch in batches:
                chunks = [self.decode_event(event) for event in batch]
                for chunk in chunks:
                    for rewrite in rewrites:
                        rewrite(chunk)
                yield chunks

    async def tokenize(self, content: str) -> list[int]:
        return await self.tokenize_text("", content, add_special=False, parse_special=True)

    async def tokenize_text(self, model: str, content: str | list, *, add_special: bool, parse_special: bool,
                            with_pieces: bool = False) -> list:
        body = await self.post_json("/tokenize", {"content": content, "add_special": add_special,
                                                  "parse_special": parse_special, "with_pieces": with_pieces})
        tokens = body.get("tokens")
        if not isinstance(tokens, list):
            raise _Malformed(f"backend {self.name} answered /tokenize without a tokens list")
        return tokens

    async def detokenize(self, model: str, tokens: list[int]) -> str:
        content = (await self.post_json("/detokenize", {"tokens": tokens})).get("content")
        if not isinstance(content, str):
            raise _Malformed(f"backend {self.name} answered /detokenize without a content text")
        return content

    async def apply_template(self, body: dict) -> str:
        """The server's own chat template, with the thinking switch and the history as
        generating sends them."""
        template = {k: body[k] for k in ("tools", "tool_choice", "chat_template_kwargs", "reasoning_effort",
                                         "add_generation_prompt") if body.get(k) is not None}
        _reasoning_switch(template)
        template["messages"] = _parsable_history(body.get("messages"))
        prompt = (await self.post_json("/apply-template", template)).get("prompt")
        if not isinstance(prompt, str):
            raise _Malformed(f"backend {self.name} answered /apply-template without a prompt text")
        return prompt

    async def vocab_size(self, model: str) -> int | None:
        """`meta.n_vocab` of the server's /v1/models entry."""
        return self._meta_number("n_vocab")

    async def token_strs(self, model: str, tokens: list[dict]) -> list[str]:
        """Spelled from /tokenize's pieces by the vocabulary's kind (`meta.vocab_type`: 2 is
        byte-level BPE, whose tokens are their bytes in GPT-2's byte characters; SentencePiece
        and others: see _sentencepiece_spelling)."""
        spell = _bpe_spelling if self._meta_number("vocab_type") == VOCAB_TYPE_BPE else _sentencepiece_spelling
        return [spell(token["piece"]) for token in tokens]

    def _meta_number(self, name: str) -> int | None:
        """A positive integer of the server's /v1/models entry's `meta`, or None."""
        for info in self.models:
            value = server_count((info.raw.get("meta") or {}).get(name))
            if value is not None:
                return value
        return None

    async def server_props(self, model: str) -> dict:
        """The server's own /props, read now (its model, template and slots may have changed),
        with `model` as its alias (see backends/props.py)."""
        props = await self.get_json("/props")
        if not isinstance(props, dict):
            raise _Malformed(f"backend {self.name} answered /props with no JSON object")
        self.props = props
        return passed_through_props(props, model)

    async def tokenizer_info(self, model: str) -> dict:
        """Built from /props (read now: the server's model and template may have changed):
        its bos_token, eos_token, chat_template and per-slot n_ctx. /props names no pad token,
        no add_bos and no architecture: null, left out, and the generic class."""
        await self._read_props()
        tokens = {name: self.props.get(name) for name in ("bos_token", "eos_token", "chat_template")}
        if not all(value is None or isinstance(value, str) for value in tokens.values()):
            raise _Malformed(f"backend {self.name} answered /props with a token or template that is no text")
        return tokenizer_info(tokenizer_class=GENERIC_CLASS, model_max_length=self.context_size(model), **tokens)

    async def count_prompt_tokens(self, body: dict) -> int | None:
        tokens = await self.prompt_token_ids(body)
        return len(tokens) if tokens is not None else None

    async def prompt_token_ids(self, body: dict) -> list[int] | None:
        """A chat body's prompt through the server's own chat template (apply_template), or a
        completion body's text prompt, then /tokenize: the ids the server reads. None when an
        answer has not the shape asked for (callers then do without the ids)."""
        try:
            prompt = await self.apply_template(body) if "messages" in body else body.get("prompt")
            if not isinstance(prompt, str):
                return None
            return await self.tokenize_text(body.get("model", ""), prompt, add_special=True, parse_special=True)
        except _Malformed:
            return None


class _Malformed(BackendError):
    """An answer of llama-server's tokenizer routes without the field they answer."""

    def __init__(self, message: str):
        super().__init__(message, code="backend_error")


def _reasoning_switch(body: dict) -> None:
    """`reasoning_effort` where llama-server's chat templates read it, in place: gpt-oss's level
    (`chat_template_kwargs.reasoning_effort`), or "none" as the thinking switch Qwen3's and
    others' read (`enable_thinking: false`); the top-level field too, as a level gpt-oss takes
    (newer llama-servers map it themselves). A template kwarg the client gave wins."""
    effort = reasoning_effort_of(body)
    if effort is None:
        return
    kwargs = dict(body.get("chat_template_kwargs") or {})
    kwargs.setdefault(*(("enable_thinking", False) if effort == "none" else ("reasoning_effort", effort)))
    body["reasoning_effort"], body["chat_template_kwargs"] = effort, kwargs


def _parsable_history(messages):
    return [_with_parsable_arguments(m) for m in messages] if isinstance(messages, list) else messages


def _with_parsable_arguments(message):
    """A history message whose tool calls' arguments llama-server can parse: it refuses a
    request with arguments that are no JSON (a 500) where OpenAI takes any string. A call the
    model wrote badly went to the client as written, and an agent sends it back: "" becomes
    "{}" (no arguments), other text a JSON string of itself."""
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    if not isinstance(calls, list) or all(_parsable(c) for c in calls):
        return message
    return {**message, "tool_calls": [c if _parsable(c) else _arguments_as_json(c) for c in calls]}


def _parsable(call) -> bool:
    arguments = (call.get("function") or {}).get("arguments") if isinstance(call, dict) else None
    if not isinstance(arguments, str):
        return True                     # not ours to judge (the request checks refused what they must)
    try:
        json.loads(arguments)
    except (ValueError, RecursionError):
        return False
    return True


def _arguments_as_json(call: dict) -> dict:
    arguments = call["function"]["arguments"]
    written = json.dumps(arguments) if arguments.strip() else "{}"
    return {**call, "function": {**call["function"], "arguments": written}}


def _usage_summer(num_prompts: int) -> Callable[[dict], None]:
    """llama-server ends each prompt's choice of a stream of several prompts with that prompt's
    usage: each is taken off its chunk, and their sum put on the last one's."""
    seen: list = []

    def sum_usage(chunk: dict) -> None:
        if not isinstance(chunk.get("usage"), dict):
            return
        seen.append(chunk.pop("usage"))
        if len(seen) == num_prompts:
            chunk["usage"] = summed_usage(seen)
    return sum_usage


def _completion_id(answer: dict) -> None:
    """llama-server names a completion `chatcmpl-...` as it names a chat answer; OpenAI's is `cmpl-...`."""
    answer_id = answer.get("id")
    if isinstance(answer_id, str) and answer_id.startswith("chatcmpl-"):
        answer["id"] = answer_id[len("chat"):]


async def _completion_id_events(events: AsyncIterator[list[bytes]]) -> AsyncIterator[list[bytes]]:
    """`_completion_id` on a completion stream's event bytes as llama-server writes them (no
    spaces), without decoding them."""
    async with closing(events) as batches:
        async for batch in batches:
            yield [event.replace(_CHAT_ID, _COMPLETION_ID, 1) for event in batch]


_CHAT_ID, _COMPLETION_ID = b'"id":"chatcmpl-', b'"id":"cmpl-'


def _prefill(body: dict) -> str:
    """The text of a trailing assistant message (a prefill the answer continues), else ""."""
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    if not isinstance(last, dict) or last.get("role") != "assistant":
        return ""
    content = last.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else ""


def _prefill_remover(prefill: str) -> Callable[[dict], None]:
    """Takes the prefill llama-server sends again first out of a prefilled chat's chunks."""
    expected: dict[int, str] = {}               # choice index -> what of the prefill may still come

    def without_prefill(chunk: dict) -> None:
        for choice in chunk.get("choices") or []:
            delta, index = choice.get("delta") or {}, choice.get("index", 0)
            rest = expected.setdefault(index, prefill)
            if rest and isinstance(delta.get("content"), str):
                delta["content"], expected[index] = _without_echo(rest, delta["content"])
    return without_prefill


def _completion_schema(body: dict) -> None:
    """A completion's response_format as the `json_schema` llama-server's /v1/completions reads:
    it ignores response_format there (its chat endpoint takes it), so the text came out free."""
    response_format = body.get("response_format")
    if not isinstance(response_format, dict) or "json_schema" in body:
        return
    if response_format.get("type") == "json_object":
        body["json_schema"] = {"type": "object"}
    elif response_format.get("type") == "json_schema" and isinstance(response_format.get("json_schema"), dict):
        body["json_schema"] = response_format["json_schema"].get("schema") or {}


def _refuse_endless_grammar(body: dict) -> None:
    """ignore_eos with a grammar (vLLM's choice or grammar, a JSON response_format, llama-server's
    own `grammar` / `json_schema`): once the grammar is complete nothing may follow and the end
    is ignored, and llama-server fails the request with a 500. A 400 naming the grammar, as the
    engine's (its end-of-sequence token is the grammar's end)."""
    if body.get("ignore_eos") is not True:
        return
    constraint = vllm_constraint(body)
    param = (constraint[1] if constraint else "response_format" if wants_json(body)
             else next((name for name in ("grammar", "json_schema") if body.get(name)), None))
    if param is not None:
        raise BadRequest(f"{param!r} ends at an end-of-sequence token: it cannot be used with ignore_eos",
                         param=param, code="unsupported_value")


def _grammar_of_vllm_fields(body: dict) -> None:
    """vLLM's guided_choice / guided_grammar (or structured_outputs') as llama-server's GBNF
    `grammar`, in place: the choices' alternatives, or the grammar as given (llama.cpp's own
    GBNF; vLLM's grammar backends read a close EBNF dialect)."""
    constraint = vllm_constraint(body)
    for name in (*GUIDED_FIELDS, "structured_outputs"):
        body.pop(name, None)
    if constraint is not None:
        kind, param, value = constraint
        if kind == "choice" and any("\x00" in choice for choice in value):
            raise BadRequest(f"a {param!r} text with a NUL character: llama-server's grammar cannot spell one "
                             "(it fails the request)", param=param, code="unsupported_value")
        body["grammar"] = choice_grammar(value) if kind == "choice" else value


def _no_alternatives(body: dict) -> bool:
    """A chat that asks for its tokens' logprobs and no alternatives (no top_logprobs, or 0)."""
    return body.get("logprobs") is True and not body.get("top_logprobs")


def _drop_alternatives(answer: dict) -> None:
    """Each token's top_logprobs emptied, in a whole answer or a stream's chunk (llama-server
    was asked for one, the least it gives with logprobs)."""
    for choice in answer.get("choices") or []:
        logprobs = choice.get("logprobs")
        for entry in logprobs.get("content") or () if isinstance(logprobs, dict) else ():
            if isinstance(entry, dict):
                entry["top_logprobs"] = []


def _bpe_spelling(piece: str | list[int]) -> str:
    """A byte-level BPE token as its vocabulary spells it: each byte as GPT-2's character."""
    raw = piece.encode("utf-8") if isinstance(piece, str) else bytes(piece)
    return "".join(BYTE_TO_UNICODE[byte] for byte in raw)


def _sentencepiece_spelling(piece: str | list[int]) -> str:
    """A SentencePiece token as its vocabulary spells it: a piece of no UTF-8 text alone is a byte
    token, `<0xE2>`; another piece its text with '▁' for spaces. (A byte token of ASCII text,
    `<0x0A>`, reads as its text: llama-server's piece does not tell it from a piece "\n".)"""
    if isinstance(piece, list):
        return "".join(f"<0x{byte:02X}>" for byte in piece)
    return piece.replace(" ", SPACE_MARK)


def _without_echo(expected: str, text: str) -> tuple[str, str]:
    """(`text` without the echoed prefill at its start, what of the prefill may still come);
    text that is not the echo is left as it is."""
    if text.startswith(expected):
        return text[len(expected):], ""
    if expected.startswith(text):
        return "", expected[len(text):]
    return text, ""
