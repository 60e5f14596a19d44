"""TokenCache: LRU bounded by tokens, counters, short texts skipped, failures left out; and
the Service using it. The backend is a small stand-in for llama.cpp's /tokenize (one id per
word) where no real server is needed; tests/sched/test_tokenize_llama.py uses the real one."""
import asyncio

import pytest

from tests.aio import run
from tests.sched.test_failover_breaker import FakeBackend, FakeRegistry
from velollmd.config import SchedulerConfig
from velollmd.core.service import Service
from velollmd.errors import BackendError, NotFound
from velollmd.sched.tokens import MAX_CONCURRENT, TokenCache, tokenizer_of
from velollmd.wire.request import GenerateRequest


class WordTokenizer(FakeBackend):
    """A backend that can tokenize, like llama.cpp: one id per word (the word's length)."""
    can_tokenize = True

    def __init__(self, name="llama", tokenize_error=None, answer=None):
        super().__init__(name)
        self.tokenize_error, self.answer = tokenize_error, answer
        self.tokenized: list[str] = []
        self.num_inflight = self.max_inflight = 0

    def identity(self, model):
        return f"llamacpp:{model}"

    async def tokenize(self, content):
        self.tokenized.append(content)
        self.num_inflight += 1
        self.max_inflight = max(self.max_inflight, self.num_inflight)
        await asyncio.sleep(0)                 # let concurrent calls start
        self.num_inflight -= 1
        if self.tokenize_error is not None:
            raise self.tokenize_error
        return self.answer if self.answer is not None else [len(word) for word in content.split()]


def words(tag, num_words):
    """num_words words of len(tag) + 7 characters: num_words ids for WordTokenizer, and at
    least 256 characters from 30 words on."""
    return " ".join(f"{tag}-{i:06d}" for i in range(num_words))


def lookup(cache, backend, texts, model="m"):
    """text -> ids as tuples (the cache keeps int32 arrays)."""
    return {text: tuple(ids) for text, ids in run(cache.lookup(backend, model, texts)).items()}


def test_long_texts_are_tokenized_once_then_hit_and_short_ones_never():
    backend, cache = WordTokenizer(), TokenCache()
    long_a, long_b, short = words("a", 40), words("b", 50), "a short question"
    found = lookup(cache, backend, [long_a, short, long_b, long_a])
    assert found == {long_a: (8,) * 40, long_b: (8,) * 50}
    assert sorted(backend.tokenized) == sorted([long_a, long_b])       # once each, short never
    assert lookup(cache, backend, [long_a, long_b, words("c", 30)]).keys() == {long_a, long_b, words("c", 30)}
    assert len(backend.tokenized) == 3
    assert cache.stats() == {"num_entries": 3, "num_tokens": 120, "num_tokenized": 3,
                             "num_failed": 0, "num_hits": 2}


def test_entries_are_per_model():
    backend, cache = WordTokenizer(), TokenCache()
    text = words("a", 40)
    lookup(cache, backend, [text], model="one")
    lookup(cache, backend, [text], model="two")
    assert backend.tokenized == [text, text] and cache.num_hits == 0


def test_lru_is_bounded_by_tokens_and_evicts_the_least_recently_used():
    backend, cache = WordTokenizer(), TokenCache(max_tokens=250)
    a, b, c = words("a", 100), words("b", 100), words("c", 100)
    lookup(cache, backend, [a])
    lookup(cache, backend, [b])
    lookup(cache, backend, [a])                # a is now more recent than b
    lookup(cache, backend, [c])                # 300 > 250: evicts b
    assert cache.num_tokens == 200 and cache.stats()["num_entries"] == 2
    backend.tokenized.clear()
    lookup(cache, backend, [a, c, b])
    assert backend.tokenized == [b]                # only b was gone (and now a is evicted)
    assert cache.num_tokens == 200


def test_a_text_longer_than_the_whole_cache_is_returned_but_not_kept():
    backend, cache = WordTokenizer(), TokenCache(max_tokens=50)
    small, huge = words("s", 40), words("h", 60)
    lookup(cache, backend, [small])
    assert lookup(cache, backend, [huge]) == {huge: (8,) * 60}
    assert cache.num_tokens == 40 and lookup(cache, backend, [small]) == {small: (8,) * 40}
    assert cache.num_hits == 1


