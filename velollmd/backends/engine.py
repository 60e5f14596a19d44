"""The in-process engine as a backend: GGUF models served by velollmd itself.

Models come from the catalogue (engine/store.py: a file, a folder, Ollama's store). Each file
is probed once (header only); one that cannot be served is listed in /health with the reason,
and a request for it gets 503 `model_unavailable` naming the file and the reason. Listings
rescan when a stat shows a change since the last scan (freshen); a model whose file is removed
or replaced is unloaded once idle, as `ollama rm` does. A model is loaded on its first request
(weights dequantised in a thread, so the daemon keeps serving), kept while used, unloaded
after `keep_alive_s` idle, and at most `max_loaded_models` stay loaded (least recently used
unloaded first).

Requests become token ids (chat template + tokenizer), run on the model's Runner (a worker
thread), and come back as OpenAI answers or chunks (engine_answer.py). Text is plain model
output: tool calls in it are found by the daemon's tool-call layer, as for any backend.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from typing import AsyncIterator

from ..config import BackendConfig, SchedulerConfig
from ..engine import loader, store
from ..engine.device import choose_device
from ..engine.loader import EngineOptions, LoadedModel
from ..engine.json_constraint import continued_state
from ..engine.prompt import Prefill, chat_prompt, enable_thinking_of, prefill_of, preserved_ids
from ..engine.runner import check_prompt
from ..engine.sampling import SamplingParamError, SamplingParams
from ..wire.truncate import kept_messages, kept_tokens, prompt_limit
from ..errors import BadRequest, NotFound, Unavailable, VeloError
from ..wire.ids import response_id
from ..wire.request import GenerateRequest, one_prompt
from ..wire.streams import closing
from ..wire.vllm import GENERATION_PROMPT_ASKS, SAMPLING_EXTRAS
from .base import Backend, ModelInfo, fills_in_middle, in_vocab, refuse_insert, refuse_unhonoured
from .props import engine_props
from .tokenizer_info import gguf_tokenizer_info
from .prompts import all_of, merged_answers, several_prompts, with_prompt
from .engine_answer import AnswerBuilder, ChunkBytes, embeddings_answer, rerank_answer
from .engine_echo import echo_of, generating_body, prompt_logprobs_asked
from .engine_mailbox import Inbox, Item, Mailbox, Prepare, deliverer
from .model_names import latest_twin

log = logging.getLogger("velollmd.engine")


class EngineBackend(Backend):
    kind = "engine"
    serves_tokenizer = True
    serves_tokenizer_info = True
    serves_props = True
    serves_rerank = True                # a GGUF reranker's (pooling RANK, cls.output); other models: a 501 saying why
    supports_n = True
    takes_context = True
    freshens = True
    loads_models = True
    vllm_fields = frozenset({"choice", "prompt_logprobs", "echo", *SAMPLING_EXTRAS,   # guided_choice: constrained sampling
                             *GENERATION_PROMPT_ASKS})

    def __init__(self, config: BackendConfig, scheduler_config: SchedulerConfig | None = None):
        super().__init__(config)
        self.scheduler_config = scheduler_config or SchedulerConfig()
        self.num_slots = config.max_running
        self.slots_source = "engine"
        self.device = choose_device(config.device)
        log.log(logging.WARNING if config.device == "cuda" and self.device.used != "cuda" else logging.INFO,
                "engine device", extra={"fields": {"backend": config.name, **self.device.to_dict()}})
        self.options = EngineOptions(num_ctx=config.num_ctx, kv_cache_mb=config.kv_cache_mb,
                                     block_size=config.block_size, kv_cache_type=config.kv_cache_type,
                                     max_batch_tokens=config.max_batch_tokens,
                                     max_running=config.max_running, chat_template=config.chat_template,
                                     threads=config.threads, device=self.device.used)
        self.files: dict[str, store.ModelFile] = {}
        self.unavailable: dict[str, str] = {}          # name -> why it cannot be served
        self._probed: dict[str, loader.Probe] = {}      # file identity -> its probe, for the files listed now
        self._keep_alive_s: dict[str, float] = {}       # name -> seconds kept idle, as a client asked
        self._sources_state: tuple | None = None        # what the last scan read, by stats (store.sources_state)
        self._check: asyncio.Future | None = None       # the freshen check running now
        self._next_check: asyncio.Future | None = None  # the one after it, shared by all who ask meanwhile
        self.loaded: dict[str, LoadedModel] = {}        # in least recently used order
        self._loading: dict[str, asyncio.Future] = {}
        self._next_id = 0
        self._mailbox: Mailbox | None = None

    # ---- catalogue ----

    async def list_models(self) -> list[ModelInfo]:
        self._sources_state, catalogue, self._probed = await asyncio.to_thread(self._scan)
        self.files = catalogue.models
        self.unavailable = dict(catalogue.problems)
        for name, found in catalogue.models.items():
            problem = self._probed[found.identity].problem
            if problem:
                self.unavailable[name] = problem
        self._unload_idle()
        self._trim(self.config.max_loaded_models)      # a load exceeds it while the others are busy
        self.loaded_models = frozenset(self.loaded)
        return [self._info(found, self._probed[found.identity])
                for name, found in self.files.items() if name not in self.unavailable]

    def _scan(self) -> tuple[tuple, store.Catalogue, dict[str, loader.Probe]]:
        """The sources' state, then the files found in them, then their probes: the last scan's
        where a file is unchanged, the others read now (a thread: it reads headers). The state
        comes first: a change made during the scan is seen by the next freshen. The probes are
        those of the files found and no others, so that a file rewritten or touched again and
        again leaves one entry (a loaded model keeps its own: LoadedModel.probe)."""
        state = self._sources_now()
        catalogue = store.find_models(self.config.model, self.config.alias, self.config.models_dir,
                                      self._ollama_dirs())
        known, probes = self._probed, {}
        for found in catalogue.models.values():
            probes[found.identity] = known.get(found.identity) or probes.get(found.identity) or \
                loader.probe(found.path, self.config.chat_template)
        return state, catalogue, probes

    def _ollama_dirs(self) -> list:
        return store.ollama_store_dirs() if self.config.ollama_store else []

    def _sources_now(self) -> tuple:
        return store.sources_state(self.config.model, self.config.models_dir, self._ollama_dirs())

    async def freshen(self) -> None:
        """Rescan if a model file, the models folder or Ollama's manifests changed since the
        last scan (told by stats alone, in a thread), so that listings show at once a GGUF
        copied in or removed, or an `ollama pull` / `ollama rm`. Callers at the same time share
        the work: one check runs, and all who ask meanwhile wait for the single one after it
        (which sees their changes), never one each."""
        if self._next_check is None or self._next_check.done():     # done: cancelled before it ran
            self._next_check = asyncio.ensure_future(self._check_after(self._check))
        await asyncio.shield(self._next_check)

    async def _check_after(self, previous: asyncio.Future | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        self._check, self._next_check = asyncio.current_task(), None
        if await asyncio.to_thread(self._sources_now) != self._sources_state:
            await self.refresh()

    def _info(self, found: store.ModelFile, probed: loader.Probe) -> ModelInfo:
        details = {"format": "gguf", "family": probed.arch, "parameter_size": "",
                   "quantization_level": probed.file_type}
        return ModelInfo(id=found.name, backend=self.name, identity=f"engine:{found.identity}",
                         size=found.size, created=int(found.mtime), details=details)

    def context_size(self, model: str | None = None, num_ctx: int | None = None) -> int:
        """`model`'s context as it is loaded (the config's num_ctx, else its own up to 4096), or
        as a request's `num_ctx` (Ollama's) sizes it, up to the model's trained context."""
        probed = self._probe_of(model) if model else None
        trained = probed.context_length if probed is not None else 0
        return min(num_ctx, trained or num_ctx) if num_ctx else loader.context_for(self.config.num_ctx, trained)

    def sees_images(self) -> bool:
        return False                     # text models only: no vision projector

    def thinks(self, model: str) -> bool | None:
        """Whether `model`'s chat template thinks (read from its header), None for a model not found."""
        probed = self._probe_of(model)
        return probed.thinks if probed is not None else None

    def _probe_of(self, model: str) -> loader.Probe | None:
        """The probe of what serves `model`: the file it is loaded from while loaded (it serves
        until unloaded, its file removed or replaced or not), else the catalogue's file; None
        for a model not found."""
        name = self._served_name(model)
        loaded = self.loaded.get(name)
        if loaded is not None and loaded.probe is not None:
            return loaded.probe
        found = self.files.get(name)
        return self._probed[found.identity] if found is not None else None

    def hears_audio(self) -> bool:
        return False

    def status(self) -> dict:
        status = super().status()
        status["engine"] = {
            "device": self.device.to_dict(),
            "unavailable": dict(self.unavailable),
            "loaded": {name: {"path": str(m.path), "arch": m.config.arch, "device": m.device, "num_ctx": m.num_ctx,
                              "kv_blocks": m.kv.num_blocks, "kv_usage": round(m.runner.scheduler.pool.usage(), 4),
                              "requests": m.runner.num_requests, "steps": m.runner.num_steps}
                       for name, m in self.loaded.items()}}
        return status

    def configure_scheduler(self, config: SchedulerConfig) -> None:
        """New [scheduler] settings: for the models loaded later, and at once for the loaded
        ones' queues (queue_timeout_s, aging_s, preempt), as the daemon's busy queues take them."""
        self.scheduler_config = config
        for model in self.loaded.values():
            model.runner.scheduler.config = loader.scheduler_settings(config, self.options)

    # ---- loading ----

    def _served_name(self, name: str) -> str:
        """The catalogue's name for what a client asked: as Ollama reads it, a name without a
        tag is its `:latest` (`llama3.2` is `llama3.2:latest`)."""
        twin = latest_twin(name)
        if name not in self.files and (twin in self.files or twin in self.unavailable):
            return twin
        return name

    def check_servable(self, model: str) -> None:
        name = self._served_name(model)
        if name in self.unavailable:
            raise _unservable(name, self.unavailable[name])

    async def model(self, asked: str) -> LoadedModel:
        name = self._served_name(asked)
        if name not in self.files and name not in self.unavailable:
            await self.freshen()                       # a file added since the last scan (`ollama pull`)
            name = self._served_name(asked)
        if name in self.loaded:
            model = self.loaded.pop(name)
            self.loaded[name] = model                  # most recently used last
            model.last_used = time.monotonic()
            return model
        self.check_servable(name)
        if name not in self.files:
            raise NotFound(f"The model '{name}' does not exist", param="model", code="model_not_found")
        if name not in self._loading:
            self._loading[name] = asyncio.ensure_future(self._load(name))
        await asyncio.shield(self._loading[name])
        return await self.model(asked)     # unloaded before this woke up (keep_alive 0, the cap): again

    async def _load(self, name: str) -> LoadedModel:
        found = self.files[name]
        probed = self._probed[found.identity]          # now: a rescan during the load may drop it
        try:
            self._trim(self.config.max_loaded_models - 1)      # room for one more
            started = time.monotonic()
            model = await asyncio.to_thread(loader.load, name, found.path, self.options, self.scheduler_config)
        except (OSError, ValueError, MemoryError) as exc:
            self.unavailable[name] = loader.problem_with(found.path, exc)
            raise _unservable(name, self.unavailable[name]) from None
        finally:
            self._loading.pop(name, None)
        model.runner.start()
        model.last_used = time.monotonic()
        model.file, model.probe = found, probed
        self.loaded[name] = model
        self.loaded_models = frozenset(self.loaded)
        log.info("engine loaded a model", extra={"fields": {
            "model": name, "path": str(found.path), "seconds": round(time.monotonic() - started, 3)}})
        return model

    def _trim(self, max_loaded: int) -> None:
        """Unload idle models, least recently used first, until at most `max_loaded` stay."""
        for name in [n for n, m in self.loaded.items() if not m.runner.num_requests]:
            if len(self.loaded) <= max_loaded:
                return
            self._unload(name)

    def keep_model(self, model: str, keep_alive_s: float | None) -> None:
        model = self._served_name(model)
        if model not in self.files:
            return
        if keep_alive_s is None:
            self._keep_alive_s.pop(model, None)
        else:
            self._keep_alive_s[model] = keep_alive_s

    async def load_model(self, model: str) -> None:
        await self.model(model)

    async def unload_model(self, model: str) -> None:
        model = self._served_name(model)
        if model in self.loaded and not self.loaded[model].runner.num_requests:
            self._unload(model)

    def model_status(self, model: str) -> str:
        name = self._served_name(model)
        return "loading" if name in self._loading else "loaded" if name in self.loaded else "unloaded"

    def model_path(self, model: str) -> str:
        found = self.files.get(self._served_name(model))
        return str(found.path) if found is not None else ""

    def loaded_model_info(self, model: str) -> ModelInfo | None:
        loaded = self.loaded.get(model)
        if loaded is None or loaded.file is None or loaded.probe is None:
            return None
        return self._info(loaded.file, loaded.probe)

    def in_vram(self, model: str) -> bool:
        loaded = self.loaded.get(model)
        return loaded is not None and loaded.device == "cuda"

    def loaded_until(self) -> dict[str, float]:
        """Each loaded model's unload time: its keep-alive after its last use (from now while
        it serves requests)."""
        now, wall_now = time.monotonic(), time.time()
        return {name: wall_now + self._keep_alive_of(name)
                - (0 if model.runner.num_requests else now - model.last_used)
                for name, model in self.loaded.items()}

    def _keep_alive_of(self, name: str) -> float:
        """How long `name` stays loaded idle: a client's keep_alive, else keep_alive_s (0 there
        means for good)."""
        return self._keep_alive_s.get(name, self.config.keep_alive_s or math.inf)

    def _unload_idle(self) -> None:
        """Unload the idle models that are past their keep-alive, or whose file is gone or
        changed (a new version is loaded on the next request)."""
        now = time.monotonic()
        for name, model in list(self.loaded.items()):
            if model.runner.num_requests:
                continue
            found = self.files.get(name)
            if found is None or found.identity != model.identity or \
                    now - model.last_used >= self._keep_alive_of(name):
                self._unload(name)

    def _unload(self, name: str) -> None:
        model = self.loaded.pop(name)
        model.runner.stop()
        self.loaded_models = frozenset(self.loaded)
        log.info("engine unloaded a model", extra={"fields": {"model": name}})

    async def close(self) -> None:
        for name in list(self.loaded):
            self._unload(name)

    # ---- the API ----

    async def chat(self, request: GenerateRequest) -> dict:
        return await self._answer(request, chat=True)

    async def completion(self, request: GenerateRequest) -> dict:
        """Several prompts (lm-evaluation-harness's batches): each a request of its own, run
        together (the scheduler batches them), one answer of their choices in prompt order."""
        prompts = several_prompts(request.body)
        if prompts is not None:
            return merged_answers(await all_of(self._answer(with_prompt(request, p), chat=False) for p in prompts))
        return await self._answer(request, chat=False)

    def num_parallel(self, request: GenerateRequest) -> int:
        """A whole completion's prompts run at once, a slot each (a stream takes one prompt)."""
        prompts = several_prompts(request.body) if request.endpoint != "chat" and not request.stream else None
        return len(prompts) if prompts is not None else 1

    def chat_stream(self, request: GenerateRequest) -> AsyncIterator[dict]:
        return self._stream(request, chat=True)

    def completion_stream(self, request: GenerateRequest) -> AsyncIterator[dict]:
        return self._stream(request, chat=False)

    def answer_events(self, request: GenerateRequest) -> AsyncIterator[list[dict]]:
        return self._batches(request, chat=request.endpoint == "chat")

    async def _answer(self, request: GenerateRequest, *, chat: bool) -> dict:
        model, prompt_ids, params, prefill = await self._prepare(request, chat=chat)
        builder = self._builder(request, model, params, prefill, prompt_ids, chat=chat)
        async with self._running(model, request, prompt_ids, params) as batches:
            async for events in batches:
                for index, event, _ in events:
                    builder.add(index, event)
        return builder.response()

    async def _stream(self, request: GenerateRequest, *, chat: bool) -> AsyncIterator[dict]:
        async with closing(self._batches(request, chat=chat)) as batches:
            async for chunks in batches:
                for chunk in chunks:
                    yield chunk.chunk if type(chunk) is ChunkBytes else chunk

    def decode_event(self, data: bytes) -> dict:
        """The engine's own chunks carry their dict: nothing to parse."""
        return data.chunk if type(data) is ChunkBytes else super().decode_event(data)

    async def _batches(self, request: GenerateRequest, *, chat: bool) -> AsyncIterator[list[dict | ChunkBytes]]:
        """The stream's chunks, a list per loop wake-up: every event of the request waiting by
        then, so that tokens ready together go through the relay and the socket as one. The
        token chunks come made and encoded from the engine's thread (AnswerBuilder.frames)."""
        model, prompt_ids, params, prefill = await self._prepare(request, chat=chat)
        builder = self._builder(request, model, params, prefill, prompt_ids, chat=chat)
        first = builder.first_chunks()
        async with self._running(model, request, prompt_ids, params, prepare=builder.frames) as batches:
            if first:
                yield first
            async for events in batches:
                chunks = [frame for _, _, frames in events for frame in frames]
                if chunks:
                    yield chunks
        yield [builder.usage_chunk()]

    async def _prepare(self, request: GenerateRequest, *, chat: bool):
        """(model, prompt ids, sampling params, the chat's prefill or None) of a request."""
        body = request.body
        _refuse_unsupported(body)
        refuse_unhonoured(body, self.vllm_fields, "the engine")
        if not request.keeps_model:     # as Ollama: each request sets its model's keep-alive, the
            self.keep_model(request.model, None)   # default when it says none (not an earlier keep_alive 0)
        model = await self.model(request.model)
        try:
            params = SamplingParams.from_request(generating_body(body), eos_token_ids=tuple(model.tokenizer.eog_ids),
                                                 vocab_size=model.config.n_vocab)
            params = dataclasses.replace(params, prompt_logprobs=prompt_logprobs_asked(body, chat=chat))
        except SamplingParamError as exc:
            raise BadRequest(str(exc), param=exc.param) from None
        num_ctx = model.runner.context_of(params)
        prompt_ids = self._prompt_ids(model, body, chat=chat, extras_limit=prompt_limit(num_ctx, params.max_tokens))
        prompt_ids = self._fitted(model, body, params, prompt_ids, chat=chat)
        check_prompt(prompt_ids, num_ctx, "messages" if chat else "prompt")
        prefill = prefill_of(model.template, body["messages"]) if chat else None
        if params.json_mode or params.choices:   # its tables, once per model, off the loop and the engine's lock
            await asyncio.to_thread(model.runner.json_vocab.built)
        if chat:       # the turn's end as text too, should the model spell it out in pieces
            params = dataclasses.replace(params, stop=tuple(dict.fromkeys(params.stop + model.template.stop)),
                                         preserved_ids=preserved_ids(model.template, model.tokenizer, body),
                                         **_json_start(model, body, params, prefill))
        return model, prompt_ids, params, prefill

    def _builder(self, request: GenerateRequest, model: LoadedModel, params: SamplingParams,
                 prefill: Prefill | None, prompt_ids: list[int], *, chat: bool) -> AnswerBuilder:
        """The request's answer; a thinking model's thinking goes to reasoning_content, as
        llama-server and Ollama answer it (in JSON mode: all that comes before the object). A
        prefill that left its thinking open is continued as thinking; one past it (closed, or
        plain answer text) is continued as the answer, with no thinking of its own."""
        continues_thinking = prefill is not None and prefill.thinking
        thinks = params.think_end is not None or continues_thinking or (
            prefill is None and enable_thinking_of(request.body) is not False)
        prompt_text = _chat_text(model, request.body) if chat and "context" in request.body else None
        return AnswerBuilder(response_id("chatcmpl" if chat else "cmpl"), request.model, chat=chat,
                             tokenizer=model.tokenizer, n=params.n,
                             think_tags=model.template.think_tags if chat and thinks else None,
                             thinking_opened=params.think_end is not None or continues_thinking,
                             context_of=_answer_context(model, prompt_text),
                             echo=None if chat else echo_of(request.body, prompt_ids, model.tokenizer),
                             prompt_logprobs_field=request.body.get("prompt_logprobs") is not None,
                             sampling=params)

    def _prompt_ids(self, model: LoadedModel, body: dict, *, chat: bool, extras_limit: int | None = None) -> list[int]:
        """`extras_limit`: the most tokens a fill in the middle with `input_extra` takes, its
        repo-level context cut to fit (see _fill_in_middle)."""
        if not chat:
            prompt = one_prompt(body.get("prompt", ""), "the engine")
            if fills_in_middle(body):
                return _fill_in_middle(model, prompt, body, extras_limit=extras_limit)
            if isinstance(prompt, list):
                return in_vocab(list(prompt), model.config.n_vocab, "prompt")
            return model.tokenizer.encode(prompt, add_special=True, parse_special=True)
        return model.tokenizer.encode(_chat_text(model, body), add_special=True, parse_special=True)

    def _fitted(self, model: LoadedModel, body: dict, params: SamplingParams, prompt_ids: list[int],
                *, chat: bool) -> list[int]:
        """A prompt over the request's context, with `truncate` (the Ollama routes' default), cut
        to fit as Ollama cuts it (wire/truncate.py); any other is left for check_prompt."""
        num_ctx = model.runner.context_of(params)
        if body.get("truncate") is not True or len(prompt_ids) < num_ctx:
            return prompt_ids
        limit, num_asked = prompt_limit(num_ctx, params.max_tokens), len(prompt_ids)
        if not chat and fills_in_middle(body):            # fill in the middle: cut around the gap
            prompt_ids = _fill_in_middle(model, one_prompt(body.get("prompt", ""), "the engine"), body, limit)
        if chat:
            def ids_of(messages: list[dict]) -> list[int]:
                return self._prompt_ids(model, {**body, "messages": messages}, chat=True)
            prompt_ids = ids_of(kept_messages(body["messages"], lambda messages: len(ids_of(messages)) <= limit))
        log.warning("truncating input prompt", extra={"fields": {
            "model": body["model"], "limit": num_ctx, "prompt": num_asked, "new": min(len(prompt_ids), limit)}})
        return prompt_ids if len(prompt_ids) <= limit else kept_tokens(prompt_ids, limit, body.get("num_keep"))

    async def count_prompt_tokens(self, body: dict) -> int | None:
        """The engine's own chat template and tokenizer: exact counts."""
        model = await self.model(body["model"])
        return len(self._prompt_ids(model, body, chat=True))

    async def tokenize_text(self, model: str, content: str | list, *, add_special: bool, parse_special: bool,
                            with_pieces: bool = False) -> list:
        tokenizer = (await self.model(model)).tokenizer
        ids = _mixed_ids(tokenizer, content, add_special, parse_special)
        return [{"id": i, "piece": _piece(tokenizer.token_bytes(i))} for i in ids] if with_pieces else ids

    async def detokenize(self, model: str, tokens: list[int]) -> str:
        return (await self.model(model)).tokenizer.decode(tokens)

    async def token_strs(self, model: str, tokens: list[dict]) -> list[str]:
        tokenizer = (await self.model(model)).tokenizer
        return [tokenizer.token_to_piece(token["id"]) for token in tokens]

    async def apply_template(self, body: dict) -> str:
        """The text generating renders (_chat_text, which _prompt_ids encodes)."""
        return _chat_text(await self.model(body["model"]), body)

    async def vocab_size(self, model: str) -> int | None:
        return (await self.model(model)).tokenizer.vocab_size

    async def tokenizer_info(self, model: str) -> dict:
        return gguf_tokenizer_info(await self.model(model), self.context_size(model))

    async def server_props(self, model: str) -> dict:
        return engine_props(await self.model(model), served_name=model, n_ctx=self.context_size(model),
                            total_slots=self.num_slots)

    def _running(self, model: LoadedModel, request: GenerateRequest, prompt_ids: list[int],
                 params: SamplingParams, prepare: Prepare | None = None):
        return _Run(self, model, request, prompt_ids, params, prepare)

    def mailbox(self, loop: asyncio.AbstractEventLoop) -> Mailbox:
        """The one mailbox of this backend's requests on `loop` (a new loop gets a new one)."""
        if self._mailbox is None or self._mailbox.loop is not loop:
            self._mailbox = Mailbox(loop)
        return self._mailbox

    def new_request_id(self) -> str:
        self._next_id += 1
        return f"{self.name}-{self._next_id}"

    async def embeddings(self, body: dict) -> dict:
        model = await self.model(body["model"])
        inputs = body.get("input")
        one = isinstance(inputs, str) or inputs and all(type(t) is int for t in inputs)   # a text or token ids
        texts = [inputs] if one else list(inputs or [])
        if not texts:
            raise BadRequest("input must be a string or a non-empty list", param="input")
        vectors, num_tokens, num_ctx = [], 0, self.context_size(body["model"], body.get("num_ctx"))
        for text in texts:
            ids = in_vocab(text, model.config.n_vocab, "input") if isinstance(text, list) \
                else model.tokenizer.encode(str(text), add_special=True)
            if body.get("truncate") is True:
                ids = ids[:num_ctx]                    # Ollama's truncate: the input's start, to fit
            if not ids or len(ids) > num_ctx:
                raise BadRequest(f"each input must be 1 to {num_ctx} tokens, got {len(ids)}", param="input")
            vectors.append(await asyncio.to_thread(model.runner.embed, ids))
            num_tokens += len(ids)
        model.last_used = time.monotonic()
        self._unload_idle()                            # keep_alive 0: unloaded once idle
        return embeddings_answer(body["model"], vectors, num_tokens)

    async def rerank(self, body: dict) -> dict:
        """Each document scored by the reranker on its query/document prompt (one forward each,
        in the worker thread), answered as llama-server answers /v1/rerank."""
        probed = self._probe_of(body["model"])
        if probed is not None and probed.problem is None and probed.rerank_problem:   # from the header: no load
            raise self.rerank_unavailable(body["model"], f" ({probed.rerank_problem})")
        model = await self.model(body["model"])
        head = model.rank_head
        if head is None:
            raise self.rerank_unavailable(body["model"], " (its GGUF is not a reranker)")
        scores, num_tokens = [], 0
        for index, document in enumerate(body["documents"]):
            ids = head.prompt_ids(model.tokenizer, body["query"], document)
            if not ids or len(ids) > model.num_ctx:
                raise BadRequest(f"query and document {index} must be 1 to {model.num_ctx} tokens, got {len(ids)}",
                                 param="documents")
            scores.append(await asyncio.to_thread(_rank_score, model, ids))
            num_tokens += len(ids)
        model.last_used = time.monotonic()
        self._unload_idle()                            # keep_alive 0: unloaded once idle
        return rerank_answer(body["model"], scores, num_tokens, body.get("top_n"))


