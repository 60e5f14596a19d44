import asyncio
import dataclasses

import numpy as np

from velollmd.cache import CachedResponse, ResponseCache
from velollmd.cache.embed import HashingEmbedder
from velollmd.cache.replay import from_stream_chunks, to_json, to_sse_chunks
from velollmd.config import CacheConfig

IDENT = dict(endpoint="/v1/chat/completions", model_identity="/models/tiny.gguf",
             tenant="sk-a", defaults={"temperature": 0.8})
ANSWER = CachedResponse(model="tiny", content="Use list.reverse() or reversed().",
                        usage={"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17})


def config(**over):
    return dataclasses.replace(CacheConfig(path="", semantic_threshold=0.9), **over)


def chat(text, **params):
    return {"model": "tiny", "temperature": 0, "messages": [
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": text}],
        **params}


def test_miss_store_exact_hit_across_stream_flag():
    cache = ResponseCache(config())
    req = chat("How do I reverse a list in Python?")
    first = cache.lookup(req, {}, **IDENT)
    assert first.status == "miss" and cache.store(first, req, ANSWER)
    hit = cache.lookup({**req, "stream": True, "stream_options": {"include_usage": True}}, {},
                       **IDENT)
    assert hit.status == "hit-exact" and hit.entry == ANSWER and hit.similarity == 1.0
    replayed = from_stream_chunks(to_sse_chunks(hit.entry, "r", include_usage=True))
    assert replayed.content == ANSWER.content and replayed.usage == ANSWER.usage


def test_semantic_hit_and_guarded_miss():
    cache = ResponseCache(config())
    req = chat("How do I reverse a list in Python?")
    cache.store(cache.lookup(req, {}, **IDENT), req, ANSWER)
    para = cache.lookup(chat("how can i reverse a list in python, please?"), {}, **IDENT)
    assert para.status == "hit-semantic" and para.entry == ANSWER and para.similarity >= 0.9
    assert cache.lookup(chat("How do I not reverse a list in Python?"), {}, **IDENT).status == "miss"
    other_tenant = cache.lookup(chat("how can i reverse a list in python, please?"), {},
                                **{**IDENT, "tenant": "sk-b"})
    assert other_tenant.status == "miss"
    s = cache.stats()
    assert (s["hits"], s["semantic_hits"], s["misses"]) == (0, 1, 3)


def test_bypass_and_unstorable():
    cache = ResponseCache(config())
    req = chat("hello there")
    refresh = cache.lookup(req, {"Cache-Control": "no-cache"}, **IDENT)
    assert refresh.status == "bypass" and cache.store(refresh, req, ANSWER)   # refresh stores
    assert cache.lookup(req, {}, **IDENT).status == "hit-exact"
    nostore = cache.lookup(req, {"x-velollm-cache": "bypass"}, **IDENT)
    assert nostore.status == "bypass" and not cache.store(nostore, req, ANSWER)
    sampled = {**chat("tell a story"), "temperature": None}      # backend default 0.8
    lk = cache.lookup(sampled, {}, **IDENT)
    assert lk.status == "bypass" and not cache.store(lk, sampled, ANSWER)
    assert lk.key is None and lk.query is None      # a sampled request costs no key at all
    miss = cache.lookup(chat("new question"), {}, **IDENT)
    assert not cache.store(miss, chat("new question"), ANSWER, status=502)
    assert not cache.store(miss, chat("new question"), ANSWER, aborted=True)
    assert cache.stats()["entries"] == 1


def test_semantic_hit_needs_live_exact_entry():
    cache = ResponseCache(config(max_entries=1))
    a, b = chat("Explain the theory of relativity"), chat("Summarise the French revolution")
    cache.store(cache.lookup(a, {}, **IDENT), a, ANSWER)
    cache.store(cache.lookup(b, {}, **IDENT), b, ANSWER)               # evicts a
    assert cache.lookup(chat("explain the theory of relativity"), {}, **IDENT).status == "miss"
    assert cache.stats()["semantic_entries"] == 1


def test_flush_and_disabled():
    cache = ResponseCache(config())
    req = chat("q")
    cache.store(cache.lookup(req, {}, **IDENT), req, ANSWER)
    assert cache.flush() == 1 and cache.lookup(req, {}, **IDENT).status == "miss"
    off = ResponseCache(config(enabled=False))
    assert off.lookup(req, {}, **IDENT).status == "bypass"


def test_snapshot_restore_round_trip(tmp_path):
    cache = ResponseCache(config(path=str(tmp_path)))
    req = chat("How do I reverse a list in Python?")
    cache.store(cache.lookup(req, {}, **IDENT), req, ANSWER)
    assert cache.snapshot().endswith("cache.snap")
    fresh = ResponseCache(config(path=str(tmp_path)))
    assert fresh.restore() == 1
    assert fresh.lookup(req, {}, **IDENT).entry == ANSWER
    para = fresh.lookup(chat("how can i reverse a list in python please"), {}, **IDENT)
    assert para.status == "hit-semantic"


class OtherEmbedder(HashingEmbedder):
    """Same dimension as the builtin one, different vectors' meaning."""

    def __init__(self, dim):
        super().__init__(dim)
        self.identity = "backend:other/model/%d" % dim


def test_restore_with_another_embedder_keeps_exact_entries_and_drops_their_vectors(tmp_path, caplog):
    cache = ResponseCache(config(path=str(tmp_path)))
    req = chat("How do I reverse a list in Python?")
    cache.store(cache.lookup(req, {}, **IDENT), req, ANSWER)
    cache.snapshot()
    fresh = ResponseCache(config(path=str(tmp_path)), embedder=OtherEmbedder(cache.semantic.dim))
    assert fresh.restore() == 1
    assert fresh.lookup(req, {}, **IDENT).status == "hit-exact"
    para = fresh.lookup(chat("how can i reverse a list in python please"), {}, **IDENT)
    assert para.status == "miss"
    assert "semantic rows dropped" in caplog.text
    same = ResponseCache(config(path=str(tmp_path)))
    assert same.restore() == 1
    assert same.lookup(chat("how can i reverse a list in python please"), {}, **IDENT).status == "hit-semantic"


class AsyncEmbedder:
    def __init__(self):
        self.inner, self.dim, self.calls = HashingEmbedder(64), 64, 0

    async def embed(self, texts):
        self.calls += 1
        await asyncio.sleep(0)
        return self.inner.embed(texts)


def test_async_embedder_via_alookup():
    emb = AsyncEmbedder()
    cache = ResponseCache(config(), embedder=emb)
    req = chat("What is the boiling point of water at sea level?")

    async def run():
        first = await cache.alookup(req, {}, **IDENT)
        assert first.status == "miss" and isinstance(first.vector, np.ndarray)
        cache.store(first, req, ANSWER)
        return await cache.alookup(chat("what is the boiling point of water at sea level"),
                                   {}, **IDENT)
    assert asyncio.run(run()).status == "hit-semantic"
    assert emb.calls == 2
    assert to_json(ANSWER, "x")["choices"][0]["message"]["content"] == ANSWER.content
