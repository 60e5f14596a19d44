"""The engine's stream path: token chunks encoded in the engine's thread (byte for byte what
wirejson writes), events taken from a request's inbox in batches, errors after what preceded."""
from __future__ import annotations

import asyncio

import pytest

from velollmd.backends.engine import EngineBackend, _Run
from velollmd.backends.engine_answer import AnswerBuilder, ChunkBytes
from velollmd.config import config_from_table
from velollmd.engine.runner import Event
from velollmd.engine.sampling import SampleResult
from velollmd.errors import BackendError, Unavailable
from velollmd.wire import wirejson


class _Bytes:
    """A tokenizer stand-in: every id is the letter 'a' + id (no control tokens)."""

    def token_bytes(self, token_id: int, *, special: bool = True) -> bytes:
        return bytes([ord("a") + token_id % 26])


TEXTS = ["hello", " ", "", 'quote " and \\ backslash', "tab\tnew\nline\r\x00\x1f", "é ü ß", "日本語",
         "\U0001F600", "\u2028\u2029", "</s>", "\ufffd"]


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("model", ["tiny", 'we"ird/model:7b', "modèle"])
def test_token_chunks_are_the_bytes_wirejson_writes(chat, model):
    builder = AnswerBuilder("chatcmpl-abc", model, chat=chat, tokenizer=_Bytes(), n=3)
    for index in (0, 2):
        for number, text in enumerate(TEXTS, 1):
            frames = builder.frames(index, Event("r", text, (1,), num_output_tokens=number))
            for frame in frames:
                assert type(frame) is ChunkBytes and frame == wirejson.dumps(frame.chunk)
            assert [f.chunk["choices"][0]["index"] for f in frames] == ([index] if text else [])


@pytest.mark.parametrize("chat", [True, False])
def test_finish_and_logprob_chunks_are_encoded_too(chat):
    builder = AnswerBuilder("cmpl-abc", "tiny", chat=chat, tokenizer=_Bytes())
    with_logprobs = Event("r", "b", (1,), (SampleResult(1, -0.5, ((1, -0.5), (2, -1.5))),), num_output_tokens=1)
    last = Event("r", "c", (2,), finish_reason="length", num_output_tokens=2)
    frames = builder.frames(0, with_logprobs) + builder.frames(0, last)
    assert [f == wirejson.dumps(f.chunk) for f in frames] == [True] * 3
    assert frames[0].chunk["choices"][0]["logprobs"] is not None
    assert frames[-1].chunk["choices"][0]["finish_reason"] == "length"


def test_an_event_with_an_error_makes_no_chunk():
    builder = AnswerBuilder("chatcmpl-abc", "tiny", chat=True, tokenizer=_Bytes())
    assert builder.frames(0, Event("r", finish_reason="error", error=RuntimeError("boom"))) == []


def test_the_backend_reads_its_own_chunks_without_parsing_and_parses_other_bytes(tmp_path):
    table = {"backends": [{"name": "e", "kind": "engine", "models_dir": str(tmp_path), "ollama_store": False}]}
    backend = EngineBackend(config_from_table(table).backends[0])
    frame = AnswerBuilder("chatcmpl-abc", "tiny", chat=True, tokenizer=_Bytes()).frames(0, Event("r", "hi", (1,)))[0]
    assert backend.decode_event(frame) is frame.chunk
    assert backend.decode_event(b'{"choices":[]}') == {"choices": []}
    with pytest.raises(BackendError):
        backend.decode_event(b'{"error":"x"}')


def _run_with(num_choices: int) -> _Run:
    run = _Run(None, None, None, [], None)
    run.ids = [f"r{i}" for i in range(num_choices)]
    return run


async def _collect(run: _Run, feed) -> tuple[list, Exception | None]:
    batches = run._batches()
    got, error = [], None
    try:
        async for batch in batches:
            got.append([(index, event.text) for index, event, _ in batch])
            feed(len(got))
    except Exception as exc:
        error = exc
    return got, error


def test_events_waiting_together_come_as_one_batch_until_every_choice_ends():
    async def scenario():
        run = _run_with(2)
        for item in [(0, Event("r0", "a"), None), (1, Event("r1", "b"), None), (0, Event("r0", "c"), None)]:
            run.inbox.put_nowait(item)

        def feed(num_batches: int) -> None:
            if num_batches == 1:        # the next batch arrives after the first was taken
                run.inbox.put_nowait((0, Event("r0", "d", finish_reason="stop"), None))
                run.inbox.put_nowait((1, Event("r1", "e", finish_reason="stop"), None))
        return await _collect(run, feed)
    got, error = asyncio.run(scenario())
    assert error is None
    assert got == [[(0, "a"), (1, "b"), (0, "c")], [(0, "d"), (1, "e")]]


def test_an_engine_error_is_raised_after_the_events_before_it():
    async def scenario():
        run = _run_with(1)
        for item in [(0, Event("r0", "a"), None),
                     (0, Event("r0", finish_reason="error", error=ValueError("bad")), None)]:
            run.inbox.put_nowait(item)
        return await _collect(run, lambda _: None)
    got, error = asyncio.run(scenario())
    assert got == [[(0, "a")]]
    assert isinstance(error, Unavailable) and error.code == "engine_error" and "ValueError: bad" in error.message


def test_a_waiting_take_wakes_on_the_next_put():
    async def scenario():
        run = _run_with(1)
        taking = asyncio.ensure_future(run.inbox.take())
        await asyncio.sleep(0)
        assert not taking.done()
        run.inbox.put_nowait((0, Event("r0", "x"), None))
        run.inbox.put_nowait((0, Event("r0", "y"), None))
        return [event.text for _, event, _ in await asyncio.wait_for(taking, 30)]
    assert asyncio.run(scenario()) == ["x", "y"]