def _rank_score(model: LoadedModel, ids: list[int]) -> float:
    """A pair's score: the reranker's head on its last token's final hidden state (worker thread)."""
    return model.rank_head.score(model.runner.final_hidden(ids)[-1])


class _Run:
    """`async with` one request's n sequences on a runner: batches of events in, cancelled on
    exit. `prepare`, when given, is called in the engine's thread on each event as it is sent
    (work taken off the event loop); its result travels with the event."""

    def __init__(self, backend: EngineBackend, model: LoadedModel, request: GenerateRequest,
                 prompt_ids: list[int], params: SamplingParams, prepare: Prepare | None = None):
        self.backend, self.model, self.request = backend, model, request
        self.prompt_ids, self.params, self.prepare = prompt_ids, params, prepare
        self.inbox = Inbox()
        self.ids: list[str] = []

    async def __aenter__(self) -> AsyncIterator[list[Item]]:
        loop = asyncio.get_running_loop()
        ids = [self.backend.new_request_id() for _ in range(self.params.n)]
        mailbox = self.backend.mailbox(loop)
        deliverers = [deliverer(mailbox, self.inbox, index, self.prepare) for index in range(self.params.n)]
        # n > 1: the prompt is computed once, then forked copy-on-write (choice i: seed + i)
        self.model.runner.submit_choices(ids, self.prompt_ids, self.params, deliverers,
                                         priority=self.request.priority, model_name=self.model.name,
                                         waited_s=self.request.queue_waited_s)
        self.ids = ids
        return self._batches()

    async def _batches(self) -> AsyncIterator[list[Item]]:
        """(choice index, event, prepared) items, all that arrived since the last batch, until
        every choice has ended; an engine error is raised after the events before it."""
        num_open = len(self.ids)
        while num_open:
            items = await self.inbox.take()
            for position, (_, event, _) in enumerate(items):
                if event.error is not None:
                    if position:
                        yield items[:position]
                    raise event.error if isinstance(event.error, VeloError) else Unavailable(
                        f"the engine failed: {type(event.error).__name__}: {event.error}", code="engine_error")
                if event.finish_reason is not None:
                    num_open -= 1
            yield items

    async def __aexit__(self, *exc_info) -> None:
        for request_id in self.ids:
            self.model.runner.cancel(request_id)       # no-op for the finished ones
        self.model.last_used = time.monotonic()
        self.backend._unload_idle()                    # keep_alive 0: unloaded once idle


