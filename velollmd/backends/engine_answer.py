"""Engine events as OpenAI answers: whole responses, stream chunks, logprobs, usage, timings.

One AnswerBuilder per request gathers the events of its `n` sequences (choice index ->
text, finish reason, logprobs) and the clock readings behind llama.cpp-style `timings`.

A stream's token chunks are made and JSON-encoded in the engine's thread (`frames`), so that
the event loop only relays them: ChunkBytes are the bytes `wirejson.dumps` would write, and
carry their chunk for whatever reads it (EngineBackend.decode_event hands it to the relay).

With `think_tags` (a template that thinks, its thinking not turned off), a chat choice's
text is split as llama-server and Ollama split it: the thinking, without its tags, is
`reasoning_content`; what follows the closing tag is `content`; a text that does not open with
the tag is all content, unless the thinking is `opened` already (JSON mode: the object comes
after the thinking, whatever comes first). A stream sends each part as it grows, holding back
what may be the start of a tag, so that its deltas add up to the whole answer's parts; each
choice's ThinkingSplit keeps where the parts are between tokens, so that a token costs the
length of its text, not that of the whole answer.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from json.encoder import encode_basestring

from ..engine.runner import Event
from ..engine.sampling import SamplingParams
from ..wire import wirejson
from ..wire.chunks import chunk_choice, chunk_head, completion_logprobs
from .engine_echo import Echo, vllm_prompt_logprobs


class ChunkBytes(bytes):
    """One chunk's compact JSON, with the chunk itself as `.chunk` (not to be changed)."""
    chunk: dict


