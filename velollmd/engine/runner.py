"""The engine loop: continuous batching of one model over its paged KV cache.

    runner = Runner(model, kv, scheduler, tokenizer, max_batch_tokens=512, num_ctx=4096)
    runner.start()                                   # a worker thread steps while there is work
    runner.submit(request_id, prompt_ids, params, on_event, priority=5)
    ...                                              # on_event(Event) from the worker thread
    runner.cancel(request_id)                        # client gone: its blocks are freed

Each step (vLLM v1's two verbs on the shared scheduler):
1. `scheduler.schedule(now)` admits waiting requests (their prompt's blocks allocated, the
   cached prefix found by chained block hashes and then checked token by token against what
   this runner really wrote into those blocks);
2. the plan: every running sequence that is generating feeds its one new token (decode), then
   prefill chunks of the others in admission order until `max_batch_tokens`, so a long prompt
   holds running decodes up for at most one chunk;
3. one `model.run` over the packed batch (numpy releases the GIL: the event loop runs);
4. sampling where a sequence reached its last token, stop checks, and
   `scheduler.update_from_output`, which grows each sequence's blocks by its new token and
   preempts (recompute later) a sequence whose token found no free block; the copy-on-write
   pairs it made are applied to the K/V arrays at once;
5. the step's events go to the consumers, after the lock is released: their callbacks (the
   engine backend encodes each token's chunk there) never hold up a submit on the event loop.
   A cancel takes no lock at all: the next step applies it.

`n > 1` (`submit_choices`): choice 0 prefills the prompt; at its first token the runner forks
it (BlockPool.fork: every block shared, ref-counted) into the other choices, each sampling that
same first distribution with its own seed (seed + i); the shared partial last block is copied
when a child first writes into it.

What each KV slot holds is tracked token by token (kvcache.SlotTokens): a prefix-cache hit
counts only as far as the cached blocks really hold this prompt's tokens, and a block handed
to a new sequence forgets what it held, so a stale slot of another prefix never passes for a
hit (however equal its token).

Prompt logprobs (SamplingParams.prompt_logprobs: vLLM's field, and a completion's echo with
logprobs): every prompt chunk's rows come back from the forward as final hidden states (n_embd
floats each, Batch.hidden_indices), which the LM head turns into logits a slice of rows at a
time, each slice reduced at once to the next prompt token's logprob, rank and top alternatives
(sampling.prompt_logprobs_of): a 512-row chunk never holds 512 n_vocab rows. The whole list
goes with the sequence's first event. Such a sequence computes its whole prompt: positions
found in the prefix cache have K/V but no logits, so its cached prefix is recomputed (the
same tokens at the same places: its blocks stay shared, the pool is not asked twice) and its
cached_tokens is 0. Those positions' K/V are not written again (Batch.num_kept): a batch of
another size sums in another order, and a request sharing the blocks would read other bits.
A preempted sequence that recomputes after its prompt logprobs were sent takes its prefix from
the cache again.

A sequence's last sampled token is never appended when it finishes: its KV would never be
computed, and a block registered with it would be a wrong prefix-cache hit.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import CONTEXT_LENGTH_EXCEEDED, QUEUE_TIMEOUT, BadRequest, Unavailable, VeloError
from ..sched.request import RequestStatus, SchedRequest
from ..sched.scheduler import RunnerOutput, Scheduler
from .detokenize import TextStream
from .json_constraint import JsonVocab
from .kvcache import PagedKVCache, SlotTokens
from .model import Batch, Model
from .sampling import Sampler, SampleResult, SamplingParams, prompt_logprobs_of, sample_batch

log = logging.getLogger("velollmd.engine")


@dataclass(frozen=True)
class Event:
    """What one step gives one request: new text and tokens, or its end."""
    request_id: str
    text: str = ""
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[SampleResult, ...] = ()     # one per token when the request asked for them
    finish_reason: str | None = None            # "stop" | "length" | "abort" | "error"
    error: Exception | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_output_tokens: int = 0
    stop_string: str | None = None              # the stop string that ended it (finish_reason "stop")
    # the prompt's own logprobs, on a sequence's first event when asked: one a prompt token,
    # None for the first (no distribution before it)
    prompt_logprobs: tuple[SampleResult | None, ...] | None = None


@dataclass
class EngineSeq:
    """The runner's side of one request: sampling and text state, KV progress."""
    request: SchedRequest
    params: SamplingParams
    on_event: Callable[[Event], None]
    choice_index: int
    sampler: Sampler
    text: TextStream
    num_computed: int = 0           # tokens whose K/V are in the cache
    num_cached_tokens: int = 0      # of the prompt, found in the prefix cache at admission
    num_kept: int = 0               # prompt positions whose K/V the cache held at admission (not rewritten)
    num_ctx: int = 0                # its context (the model's, or the request's num_ctx)
    tokens: list[int] = field(default_factory=list)    # output emitted so far
    ended_on_eog: bool = False      # an end-of-generation token ended it (no text, not in tokens)
    prompt_logprobs: list[SampleResult | None] | None = None   # as its prompt's rows are computed
    prompt_logprobs_sent: bool = False

    @property
    def wants_prompt_rows(self) -> bool:
        """Whether its prompt's rows need logits: prompt logprobs asked and not sent yet."""
        return self.params.prompt_logprobs is not None and not self.prompt_logprobs_sent

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_output_tokens(self) -> int:
        """The tokens it generated, the end token that ended it among them: llama-server counts
        it (completion_tokens 1 for an answer that ends at once, on completions and chats)."""
        return len(self.tokens) + self.ended_on_eog