def _chat_text(model: LoadedModel, body: dict) -> str:
    """The prompt text of a chat body: the model's chat template rendered (with the generation
    prompt unless `add_generation_prompt` is false), after the text of its `context` (Ollama's
    /api/generate joins an earlier answer's tokens and the new turn so: the tokens detokenized,
    the turn rendered after them)."""
    if model.template is None:
        raise BadRequest(f"model {body['model']!r} has a chat template the engine does not know "
                         f"({model.template_error}); set chat_template in the engine's [[backends]] "
                         "entry, or use /v1/completions", param="messages", code="unknown_chat_template")
    try:
        text = chat_prompt(model.template, model.tokenizer, body["messages"], tools=body.get("tools") or None,
                           add_generation_prompt=_opens_or_continues_a_turn(body),
                           enable_thinking=enable_thinking_of(body))
    except ValueError as exc:
        raise BadRequest(f"cannot render the chat template: {exc}", param="messages") from None
    return _context_text(model, body.get("context")) + text


def _opens_or_continues_a_turn(body: dict) -> bool:
    """Whether the prompt ends in an assistant turn the answer writes: a new one (vLLM's
    add_generation_prompt, true unless false) or the final message continued (continue_final_message,
    which chat_prompt renders as a prefill, the turn left open)."""
    return body.get("add_generation_prompt") is not False or body.get("continue_final_message") is True