class AnswerBuilder:
    def __init__(self, request_id: str, model: str, *, chat: bool, tokenizer, n: int = 1,
                 think_tags: tuple[str, str] | None = None, thinking_opened: bool = False,
                 context_of: Callable[[str], list[int]] | None = None, echo: Echo | None = None,
                 prompt_logprobs_field: bool = False, sampling: SamplingParams | None = None):
        """`context_of`: the answer's Ollama `context` from its (first choice's) whole text, for
        a request that asks for one; it is sent with the usage (a stream's last chunk). `echo`:
        a completion's choices start with the prompt (engine_echo.py); `prompt_logprobs_field`:
        they carry vLLM's prompt_logprobs. `sampling`: which control tokens the answer writes
        as text (SamplingParams.writes_special), for the logprobs' token texts."""
        self.sampling = sampling or SamplingParams(skip_special_tokens=False)
        self.echo, self.prompt_logprobs_field = echo, prompt_logprobs_field
        self.prompt_logprobs: tuple | None = None       # from the first event that has them
        self._echoed: set[int] = set()                   # a stream's choices that sent the prompt
        self._prompt_text_length: int | None = None
        self.request_id, self.model, self.chat, self.tokenizer = request_id, model, chat, tokenizer
        self.context_of = context_of
        self.think_tags = think_tags if chat else None
        self.thinking_opened = thinking_opened
        self.splits = [ThinkingSplit(think_tags, opened=thinking_opened) for _ in range(n)] if self.think_tags else []
        self.created = int(time.time())
        self.texts = [""] * n
        self.finish = [None] * n
        self.stop_strings: list[str | None] = [None] * n    # vLLM's choice.stop_reason (wire/stopword.py)
        self.logprobs: list[list] = [[] for _ in range(n)]
        self.num_output = [0] * n
        self.num_prompt = self.num_cached = 0
        self.started = time.monotonic()
        self.first_token_at: float | None = None
        # a token's chunk as bytes: head + index + middle + JSON string + tail (what dumps writes)
        head = wirejson.dumps(chunk_head(request_id, model, self.created, chat=chat))
        self._text_head = head[:-1] + b',"choices":[{"index":'
        self._text_middle = b',"delta":{"content":' if chat else b',"text":'
        self._text_tail = (b'}' if chat else b'') + b',"logprobs":null,"finish_reason":null}]}'

    # ---- gathering ----

    def add(self, index: int, event: Event) -> None:
        if self.prompt_logprobs is None:
            self.prompt_logprobs = event.prompt_logprobs
        self.texts[index] += event.text
        self.logprobs[index] += event.logprobs
        if event.stop_string is not None:
            self._drop_stop_logprobs(index)
        self.num_output[index] = event.num_output_tokens
        self.num_prompt, self.num_cached = event.num_prompt_tokens, event.num_cached_tokens
        if event.finish_reason is not None:
            self.finish[index], self.stop_strings[index] = event.finish_reason, event.stop_string
        if self.first_token_at is None and event.token_ids:
            self.first_token_at = time.monotonic()

    # ---- a whole answer ----

    def response(self) -> dict:
        choices = [self._choice(i) for i in range(len(self.texts))]
        return {"id": self.request_id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices,
                "usage": self.usage(), "timings": self.timings(), **self._context()}

    def _context(self) -> dict:
        return {} if self.context_of is None else {"context": self.context_of(self.texts[0])}

    def _choice(self, index: int) -> dict:
        if self.chat:
            body = {"message": self._message(self.texts[index])}
        else:
            body = {"text": self.texts[index]}
        choice = {"index": index, **body, "logprobs": self._logprobs(self.logprobs[index]),
                  "finish_reason": self.finish[index] or "stop"}
        if self.echo is not None:
            self._echo_choice(index, choice)
        if self.prompt_logprobs_field:
            choice["prompt_logprobs"] = vllm_prompt_logprobs(self.prompt_logprobs or (), self._text)
        return self._with_stop_string(index, choice)

    def _echo_choice(self, index: int, choice: dict) -> None:
        """A completion choice after its prompt: the text, and the logprobs from the prompt's."""
        generated = [] if self.echo.prompt_only else self.logprobs[index]
        choice["text"] = self.echo.text + ("" if self.echo.prompt_only else self.texts[index])
        if self.echo.with_logprobs:
            choice["logprobs"] = self._echo_logprobs(self._prompt_entries(), generated, 0)
        if self.echo.prompt_only:
            choice["finish_reason"] = "length"

    def _prompt_entries(self) -> list[dict]:
        """The prompt's tokens as logprob entries (the first one's logprob null)."""
        return [{"token": self._text(r.token_id), "logprob": r.logprob,
                 "top_logprobs": [self._token_logprob(t, lp) for t, lp in r.top_logprobs]}
                if r is not None else {"token": self._text(token_id), "logprob": None, "top_logprobs": None}
                for r, token_id in zip(self.prompt_logprobs or (), self.echo.token_ids)]

    def _echo_logprobs(self, prompt_entries: list[dict], generated: list, offset: int) -> dict:
        """A completion's logprobs over the prompt's entries then the generated tokens', as
        vLLM writes them: a token without logprob has null top_logprobs too."""
        content = prompt_entries + [self._token_logprob(r.token_id, r.logprob,
                                                        [self._token_logprob(t, lp) for t, lp in r.top_logprobs])
                                    for r in generated]
        logprobs = completion_logprobs(content, offset)
        logprobs["top_logprobs"] = [top if entry["logprob"] is not None else None
                                    for top, entry in zip(logprobs["top_logprobs"], content)]
        return logprobs

    def _message(self, text: str) -> dict:
        if self.think_tags is None:
            return {"role": "assistant", "content": text}
        reasoning, content = split_thinking(text, self.think_tags, final=True, opened=self.thinking_opened)
        return {"role": "assistant", "content": content, **({"reasoning_content": reasoning} if reasoning else {})}

    # ---- a stream ----

    def first_chunks(self) -> list[dict]:
        if not self.chat:
            return []
        return [self._chunk(i, {"role": "assistant", "content": ""}) for i in range(len(self.texts))]

    def chunks(self, index: int, event: Event) -> list[dict]:
        num_logprobs = len(self.logprobs[index])
        self.add(index, event)
        logprobs = self.logprobs[index][num_logprobs:]      # the event's, less a stop string's
        if self.echo is not None:
            return self._echo_chunks(index, event, logprobs)
        chunks = []
        delta = self._delta(index, event) if self.chat else event.text     # empty: no new text
        if delta or logprobs:
            chunk = self._chunk(index, delta or ({"content": ""} if self.chat else ""))
            offset = len(self.texts[index]) - len(event.text)        # (add() appended the text)
            chunk["choices"][0]["logprobs"] = self._logprobs(logprobs, offset)
            chunks.append(chunk)
        if event.finish_reason is not None:
            chunk = self._chunk(index, {} if self.chat else "", event.finish_reason)
            self._with_stop_string(index, chunk["choices"][0])
            chunks.append(chunk)
        return chunks

    def _echo_chunks(self, index: int, event: Event, logprobs: list) -> list[dict]:
        """A stream's chunks with the prompt echoed: its text (and its tokens' logprobs) before
        the first generated text, as vLLM streams it; the prompt alone ends with "length"."""
        prompt_only, first = self.echo.prompt_only, index not in self._echoed
        self._echoed.add(index)
        text, generated = ("", []) if prompt_only else (event.text, logprobs)
        prompt_entries = self._prompt_entries() if first and self.echo.with_logprobs else []
        chunks = []
        if first or text or generated:
            chunk = self._chunk(index, (self.echo.text if first else "") + text)
            if self.echo.with_logprobs:
                offset = 0 if first else self._prompt_length() + len(self.texts[index]) - len(event.text)
                chunk["choices"][0]["logprobs"] = self._echo_logprobs(prompt_entries, generated, offset)
            chunks.append(chunk)
        if event.finish_reason is not None:
            reason = "length" if prompt_only else event.finish_reason
            chunk = self._chunk(index, "", reason)
            if not prompt_only:
                self._with_stop_string(index, chunk["choices"][0])
            chunks.append(chunk)
        return chunks

    def _prompt_length(self) -> int:
        """Where the generated tokens' text_offset starts: after the prompt tokens' texts."""
        if self._prompt_text_length is None:
            self._prompt_text_length = sum(len(self._text(token_id)) for token_id in self.echo.token_ids)
        return self._prompt_text_length

    def _delta(self, index: int, event: Event) -> dict:
        """A chat chunk's delta for the event's text (add() has appended it): its content, or,
        split from the thinking, the parts grown since the last chunk."""
        if self.think_tags is None:
            return {"content": event.text} if event.text else {}
        reasoning, content = self.splits[index].grown(self.texts[index], final=event.finish_reason is not None)
        delta = {"reasoning_content": reasoning, "content": content}
        return {key: text for key, text in delta.items() if text}

    def _drop_stop_logprobs(self, index: int) -> None:
        """Only the logprobs of tokens that start within the text: those of the stop string
        that ended it, cut from the text, dropped as llama-server drops them."""
        kept, offset, length = [], 0, len(self.texts[index])
        for result in self.logprobs[index]:
            if offset >= length:
                break
            kept.append(result)
            offset += len(self._written(result.token_id))
        self.logprobs[index] = kept

    def _with_stop_string(self, index: int, choice: dict) -> dict:
        """`choice` naming the stop string that ended it, as vLLM does (`stop_reason`)."""
        if self.stop_strings[index] is not None:
            choice["stop_reason"] = self.stop_strings[index]
        return choice

    def frames(self, index: int, event: Event) -> list[ChunkBytes]:
        """`chunks` as ChunkBytes. Called in the engine's thread, in order, once per event; an
        event with an error makes none (the stream raises it instead)."""
        if event.error is not None:
            return []
        frames = []
        for chunk in self.chunks(index, event):
            frame = ChunkBytes(self._encode(index, chunk))
            frame.chunk = chunk
            frames.append(frame)
        return frames

    def _encode(self, index: int, chunk: dict) -> bytes:
        """wirejson.dumps(chunk); a plain token's chunk from the template (20x cheaper)."""
        choice = chunk["choices"][0]
        if choice["logprobs"] is None and choice["finish_reason"] is None and (
                not self.chat or choice["delta"].keys() == {"content"}):
            text = choice["delta"]["content"] if self.chat else choice["text"]
            try:
                return b"%s%d%s%s%s" % (self._text_head, index, self._text_middle,
                                        encode_basestring(text).encode(), self._text_tail)
            except UnicodeEncodeError:          # a lone surrogate: dumps escapes it
                pass
        return wirejson.dumps(chunk)

    def usage_chunk(self) -> dict:
        return {**chunk_head(self.request_id, self.model, self.created, chat=self.chat), "choices": [],
                "usage": self.usage(), "timings": self.timings(), **self._context()}

    def _chunk(self, index: int, delta, finish_reason: str | None = None) -> dict:
        choice = chunk_choice(delta, finish_reason, chat=self.chat)
        choice["index"] = index
        return {**chunk_head(self.request_id, self.model, self.created, chat=self.chat), "choices": [choice]}

    # ---- accounting ----

    def usage(self) -> dict:
        completion = 0 if self.echo is not None and self.echo.prompt_only else sum(self.num_output)
        return {"prompt_tokens": self.num_prompt, "completion_tokens": completion,
                "total_tokens": self.num_prompt + completion,
                "prompt_tokens_details": {"cached_tokens": self.num_cached}}

    def timings(self) -> dict:
        """llama.cpp's names: prompt (until the first token) and predicted (the rest)."""
        now = time.monotonic()
        first = self.first_token_at or now
        prompt_ms, predicted_ms = (first - self.started) * 1e3, (now - first) * 1e3
        predicted_n = sum(self.num_output)
        return {"cache_n": self.num_cached, "prompt_n": self.num_prompt - self.num_cached,
                "prompt_ms": round(prompt_ms, 3), "predicted_n": predicted_n,
                "predicted_ms": round(predicted_ms, 3),
                "predicted_per_second": round(predicted_n / (predicted_ms / 1e3), 2) if predicted_ms > 0 else None}

    def _logprobs(self, results: list, offset: int = 0) -> dict | None:
        """A chat's `content` entries; a completion's tokens, token_logprobs, top_logprobs
        and text_offset (`offset`: where the first token starts in the choice's text)."""
        if not results:
            return None
        content = [self._token_logprob(r.token_id, r.logprob, [self._token_logprob(t, lp) for t, lp in r.top_logprobs])
                   for r in results]
        return {"content": content} if self.chat else completion_logprobs(content, offset)

    def _token_logprob(self, token_id: int, logprob: float, top: list | None = None) -> dict:
        """A sampled token's entry (with its `top` list) gives the text the answer got from it; an
        alternative's, a control token's text only when all are written (llama-server's
        populate_token_probs: its --special alone), so a hidden or preserved one is ""."""
        written = self.sampling.writes_special(token_id) if top is not None else not self.sampling.skip_special_tokens
        data = self.tokenizer.token_bytes(token_id, special=written)
        entry = {"token": data.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(data)}
        if top is not None:
            entry["top_logprobs"] = top
        return entry

    def _text(self, token_id: int) -> str:
        return self.tokenizer.token_bytes(token_id).decode("utf-8", "replace")

    def _written(self, token_id: int) -> str:
        """A sampled token's text as the answer wrote it (a control token's maybe not)."""
        special = self.sampling.writes_special(token_id)
        return self.tokenizer.token_bytes(token_id, special=special).decode("utf-8", "replace")


