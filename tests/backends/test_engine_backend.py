"""The engine backend's model life cycle: load on first use, keep-alive, the loaded-model cap."""
from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from tests.engine.test_store import rewrite_in_place
from tests.rig.llama import make_tiny_model
from velollmd.backends.engine import EngineBackend
from velollmd.config import config_from_table
from velollmd.errors import NotFound, Unavailable
from velollmd.wire.request import GenerateRequest


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lifecycle")
    for name, seed in (("one", 0), ("two", 1), ("three", 2)):
        make_tiny_model(folder / f"{name}.gguf", seed=seed)
    (folder / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    return folder


def engine(models_dir, **extra) -> EngineBackend:
    table = {"backends": [{"name": "e", "kind": "engine", "models_dir": str(models_dir),
                           "ollama_store": False, "num_ctx": 256, **extra}]}
    return EngineBackend(config_from_table(table).backends[0])


def chat(model: str) -> GenerateRequest:
    return GenerateRequest("chat", {"model": model, "max_tokens": 3, "temperature": 0,
                                    "messages": [{"role": "user", "content": "hi"}]})


def run(coro):
    return asyncio.run(coro)


def test_models_load_on_first_use_and_the_cap_unloads_the_least_recent(models_dir):
    async def scenario():
        backend = engine(models_dir, max_loaded_models=2)
        try:
            assert await backend.refresh()
            assert sorted(m.id for m in backend.models) == ["one", "three", "two"]
            assert backend.loaded == {}
            await backend.chat(chat("one"))
            await backend.chat(chat("two"))
            await backend.chat(chat("one"))             # one is now the most recent
            await backend.chat(chat("three"))           # over the cap: two goes
            return list(backend.loaded)
        finally:
            await backend.close()
    assert run(scenario()) == ["one", "three"]


def test_a_model_loaded_over_the_cap_while_the_others_were_busy_goes_back_to_the_cap(models_dir):
    """max_loaded_models 1 and a request for another model while the loaded one streams: both
    serve (the busy one cannot go), and once the first is idle the cap holds again, least
    recently used unloaded, without waiting for keep_alive_s."""
    async def scenario():
        backend = engine(models_dir, max_loaded_models=1)
        try:
            await backend.refresh()
            request = chat("one")
            request.body.update(max_tokens=200, stream=True)
            stream = backend.chat_stream(request)
            for _ in range(3):
                await anext(stream)
            await backend.chat(chat("two"))
            both = list(backend.loaded)
            runner = backend.loaded["one"].runner
            await stream.aclose()
            await wait_until(lambda: runner.num_requests == 0)
            await backend.refresh()
            return both, list(backend.loaded)
        finally:
            await backend.close()
    both, after = run(scenario())
    assert both == ["one", "two"] and after == ["two"]


def test_idle_models_unload_after_keep_alive(models_dir):
    async def scenario():
        backend = engine(models_dir, keep_alive_s=60)
        try:
            await backend.refresh()
            await backend.chat(chat("one"))
            backend.loaded["one"].last_used -= 30
            await backend.refresh()                     # idle 30 s < 60 s: kept
            kept = list(backend.loaded)
            backend.loaded["one"].last_used -= 60
            await backend.refresh()                     # idle 90 s: unloaded
            return kept, list(backend.loaded), backend.loaded_models
        finally:
            await backend.close()
    kept, after, loaded_models = run(scenario())
    assert kept == ["one"] and after == [] and loaded_models == frozenset()


def test_keep_alive_zero_unloads_the_model_once_its_request_ends(models_dir):
    """Ollama's keep_alive 0 on a request: the answer comes whole, then the model goes at once
    (not at the next catalogue refresh); another model's request leaves it loaded."""
    async def scenario():
        backend = engine(models_dir, max_loaded_models=2)
        try:
            await backend.refresh()
            await backend.chat(chat("two"))
            backend.keep_model("one", 0)
            answer = await backend.chat(ollama_chat("one"))
            after_answer = list(backend.loaded)
            request = ollama_chat("one")
            request.body["stream"] = True
            chunks = [chunk async for chunk in backend.chat_stream(request)]
            return answer, after_answer, chunks, list(backend.loaded)
        finally:
            await backend.close()
    answer, after_answer, chunks, after_stream = run(scenario())
    assert answer["usage"]["completion_tokens"] == 3 and after_answer == ["two"]
    assert chunks[-1]["usage"]["completion_tokens"] == 3 and after_stream == ["two"]


def ollama_chat(model: str) -> GenerateRequest:
    """A chat as the Ollama routes send it: its keep_alive already given (keep_model)."""
    request = chat(model)
    request.keeps_model = True
    return request


def test_a_keep_alive_0_holds_for_its_own_request_only(models_dir):
    """Ollama: each request sets how long its model stays, the default when it says none. After
    an Ollama request with keep_alive 0, a request of another API (OpenAI, Anthropic: no
    keep_alive) keeps the model loaded, where it used to unload it after every answer."""
    async def scenario():
        backend = engine(models_dir, max_loaded_models=2)
        try:
            await backend.refresh()
            backend.keep_model("one", 0)
            await backend.chat(ollama_chat("one"))
            after_ollama = list(backend.loaded)
            await backend.chat(chat("one"))
            return after_ollama, list(backend.loaded), backend.loaded_until()
        finally:
            await backend.close()
    after_ollama, after_openai, until = run(scenario())
    assert after_ollama == [] and after_openai == ["one"]
    assert until["one"] > time.time() + 60                         # the configured keep_alive_s (5 min)


def test_a_model_file_replaced_or_removed_is_let_go_at_the_next_refresh(tmp_path):
    """`ollama pull` of a newer version, or a GGUF copied over the old one: once idle, the old
    weights are unloaded and the next request loads the new file; a removed file is unloaded
    and its name is a 404."""
    folder = tmp_path / "models"
    folder.mkdir()
    make_tiny_model(folder / "swap.gguf", seed=0)
    make_tiny_model(folder / "other.gguf", seed=1)

    async def scenario():
        backend = engine(folder, max_loaded_models=2)
        try:
            await backend.refresh()
            before = await backend.chat(chat("swap"))
            other = await backend.chat(chat("other"))
            (folder / "swap.gguf").write_bytes((folder / "other.gguf").read_bytes())
            os.utime(folder / "swap.gguf", (time.time() + 10, time.time() + 10))
            await backend.refresh()
            after = await backend.chat(chat("swap"))
            (folder / "swap.gguf").unlink()
            await backend.refresh()
            loaded = list(backend.loaded)
            with pytest.raises(NotFound):
                await backend.chat(chat("swap"))
            return before, other, after, loaded
        finally:
            await backend.close()
    before, other, after, loaded = run(scenario())
    text = [answer["choices"][0]["message"]["content"] for answer in (before, other, after)]
    assert text[0] != text[1] and text[2] == text[1]
    assert loaded == ["other"]


def test_a_model_added_while_running_serves_at_once(tmp_path):
    """A GGUF copied in (or an `ollama pull`) after the last catalogue scan: its first request
    finds it, rather than a 404 until the next health check."""
    folder = tmp_path / "models"
    folder.mkdir()
    make_tiny_model(folder / "first.gguf")

    async def scenario():
        backend = engine(folder)
        try:
            await backend.refresh()
            make_tiny_model(folder / "added.gguf", seed=3)
            answer = await backend.chat(chat("added"))
            return answer, sorted(m.id for m in backend.models)
        finally:
            await backend.close()
    answer, listed = run(scenario())
    assert answer["usage"]["completion_tokens"] == 3 and listed == ["added", "first"]


def test_a_gguf_corrupted_in_place_keeping_size_and_mtime_is_unavailable_at_the_next_listing(tmp_path):
    """A good GGUF rewritten in place (same size, its mtime set back to the nanosecond) into
    a corrupt one: the listing's cheap check sees it, the file is probed again, and the model
    is unavailable with the reason (not served from the old probe and loaded weights)."""
    folder = tmp_path / "models"
    folder.mkdir()
    path = make_tiny_model(folder / "flip.gguf")

    async def scenario():
        backend = engine(folder)
        try:
            await backend.refresh()
            answer = await backend.chat(chat("flip"))
            rewrite_in_place(path, b"XXXX" + path.read_bytes()[4:])     # the magic gone
            await backend.freshen()
            with pytest.raises(Unavailable) as asked:
                await backend.chat(chat("flip"))
            return answer, [m.id for m in backend.models], backend.unavailable, list(backend.loaded), asked.value
        finally:
            await backend.close()
    answer, listed, unavailable, loaded, error = run(scenario())
    assert answer["usage"]["completion_tokens"] == 3
    assert listed == [] and loaded == [] and str(path) in unavailable["flip"]
    assert error.status == 503 and error.code == "model_unavailable" and unavailable["flip"] in error.message


def test_a_file_touched_again_and_again_leaves_one_probe_and_a_busy_model_keeps_its_own(tmp_path):
    """Each touch or rewrite of a GGUF is a new identity (inode, mtime, ctime): the probe table
    holds the files listed now, one entry each, not one per version ever seen. A model loaded
    from a version no longer listed (removed while a request runs on it) keeps its own probe:
    its listing in /api/ps, its context and its thinking answer as before."""
    folder = tmp_path / "models"
    folder.mkdir()
    path, other = make_tiny_model(folder / "touched.gguf"), make_tiny_model(folder / "other.gguf", seed=1)

    def seen(backend):
        info = backend.loaded_model_info("touched")
        return (info and (info.id, info.details), backend.context_size("touched"), backend.thinks("touched"))

    async def scenario():
        backend = engine(folder, num_ctx=4096)          # ~4000 tokens to go: seconds of work
        try:
            await backend.refresh()
            first = dict(backend._probed)
            for step in range(1, 21):
                os.utime(path, ns=(step * 10**9, step * 10**9))
                await backend.freshen()
            touched = dict(backend._probed)
            stream = backend.completion_stream(GenerateRequest("completion", {
                "model": "touched", "prompt": "the sun", "max_tokens": 4000, "temperature": 0, "stream": True}))
            await stream.__anext__()                    # running on it
            before = seen(backend)
            path.unlink()
            await backend.freshen()
            during = dict(backend._probed), list(backend.loaded), seen(backend)
            await stream.aclose()
            return first, touched, before, during
        finally:
            await backend.close()
    first, touched, before, (probed, loaded, after) = run(scenario())
    assert len(first) == 2 and set(first) != set(touched)
    assert sorted(identity.split(":")[0] for identity in touched) == sorted([str(other), str(path)])
    assert list(probed) == [i for i in touched if i.startswith(str(other) + ":")]
    assert loaded == ["touched"] and after == before
    assert before[0][0] == "touched" and before[0][1]["family"] == "llama" and before[0][1]["quantization_level"]
    assert before[1] > 0 and before[2] is False


class HeldScans(EngineBackend):
    """The engine with its scans counted, each held in its thread, once it has read the
    folder, until `go` is set."""
    num_scans = 0

    def __init__(self, config):
        super().__init__(config)
        self.go = threading.Event()
        self.go.set()

    def _scan(self):
        self.num_scans += 1
        found = super()._scan()
        self.go.wait(60)                   # the deadline only bounds a hang
        return found


def test_listings_rescan_only_on_a_change_and_share_one_scan_off_the_loop(tmp_path):
    """Nothing changed: no rescan. A file added: the listings asking together share one scan,
    which runs in a thread while the loop goes on; those asking while it runs share the one
    after it, which sees a file added meanwhile."""
    folder = tmp_path / "models"
    folder.mkdir()
    make_tiny_model(folder / "first.gguf")

    async def scenario():
        backend = HeldScans(engine(folder).config)
        try:
            await backend.refresh()
            await asyncio.gather(backend.freshen(), backend.freshen())
            num_unchanged = backend.num_scans
            make_tiny_model(folder / "second.gguf", seed=1)
            backend.go.clear()
            together = [asyncio.ensure_future(backend.freshen()) for _ in range(5)]
            while backend.num_scans == num_unchanged:      # the loop turns while the scan is held
                await asyncio.sleep(0.01)
            make_tiny_model(folder / "third.gguf", seed=2)
            meanwhile = [asyncio.ensure_future(backend.freshen()) for _ in range(3)]
            await asyncio.sleep(0)                         # they ask
            num_waiting = sum(not f.done() for f in together + meanwhile)
            backend.go.set()
            await asyncio.gather(*together, *meanwhile)
            return num_unchanged, num_waiting, backend.num_scans, sorted(m.id for m in backend.models)
        finally:
            await backend.close()
    assert run(scenario()) == (1, 8, 3, ["first", "second", "third"])


def test_a_model_unloaded_as_its_load_ends_is_loaded_again_for_the_waiting_request(models_dir):
    """An unload (keep_alive 0 from another client, the cap, a refresh) that lands between the
    end of a load and the wake-up of the request waiting for it: the request must not be
    handed the stopped runner (it would wait forever), it gets the model loaded again."""
    async def scenario():
        backend = engine(models_dir)
        try:
            await backend.refresh()
            waiting = asyncio.ensure_future(backend.chat(chat("one")))
            while "one" not in backend.loaded:
                await asyncio.sleep(0)
            await backend.unload_model("one")   # no await inside: unloads before any other task runs
            answer = await asyncio.wait_for(waiting, 60)       # the deadline only bounds a hang
            return answer, list(backend.loaded)
        finally:
            await backend.close()
    answer, loaded = run(scenario())
    assert answer["usage"]["completion_tokens"] == 3 and loaded == ["one"]


def test_unknown_and_unusable_models(models_dir):
    async def scenario():
        backend = engine(models_dir)
        try:
            await backend.refresh()
            with pytest.raises(NotFound):
                await backend.chat(chat("nope"))
            with pytest.raises(Unavailable) as info:
                await backend.chat(chat("bad"))
            return info.value, backend.status()["engine"]["unavailable"]
        finally:
            await backend.close()
    error, unavailable = run(scenario())
    assert error.status == 503 and error.code == "model_unavailable"
    assert str(models_dir / "bad.gguf") in error.message and "bad" in unavailable


def wait_until(condition, timeout_s: float = 30.0):
    """Poll (the engine's worker thread acts on its own); the deadline only bounds a hang."""
    async def waiting():
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, "condition never held"
            await asyncio.sleep(0.01)
    return waiting()


def test_a_client_that_goes_away_cancels_its_request_and_frees_its_blocks(models_dir):
    async def scenario():
        backend = engine(models_dir)
        try:
            await backend.refresh()
            request = chat("one")
            request.body.update(max_tokens=200, stream=True)
            stream = backend.chat_stream(request)
            chunks = [await anext(stream) for _ in range(3)]       # role, then tokens are flowing
            await stream.aclose()                                  # the client is gone
            runner = backend.loaded["one"].runner
            pool = runner.scheduler.pool
            await wait_until(lambda: runner.num_requests == 0 and len(pool) == 0)
            return chunks, runner.num_tokens_computed, pool.num_free_blocks, pool.num_blocks
        finally:
            await backend.close()
    chunks, num_computed, num_free, num_blocks = run(scenario())
    assert chunks[-1]["choices"][0]["delta"].get("content")
    assert num_computed < 200 and num_free == num_blocks


def test_n_choices_compute_the_prompt_once_and_equal_seed_plus_i(models_dir):
    def sampled(n: int, seed: int) -> GenerateRequest:
        request = chat("two")
        request.body.update(n=n, seed=seed, temperature=0.9, max_tokens=8)
        return request

    async def scenario():
        backend = engine(models_dir)
        try:
            await backend.refresh()
            await backend.model("two")
            runner = backend.loaded["two"].runner
            together = await backend.chat(sampled(3, 7))
            computed_together = runner.num_tokens_computed
            pool = runner.scheduler.pool
            idle = (runner.num_requests, len(pool), pool.num_free_blocks == pool.num_blocks)
            alone = [await backend.chat(sampled(1, 7 + i)) for i in range(3)]
            return together, computed_together, idle, alone
        finally:
            await backend.close()
    together, computed_together, idle, alone = run(scenario())
    num_prompt = together["usage"]["prompt_tokens"]
    assert computed_together == num_prompt + 3 * 7          # the prompt once, then 7 decodes each
    assert [c["message"]["content"] for c in together["choices"]] == \
        [a["choices"][0]["message"]["content"] for a in alone]
    assert together["usage"]["completion_tokens"] == 24
    assert idle == (0, 0, True)


def test_repeat_last_n_minus_one_looks_back_over_the_context_num_ctx_asks(models_dir):
    """Ollama's repeat_last_n -1 is the whole context: the request's num_ctx where it sets one
    (it was the configured context, 256, whatever num_ctx asked)."""
    from velollmd.api.ollama import _whole_context_penalty

    async def scenario():
        backend = engine(models_dir)
        try:
            await backend.refresh()
            asked, default = {"repeat_last_n": -1, "num_ctx": 1024}, {"repeat_last_n": -1}
            _whole_context_penalty(asked, backend, "one")
            _whole_context_penalty(default, backend, "one")
            return asked["repeat_last_n"], default["repeat_last_n"]
        finally:
            await backend.close()
    assert run(scenario()) == (1024, 256)