def check_prompt(prompt_ids: Sequence[int], num_ctx: int, param: str = "messages") -> None:
    """A 400 naming `param` for a prompt that is empty or leaves no room to generate."""
    if not prompt_ids:
        raise BadRequest("the prompt is empty after tokenization", param=param)
    if len(prompt_ids) >= num_ctx:
        raise BadRequest(f"the prompt ({len(prompt_ids)} tokens) exceeds the context size "
                         f"({num_ctx} tokens)", param=param, code=CONTEXT_LENGTH_EXCEEDED)


class Runner:
    def __init__(self, model: Model, kv: PagedKVCache, scheduler: Scheduler, tokenizer, *,
                 max_batch_tokens: int, num_ctx: int, clock: Callable[[], float] = time.monotonic):
        self.model = model
        self.kv = kv
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.max_batch_tokens = max_batch_tokens
        self.num_ctx = num_ctx
        self.clock = clock
        self.block_size = scheduler.pool.block_size
        self.slot_tokens = SlotTokens(kv.num_blocks, self.block_size)
        self.json_vocab = JsonVocab(tokenizer, model.config.n_vocab)   # built at the first JSON request
        self._seqs: dict[str, EngineSeq] = {}
        self._forks: dict[str, list[EngineSeq]] = {}    # n > 1: choice 0's id -> choices waiting for its prompt
        self._cancelled: list[str] = []         # appended to without the lock (atomic), swapped by the worker
        self._outbox: list[tuple[Callable[[Event], None], Event]] = []   # the worker's events, sent unlocked
        self._lock = threading.Lock()           # scheduler and sequence state
        self._model_lock = threading.Lock()     # one forward at a time (steps, embeddings)
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.num_steps = 0
        self.num_tokens_computed = 0
        self.num_preemptions = 0
        self.last_plan: tuple[tuple[str, int, int], ...] = ()   # (request id, first, end token) of the last step

    # ---- intake (any thread) ----

    def submit(self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams,
               on_event: Callable[[Event], None], *, priority: int = 5, model_name: str = "",
               choice_index: int = 0, waited_s: float = 0.0) -> None:
        """Queue a request; RateLimited (429) when the queue is full, BadRequest when the prompt
        does not fit the context. `waited_s`: what it already waited in the daemon's queue, which
        the engine's queue_timeout_s counts (SchedRequest.waited_s)."""
        self._queue(self._new_seq(request_id, prompt_ids, params, on_event, priority, model_name, choice_index,
                                  waited_s))

    def submit_choices(self, request_ids: Sequence[str], prompt_ids: Sequence[int], params: SamplingParams,
                       on_events: Sequence[Callable[[Event], None]], *, priority: int = 5,
                       model_name: str = "", waited_s: float = 0.0) -> None:
        """The n choices of one request: the prompt is computed once (choice 0) and forked."""
        parent, *children = [self._new_seq(request_id, prompt_ids, params, on_event, priority, model_name, index,
                                           waited_s)
                             for index, (request_id, on_event) in enumerate(zip(request_ids, on_events))]
        self._queue(parent, children)

    def _queue(self, seq: EngineSeq, children: Sequence[EngineSeq] = ()) -> None:
        with self._lock:                    # at once: the worker must not sample seq before its choices wait
            self.scheduler.add_request(seq.request, self.clock())
            self._seqs[seq.request_id] = seq
            if children:
                self._forks[seq.request_id] = list(children)
                self._seqs.update((child.request_id, child) for child in children)
            self._wake.notify()

    def _new_seq(self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams,
                 on_event: Callable[[Event], None], priority: int, model_name: str,
                 choice_index: int, waited_s: float = 0.0) -> EngineSeq:
        num_ctx = self.context_of(params)
        check_prompt(prompt_ids, num_ctx)
        # A sequence never outgrows the context nor the whole KV pool (alone it always fits).
        room = min(num_ctx, self.scheduler.pool.num_blocks * self.block_size) - len(prompt_ids)
        max_tokens = max(1, min(params.max_tokens or num_ctx, room))
        request = SchedRequest(request_id, model_name, list(prompt_ids), max_tokens, self.clock(),
                               priority=priority, stream=True, waited_s=max(0.0, waited_s))
        return EngineSeq(request, params, on_event, choice_index, self._sampler(params, choice_index),
                         _text_stream(params), num_ctx=num_ctx)

    def _sampler(self, params: SamplingParams, choice_index: int) -> Sampler:
        return Sampler(params, self.model.config.n_vocab, choice_index, self.json_vocab)

    def context_of(self, params: SamplingParams) -> int:
        """A request's context: its num_ctx (Ollama's: up to the model's trained context), else
        the runner's. The KV cache is paged: a longer one takes more blocks, not a reload."""
        if params.num_ctx is None:
            return self.num_ctx
        return min(params.num_ctx, self.model.config.context_length or params.num_ctx)

    def cancel(self, request_id: str) -> None:
        """The client went away: drop the request at the next step, freeing its blocks. No lock
        and no wake-up (the event loop must not wait for a step): a worker that sleeps has no
        sequence to cancel, and one that is busy applies it at its next step."""
        self._cancelled.append(request_id)

    @property
    def num_requests(self) -> int:
        return len(self._seqs)

    # ---- the worker thread ----

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="velollm-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        with self._model_lock:          # after an embedding in flight; on this thread (GpuModel.release)
            self.kv.release()
            self.model.release()
        for seq in list(self._seqs.values()):
            self._end(seq, "abort", error=Unavailable("the engine unloaded the model", code="engine_stopped"))
        self._send_events()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._seqs and not self._cancelled:
                    self._wake.wait()
                if self._stopping:
                    return
            try:
                if not self.step():            # nothing runnable now: do not spin
                    with self._lock:
                        self._wake.wait(0.01)
            except Exception as exc:           # a bug must not leave every client hanging
                log.exception("engine step failed")
                self._fail_all(exc)
                self._send_events()

    # ---- one step ----

    def step(self) -> bool:
        """One engine step; False when there was nothing to run."""
        try:
            return self._step()
        finally:
            self._send_events()

    def _step(self) -> bool:
        with self._lock:
            self._apply_cancels()
            plan = self._schedule()
            if not plan:
                return False
            batch = self._batch(plan)
        self._send_events()                                     # the aborts and timeouts, at once
        with self._model_lock:
            logits, hidden = self.model.run(batch, self.kv)     # (num_logits, n_vocab), (num_hidden, n_embd)
            prompt_rows = self._prompt_logprobs(plan, hidden)   # the LM head over them, a slice at a time
        with self._lock:
            self._record_written(plan, batch)
            self._after_forward(plan, logits, prompt_rows)
        self.last_plan = tuple((seq.request_id, start, end) for seq, start, end in plan)
        self.num_steps += 1
        return True

    def _apply_cancels(self) -> None:
        cancelled, self._cancelled = self._cancelled, []
        for request_id in cancelled:
            seq = self._seqs.get(request_id)
            if seq is None:
                continue                                # finished already
            if self._drop_waiting_child(seq) or self.scheduler.abort_request(request_id) is not None:
                self._end(seq, "abort")
                self._orphan_children(request_id)

    def _drop_waiting_child(self, seq: EngineSeq) -> bool:
        """A choice still waiting for its parent's prompt: it has nothing to free."""
        for children in self._forks.values():
            if seq in children:
                children.remove(seq)
                return True
        return False

    def _orphan_children(self, parent_id: str) -> None:
        """The parent left before its prompt was computed: its choices run on their own."""
        for child in self._forks.pop(parent_id, ()):
            self._queue_alone(child)

    def _queue_alone(self, seq: EngineSeq) -> None:
        try:
            self.scheduler.add_request(seq.request, self.clock())
        except VeloError as exc:                        # queue full: this choice fails alone
            self._end(seq, "error", error=exc)

    def _schedule(self) -> list[tuple[EngineSeq, int, int]]:
        """Admit what fits, then plan: (sequence, first token, end token) chunks to compute."""
        output = self.scheduler.schedule(self.clock())
        for request_id in output.timed_out:
            seq = self._seqs.get(request_id)
            if seq is not None:
                error = Unavailable(f"request {request_id} waited too long in the engine's queue",
                                    code=QUEUE_TIMEOUT)
                self._end(seq, "error", error=error)
                for child in self._forks.pop(request_id, ()):
                    self._end(child, "error", error=error)
        for request_id in output.preempted:                 # priority preemption: output dropped
            self._restart(self._seqs[request_id])
        for scheduled in output.scheduled:
            self._admitted(self._seqs[scheduled.request_id], scheduled.num_cached_tokens)
        return self._plan()

    def _admitted(self, seq: EngineSeq, num_cached: int) -> None:
        """Started (again): trust only the cached tokens this runner really wrote."""
        tokens = seq.request.all_token_ids
        table = self.scheduler.pool.block_table(seq.request_id)
        self.slot_tokens.forget(table[num_cached // self.block_size:])   # fresh from the pool
        seq.num_kept = self.slot_tokens.verified_prefix(table, tokens, num_cached)
        verified = 0 if seq.wants_prompt_rows else seq.num_kept
        seq.num_computed = verified
        if seq.request.num_preemptions == 0 or not seq.tokens:
            seq.num_cached_tokens = verified

    def _restart(self, seq: EngineSeq) -> None:
        """Preempted with its output discarded: it will start again from the prompt."""
        seq.sampler = self._sampler(seq.params, seq.choice_index)
        seq.text = _text_stream(seq.params)
        seq.tokens.clear()

    def _plan(self) -> list[tuple[EngineSeq, int, int]]:
        decodes, prefills = [], []
        for request_id in self.scheduler.running:
            seq = self._seqs[request_id]
            num_left = seq.request.num_tokens - seq.num_computed
            (decodes if num_left == 1 else prefills).append(seq)
        budget = self.max_batch_tokens
        plan = []
        for seq in decodes:
            plan.append((seq, seq.num_computed, seq.num_computed + 1))
            budget -= 1
        for seq in sorted(prefills, key=lambda s: s.request.admission_seq):
            if budget <= 0 and plan:
                break
            end = min(seq.request.num_tokens, seq.num_computed + max(budget, 1))
            plan.append((seq, seq.num_computed, end))
            budget -= end - seq.num_computed
        return plan

    def _batch(self, plan: list[tuple[EngineSeq, int, int]]) -> Batch:
        """The plan's packed batch: logits for each sequence that reaches its last token, final
        hidden states for the prompt rows whose logprobs were asked (their positions found in
        the prefix cache recomputed but kept, not written again: num_kept)."""
        token_ids, positions, tables, computed, lens, logit_rows, hidden_rows, kept = [], [], [], [], [], [], [], []
        row = 0
        for seq, start, end in plan:
            token_ids.extend(_token_slice(seq.request, start, end))
            positions.extend(range(start, end))
            tables.append(self.scheduler.pool.block_table(seq.request_id))
            computed.append(start)
            lens.append(end - start)
            hidden_rows.extend(row + position - start for position in _prompt_positions(seq, start, end))
            kept.append(seq.num_kept if seq.wants_prompt_rows else 0)
            row += end - start
            if end == seq.request.num_tokens:
                logit_rows.append(row - 1)
        return Batch.build(np.asarray(token_ids, np.int32), np.asarray(positions, np.int32),
                           lens, tables, computed, np.asarray(logit_rows, np.int64), self.block_size,
                           hidden_indices=hidden_rows, num_kept=kept if any(kept) else ())

    def _record_written(self, plan: list[tuple[EngineSeq, int, int]], batch: Batch) -> None:
        """Remember which token each written KV slot holds (the prefix-hit check); the tables are
        the batch's (the pool's, unchanged since: only this thread grows or frees them)."""
        for (seq, start, end), table in zip(plan, batch.block_tables):
            self.slot_tokens.record(table, start, _token_slice(seq.request, start, end))
            self.num_tokens_computed += end - start

    def _prompt_logprobs(self, plan: list[tuple[EngineSeq, int, int]],
                         hidden: np.ndarray) -> list[list[SampleResult]]:
        """Per planned chunk, its prompt rows' logprobs (none unless asked) from their final hidden
        states (num_hidden, n_embd): the LM head and the reduction a slice of rows at a time."""
        results, row = [], 0
        for seq, start, end in plan:
            positions = _prompt_positions(seq, start, end)
            next_ids = [seq.request.prompt_token_ids[position + 1] for position in positions]
            results.append(prompt_logprobs_of(hidden[row:row + len(positions)], next_ids,
                                              seq.params.prompt_logprobs, self.model.head) if positions else [])
            row += len(positions)
        return results

    def _after_forward(self, plan: list[tuple[EngineSeq, int, int]], logits: np.ndarray,
                       prompt_rows: list[list[SampleResult]]) -> None:
        # logits: (num_logits, n_vocab), one row per sequence that reached its last token;
        # prompt_rows: per chunk of the plan, the logprobs of its prompt positions
        choices, rows = [], []
        row = 0
        for (seq, start, end), results in zip(plan, prompt_rows):
            if results:
                _keep_prompt_logprobs(seq, _prompt_positions(seq, start, end), results)
            seq.num_computed = end
            if end != seq.request.num_tokens:
                continue                            # a chunk in the middle of the prompt
            for choice in (seq, *self._fork(seq)):  # n > 1: the choices share the parent's row
                choices.append(choice)
                rows.append(row)
            row += 1
        results = self._sample(choices, logits, rows)
        new_tokens: dict[str, list[int]] = {}
        finished: dict[str, RequestStatus] = {}
        for choice, result in zip(choices, results):
            reason = self._emit(choice, result)
            if reason is None:
                new_tokens[choice.request_id] = [result.token_id]
            else:
                finished[choice.request_id] = _STATUS[reason]
        self.scheduler.update_from_output(RunnerOutput(new_tokens, finished), self.clock())
        self._after_growth(new_tokens)
        for request_id in finished:
            self._seqs.pop(request_id, None)

    def _sample(self, choices: list[EngineSeq], logits: np.ndarray, rows: list[int]) -> list[SampleResult]:
        """Every choice's next token at once: the plain greedy ones share one argmax; only the
        choices with penalties get their token history (a copy of prompt + output)."""
        if not choices:
            return []
        histories = [c.request.all_token_ids if c.params.has_penalties else () for c in choices]
        by_choice = logits if rows == list(range(logits.shape[0])) else logits[rows]   # (len(choices), n_vocab)
        return sample_batch([c.sampler for c in choices], by_choice, histories)

    def _fork(self, parent: EngineSeq) -> list[EngineSeq]:
        """At the parent's first token: its waiting choices share its prompt's blocks from now
        on; choices beyond the free slots run on their own (they find the prompt cached)."""
        children = self._forks.pop(parent.request_id, [])
        started = self.scheduler.fork_request(parent.request_id, [c.request for c in children], self.clock())
        for child in children[len(started):]:
            self._queue_alone(child)
        children = children[:len(started)]
        for child in children:
            child.num_computed, child.num_cached_tokens = parent.num_computed, parent.num_cached_tokens
            child.prompt_logprobs = parent.prompt_logprobs
        return children

    def _after_growth(self, new_tokens: dict[str, list[int]]) -> None:
        """Copy-on-write pairs into the K/V arrays; fresh blocks forget; count preemptions."""
        pool = self.scheduler.pool
        copies = pool.pop_copies()
        if copies:
            self.kv.copy_blocks(copies)
            self.slot_tokens.copy(copies)
        for request_id in new_tokens:
            request = self.scheduler.running.get(request_id)
            if request is None:
                self.num_preemptions += 1               # no block for its token: recompute later
            elif (request.num_tokens - 1) % self.block_size == 0:
                self.slot_tokens.forget(pool.block_table(request_id)[-1:])   # its token opened a block

    def _emit(self, seq: EngineSeq, result: SampleResult) -> str | None:
        """Send the sampled token's text; the finish reason when the sequence ends here."""
        token_id = result.token_id
        if token_id in seq.params.stop_token_ids:        # end of generation (unless ignore_eos)
            seq.ended_on_eog = True
            return self._finish(seq, "stop", ())
        seq.tokens.append(token_id)
        text = seq.text.push(self.tokenizer.token_bytes(token_id, special=seq.params.writes_special(token_id)))
        logprobs = (result,) if seq.params.logprobs else ()
        if seq.text.stopped:
            return self._finish(seq, "stop", (token_id,), text, logprobs)
        if len(seq.tokens) >= seq.request.max_tokens or seq.request.num_tokens + 1 >= seq.num_ctx:
            return self._finish(seq, "length", (token_id,), text + seq.text.finish(), logprobs)
        self._outbox.append((seq.on_event, Event(
            seq.request_id, text, (token_id,), logprobs, num_prompt_tokens=len(seq.request.prompt_token_ids),
            num_cached_tokens=seq.num_cached_tokens, num_output_tokens=seq.num_output_tokens,
            prompt_logprobs=_take_prompt_logprobs(seq))))
        return None

    def _finish(self, seq: EngineSeq, reason: str, token_ids: tuple[int, ...], text: str = "",
                logprobs: tuple = ()) -> str:
        if reason == "stop" and not seq.text.stopped:
            text += seq.text.finish()
        self._send_end(seq, reason, text, token_ids, logprobs, prompt_logprobs=_take_prompt_logprobs(seq))
        return reason

    def _end(self, seq: EngineSeq, reason: str, error: Exception | None = None) -> None:
        """Ended outside a forward (cancel, timeout, failure): tell the consumer, forget it."""
        self._seqs.pop(seq.request_id, None)
        self._send_end(seq, reason, "", (), (), error)

    def _send_end(self, seq: EngineSeq, reason: str, text: str, token_ids: tuple[int, ...],
                  logprobs: tuple, error: Exception | None = None, *,
                  prompt_logprobs: tuple | None = None) -> None:
        self._outbox.append((seq.on_event, Event(
            seq.request_id, text, token_ids, logprobs, reason, error,
            num_prompt_tokens=len(seq.request.prompt_token_ids),
            num_cached_tokens=seq.num_cached_tokens, num_output_tokens=seq.num_output_tokens,
            stop_string=seq.text.stop_string, prompt_logprobs=prompt_logprobs)))

    def _send_events(self) -> None:
        """The events queued under the lock, to their consumers in order (the worker's thread,
        or the caller of step/stop, without the lock)."""
        outbox, self._outbox = self._outbox, []
        for on_event, event in outbox:
            on_event(event)

    def _fail_all(self, exc: Exception) -> None:
        with self._lock:
            self._forks.clear()
            for seq in list(self._seqs.values()):
                self.scheduler.abort_request(seq.request_id)
                self._end(seq, "error", error=exc)

    # ---- embeddings ----

    def embed(self, token_ids: Sequence[int]) -> np.ndarray:
        """Mean-pooled final hidden state, L2-normalised: (n_embd,). Uses a private KV cache."""
        pooled = self.final_hidden(token_ids).mean(axis=0)    # (n_embd,)
        norm = float(np.linalg.norm(pooled))
        return pooled / norm if norm > 0 else pooled

    def final_hidden(self, token_ids: Sequence[int]) -> np.ndarray:
        """The final normed hidden states of a prompt run alone (a private KV cache, nothing
        cached): (num_tokens, n_embd). For pooled outputs: embeddings, a reranker's last token."""
        num_tokens = len(token_ids)
        num_blocks = -(-num_tokens // self.block_size)
        batch = Batch.build(np.asarray(token_ids, np.int32), np.arange(num_tokens, dtype=np.int32),
                            [num_tokens], [list(range(num_blocks))], [0],
                            np.arange(num_tokens, dtype=np.int64), self.block_size)
        with self._model_lock:
            if self._stopping:                                 # unloaded: its memory is gone
                raise Unavailable("the engine unloaded the model", code="engine_stopped")
            kv = type(self.kv).like(self.kv, num_blocks)      # on the model's device
            try:
                hidden = self.model.hidden(batch, kv)          # (num_tokens, n_embd)
            finally:
                kv.release()                                   # on this thread, not the collector's
        return hidden


def _text_stream(params: SamplingParams) -> TextStream:
    """A sequence's text with its stop strings (none before min_tokens; the stop string kept with
    include_stop_str_in_output)."""
    return TextStream(params.stop, min_tokens=params.min_tokens, include_stop=params.include_stop_str)


def _prompt_positions(seq: EngineSeq, start: int, end: int) -> range:
    """The positions of the chunk [start, end) whose logits give a prompt token its logprob
    (each the next token's): none unless the sequence wants its prompt's rows; never the
    prompt's last position, whose row is the one sampled."""
    if not seq.wants_prompt_rows:
        return range(0)
    return range(start, min(end, len(seq.request.prompt_token_ids) - 1))


def _keep_prompt_logprobs(seq: EngineSeq, positions: range, results: list[SampleResult]) -> None:
    """The logprobs of `positions`' next tokens into the sequence's prompt logprobs; a
    recomputed position (after a preemption) is written again, equal."""
    if seq.prompt_logprobs is None:
        seq.prompt_logprobs = [None] * len(seq.request.prompt_token_ids)
    for position, result in zip(positions, results):
        seq.prompt_logprobs[position + 1] = result


def _take_prompt_logprobs(seq: EngineSeq) -> tuple[SampleResult | None, ...] | None:
    """The prompt logprobs for the sequence's first event (None after it, or when not asked)."""
    if not seq.wants_prompt_rows:
        return None
    seq.prompt_logprobs_sent = True
    return tuple(seq.prompt_logprobs or (None,) * len(seq.request.prompt_token_ids))


def _token_slice(request: SchedRequest, start: int, end: int) -> Sequence[int]:
    """request.all_token_ids[start:end] without copying the whole sequence (a decode reads one)."""
    prompt, output = request.prompt_token_ids, request.output_token_ids
    num_prompt = len(prompt)
    if end <= num_prompt:
        return prompt[start:end]
    if start >= num_prompt:
        return output[start - num_prompt:end - num_prompt]
    return [*prompt[start:], *output[:end - num_prompt]]


_STATUS = {"stop": RequestStatus.FINISHED_STOPPED, "length": RequestStatus.FINISHED_LENGTH}