def split_thinking(text: str, tags: tuple[str, str], *, final: bool, opened: bool = True) -> tuple[str, str]:
    """(reasoning, content) of a thinking model's text: the thinking between the tags (the
    opening one may be left out when the thinking is `opened`: by the prompt, or JSON mode),
    stripped, and the answer after the closing tag; a text that does not open with the tag,
    the thinking not `opened`, is all content. Not `final` (a stream's text so far): a possible
    start of a tag is held back, and so is trailing whitespace, so each result is a prefix of
    the final one."""
    return ThinkingSplit(tags, opened=opened).grown(text, final=final)


class ThinkingSplit:
    """split_thinking of one choice's text as it grows: `grown` gives what each part gained
    since the last call, and the split's progress (where the thinking starts, how far the
    closing tag was looked for, where each part's stripped text begins and ends) is kept
    between calls, so each one reads only the text added since the last (and a tag's length
    before it) however long the answer."""

    def __init__(self, tags: tuple[str, str], *, opened: bool):
        self.start, self.end = tags
        self.opened = opened
        self.body_at: int | None = None         # where the thinking starts (None: not known yet)
        self.answer_at: int | None = None       # where the answer starts (after the closing tag)
        self.scanned = 0                        # the thinking is read up to here
        self.reasoning_span: tuple[int, int] | None = None   # its text less the outer whitespace
        self.reasoning_sent = 0
        self.content_at: int | None = None      # where the answer's text starts (its whitespace skipped)
        self.content_sent = 0

    def grown(self, text: str, *, final: bool) -> tuple[str, str]:
        """(reasoning, content) added since the last call, `text` being the last one's grown."""
        if self.body_at is None and self.answer_at is None and not self._opening(text, final):
            return "", ""
        reasoning = self._thinking(text, final) if self.answer_at is None else ""
        return reasoning, self._answer(text) if self.answer_at is not None else ""

    def _opening(self, text: str, final: bool) -> bool:
        """Whether the text has shown how it opens (with the tag, or not); a text of whitespace or
        of the tag's start, not final, has not."""
        body = text.lstrip()
        lead = len(text) - len(body)
        if body.startswith(self.start):
            self.body_at = lead + len(self.start)
        elif not final and self.start.startswith(body):
            return False                                 # the opening tag may still be coming
        elif not self.opened:
            self.answer_at = self.content_at = 0         # it answered without thinking: all content
        else:
            self.body_at = lead
        self.scanned = self.body_at or 0
        return True

    def _thinking(self, text: str, final: bool) -> str:
        """The reasoning added: up to the closing tag once written, else (not final) short of a
        possible start of it and of trailing whitespace."""
        at = text.find(self.end, self.scanned)           # before it: no tag, nor the start of one
        if at >= 0:
            stop, self.answer_at = at, at + len(self.end)
        elif final:
            stop = len(text)
        else:
            stop = len(text) - _tag_start_at_end(text[max(self.body_at, len(text) - len(self.end) + 1):], self.end)
        piece = text[self.scanned:stop]
        kept = piece.rstrip()
        if kept:
            first = self.reasoning_span[0] if self.reasoning_span else self.scanned + len(piece) - len(piece.lstrip())
            self.reasoning_span = (first, self.scanned + len(kept))
        self.scanned = max(self.scanned, stop)
        if self.reasoning_span is None:
            return ""
        first, last = self.reasoning_span
        added, self.reasoning_sent = text[max(first, self.reasoning_sent):last], max(last, self.reasoning_sent)
        return added

    def _answer(self, text: str) -> str:
        """The content added: everything after the closing tag but its leading whitespace."""
        if self.content_at is None:
            rest = text[max(self.answer_at, self.content_sent):]
            if not rest.strip():
                self.content_sent = len(text)                # whitespace so far: skipped
                return ""
            self.content_at = len(text) - len(rest.lstrip())
        added = text[max(self.content_at, self.content_sent):]
        self.content_sent = len(text)
        return added


def _tag_start_at_end(text: str, tag: str) -> int:
    """The length of the longest end of `text` that starts `tag` (0: none)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


def rerank_answer(model: str, scores: list[float], num_tokens: int, top_n: int | None) -> dict:
    """llama-server's rerank answer: each document's score, best first, the top_n kept."""
    ranked = sorted(range(len(scores)), key=lambda index: scores[index], reverse=True)[:top_n]
    return {"model": model, "object": "list", "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens},
            "results": [{"index": index, "relevance_score": scores[index]} for index in ranked]}


def embeddings_answer(model: str, vectors: list, num_tokens: int) -> dict:
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": [float(x) for x in vector]}
                     for i, vector in enumerate(vectors)],
            "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens}}