def _mixed_ids(tokenizer, content: str | list, add_special: bool, parse_special: bool) -> list[int]:
    """llama-server's tokenize_mixed: a text, or texts and token ids in one list; the specials
    (BOS) only where the first item is a text."""
    ids: list[int] = []
    for index, item in enumerate([content] if isinstance(content, str) else content):
        if isinstance(item, str):
            ids += tokenizer.encode(item, add_special=add_special and index == 0, parse_special=parse_special)
        else:
            ids.append(item)
    return ids


def _piece(piece: bytes) -> str | list[int]:
    """A token's piece as llama-server's with_pieces writes it: its text, or its bytes when they
    are no UTF-8 text alone (one byte of a longer character)."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(piece)


def _fill_in_middle(model: LoadedModel, prompt: str | list, body: dict, limit: int | None = None,
                    extras_limit: int | None = None) -> list[int]:
    """A completion with a `suffix`: the model's fill-in-the-middle prompt, the prompt before
    the gap and the suffix after it, each read as plain text (a FIM token written in the code
    is no FIM token), as llama-server's /infill reads them; a model without FIM tokens: a 400.
    `limit`: at most that many tokens, the pieces cut around the gap (fim_pieces_fitted), so
    that the FIM tokens stay (`truncate` cutting the whole prompt's front would drop them).
    `input_extra` (llama-server's other files) goes before it (with_repo_context), in `limit`
    or else `extras_limit` tokens."""
    tokenizer = model.tokenizer
    if not tokenizer.can_fill_in_middle:
        refuse_insert(body)
    prefix_ids = (in_vocab(list(prompt), model.config.n_vocab, "prompt") if isinstance(prompt, list)
                  else tokenizer.encode(prompt, add_special=False, parse_special=False))
    suffix_ids = tokenizer.encode(body.get("suffix") or "", add_special=False, parse_special=False)
    if limit is not None:
        budget = limit - len(tokenizer.fill_in_middle([], []))
        prefix_ids, suffix_ids = fim_pieces_fitted(prefix_ids, suffix_ids, budget)
    fim_ids = tokenizer.fill_in_middle(prefix_ids, suffix_ids)
    return with_repo_context(tokenizer, fim_ids, body.get("input_extra"), extras_limit if limit is None else limit)


def with_repo_context(tokenizer, fim_ids: list[int], extras: list[dict] | None, limit: int | None) -> list[int]:
    """The FIM prompt after the repo-level context of `extras` (Tokenizer.repo_context), in at
    most `limit` tokens: as llama-server fills the rest of its context with them, the end of
    that context is kept (the latest chunks and the edited file's separator), its front cut.
    No extras: the FIM prompt as it is (llama-server adds the bare separators only when its
    slot's context exceeds its batch size)."""
    if not extras:
        return fim_ids
    extra_ids = tokenizer.repo_context(extras)
    take = len(extra_ids) if limit is None else max(0, min(len(extra_ids), limit - len(fim_ids)))
    return extra_ids[len(extra_ids) - take:] + fim_ids


def fim_pieces_fitted(prefix_ids: list[int], suffix_ids: list[int], budget: int) -> tuple[list[int], list[int]]:
    """The prefix and suffix in `budget` tokens, cut around the gap as llama-server's /infill
    cuts them: the end of the prefix (the code right before the cursor) and the start of the
    suffix, the suffix taking a quarter of the room, or what the prefix leaves when more."""
    budget = max(0, budget)
    suffix_take = min(len(suffix_ids), max(budget // 4, budget - len(prefix_ids)))
    prefix_take = min(len(prefix_ids), budget - suffix_take)
    return prefix_ids[len(prefix_ids) - prefix_take:], suffix_ids[:suffix_take]


def _context_text(model: LoadedModel, context) -> str:
    """An Ollama `context` as the text it stands for (control tokens written out, as Ollama's
    Detokenize writes them); a 400 naming `context` for anything but the model's token ids."""
    if context is None:
        return ""
    if not isinstance(context, list):
        raise BadRequest("invalid 'context': expected an array of token ids", param="context")
    try:
        return model.tokenizer.decode(in_vocab(context, model.config.n_vocab, "context"))
    except BadRequest as exc:               # (Ollama's clients read the message alone)
        raise BadRequest(f"invalid 'context': {exc.message}", param="context") from None


def _answer_context(model: LoadedModel, prompt_text: str | None):
    """What an answer's `context` is made of, or None when the request asks for none: Ollama's
    is the prompt it rendered and the answer's text, tokenized again (no BOS added)."""
    if prompt_text is None:
        return None
    return lambda text: model.tokenizer.encode(prompt_text + text, add_special=False, parse_special=True)


def _json_start(model: LoadedModel, body: dict, params: SamplingParams, prefill: Prefill | None) -> dict:
    """Where a chat's JSON starts, as SamplingParams fields: after the thinking (think_end),
    or, a prefill past its thinking, at once from the prefill's answer text (json_prefix: "{"
    continues the object it opens). A prefill that starts no object is a 400."""
    if prefill is None or prefill.thinking:
        return {"think_end": _json_after(model, body, params)}
    if params.json_mode:
        try:
            continued_state(prefill.answer.encode(), params.json_schema)
        except ValueError as exc:
            raise BadRequest(f"response_format: the assistant message the answer continues does not start "
                             f"its JSON: {exc}", param="messages") from None
    return {"think_end": None, "json_prefix": prefill.answer if params.json_mode else ""}


def _json_after(model: LoadedModel, body: dict, params: SamplingParams) -> str | None:
    """JSON mode for a template that thinks, its thinking not turned off (think false,
    enable_thinking false, reasoning_effort none): the end-of-thinking marker the object
    comes after, as Ollama and llama.cpp apply a format to the answer after the thinking.
    None: the object starts at once."""
    tags = model.template.think_tags
    if not params.json_mode or tags is None or enable_thinking_of(body) is False:
        return None
    return tags[1]


def _refuse_unsupported(body: dict) -> None:
    """Fields the engine cannot honour get a 400 naming them, never a silent ignore."""
    if "messages" in body:
        refuse_insert(body)                     # a chat has no middle to fill
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (
            None, "text", "json_object", "json_schema"):
        raise BadRequest(f"response_format {response_format.get('type')!r} is not one the engine serves",
                         param="response_format")


def _unservable(name: str, reason: str) -> Unavailable:
    return Unavailable(f"model {name!r} cannot be served: {reason}", code="model_unavailable")