@pytest.mark.parametrize("tokenize_error, answer", [
    (BackendError("backend llama answered 500"), None),
    (NotFound("no /tokenize here"), None),
    (None, {"tokens": [1, 2]}),                # not a list
    (None, []),                                # no ids for a long text
    (None, ["a", "b"]),                        # pieces, not ids
    (None, [1, True]),
    (None, [1, 2 ** 40]),                      # past int32
])
def test_a_failed_or_malformed_answer_leaves_the_text_out(tokenize_error, answer):
    backend, cache = WordTokenizer(tokenize_error=tokenize_error, answer=answer), TokenCache()
    text = words("a", 40)
    assert lookup(cache, backend, [text]) == {}
    assert cache.stats()["num_failed"] == 1 and cache.stats()["num_entries"] == 0


def test_a_backend_without_tokenize_leaves_the_text_out():
    class NoTokenize:
        name, kind, healthy = "plain", "llamacpp", True
    cache = TokenCache()
    assert lookup(cache, NoTokenize(), [words("a", 40)]) == {}
    assert cache.num_failed == 1


def test_a_timeout_leaves_the_text_out():
    class Hung(WordTokenizer):
        async def tokenize(self, content):
            await asyncio.Event().wait()
    cache = TokenCache(timeout_s=0.01)
    assert lookup(cache, Hung(), [words("a", 40)]) == {}
    assert cache.num_failed == 1


def test_after_a_failure_the_backend_rests_then_is_asked_again():
    now = [0.0]
    backend = WordTokenizer(tokenize_error=BackendError("down"))
    cache = TokenCache(retry_after_s=10, clock=lambda: now[0])
    text = words("a", 40)
    lookup(cache, backend, [text])
    now[0] = 9.0
    assert lookup(cache, backend, [text]) == {} and len(backend.tokenized) == 1
    now[0] = 10.5
    backend.tokenize_error = None
    assert lookup(cache, backend, [text]) == {text: (8,) * 40} and len(backend.tokenized) == 2


def test_missing_texts_are_tokenized_concurrently_a_few_at_a_time():
    backend, cache = WordTokenizer(), TokenCache()
    texts = [words(f"t{i}", 30) for i in range(MAX_CONCURRENT * 2 + 1)]
    assert len(lookup(cache, backend, texts)) == len(texts)
    assert backend.max_inflight == MAX_CONCURRENT and len(backend.tokenized) == len(texts)


def test_concurrent_requests_with_the_same_new_text_share_one_call():
    backend, cache = WordTokenizer(), TokenCache()
    shared, own = words("system", 40), words("own", 35)

    async def burst():
        return await asyncio.gather(*(cache.lookup(backend, "m", [shared] + ([own] if i == 0 else []))
                                      for i in range(5)))
    results = run(burst())
    assert all(tuple(r[shared]) == (13,) * 40 for r in results) and tuple(results[0][own]) == (10,) * 35
    assert sorted(backend.tokenized) == sorted([shared, own])
    assert cache.stats()["num_tokenized"] == 2


def test_tokenizer_of_takes_the_first_healthy_backend_that_can_tokenize():
    down, up, other = WordTokenizer("down"), WordTokenizer("up"), WordTokenizer("ollama")
    down.healthy, other.can_tokenize = False, False
    assert tokenizer_of([other, down, up]) is up
    assert tokenizer_of([other]) is None


def chat_request(*contents):
    messages = [{"role": "user", "content": c} for c in contents]
    return GenerateRequest("chat", {"model": "m", "messages": messages})


@pytest.mark.parametrize("config, num_calls", [
    ({}, 2),
    ({"tokenize": False}, 0),
    ({"prefix_routing": False}, 0),
])
def test_service_tokenizes_only_with_prefix_routing_and_tokenize_on(config, num_calls):
    backend = WordTokenizer()
    svc = Service(FakeRegistry(backend), SchedulerConfig(**config))
    request = chat_request(words("a", 40), "hi", words("b", 35))
    answer = run(svc.generate(request)).body
    assert answer["choices"][0]["message"]["content"] == "llama"
    assert len(backend.tokenized) == num_calls
    stats = svc.stats()["tokenize"]
    assert stats["num_tokenized"] == num_calls and stats["enabled"] is (num_calls > 0)


def test_service_builds_the_scheduler_request_from_real_ids():
    backend = WordTokenizer()
    svc = Service(FakeRegistry(backend), SchedulerConfig())
    seen = []
    original = svc._sched_request
    svc._sched_request = lambda b, r, fp: seen.append(original(b, r, fp)) or seen[-1]
    run(svc.generate(chat_request(words("a", 40), "hi")))
    ids = list(seen[0].prompt_token_ids)
    assert len(ids) == 4 + 40 + 4 + 1 and ids[4:44] == [8] * 40     # "hi": one estimated token
