"""Fingerprints built from real token ids: pieces, counts, ids, prefixes across turns, and
real pieces mixed with estimated ones."""
from velollmd.sched.fingerprint import (
    CHARS_PER_TOKEN,
    MESSAGE_OVERHEAD_TOKENS,
    TOKENS_PER_PIECE,
    fingerprint_of,
    texts_of,
)
from velollmd.wire.request import GenerateRequest

SYSTEM = "you are a careful assistant. " * 20
QUESTION = "what does the long report say about the harbour? " * 10
ANSWER = "the report says the harbour is closed for repairs. " * 10
FOLLOW_UP = "and when does it open again? " * 10
OVERHEAD = MESSAGE_OVERHEAD_TOKENS


def fake_ids(text: str) -> tuple[int, ...]:
    """Stand-in token ids: one per word, derived from the word (stable across calls)."""
    return tuple(sum(word.encode()) % 1000 + 7 * i % 13 for i, word in enumerate(text.split()))


def chat_request(*contents):
    roles = ["system", "user", "assistant", "user"]
    messages = [{"role": roles[i % 4], "content": c} for i, c in enumerate(contents)]
    return GenerateRequest("chat", {"model": "m", "messages": messages})


def real(request, only=None):
    """The request's fingerprint with fake ids for its texts (or only those in `only`)."""
    texts = [t for t in texts_of(request) if only is None or t in only]
    return fingerprint_of(request, {t: fake_ids(t) for t in texts})


def test_a_tokenized_text_becomes_runs_of_its_real_ids_with_exact_counts():
    request = GenerateRequest("completion", {"model": "m", "prompt": SYSTEM})
    ids = fake_ids(SYSTEM) * 3                            # 300 ids
    fp = fingerprint_of(request, {SYSTEM: ids})
    assert fp.num_tokens == (TOKENS_PER_PIECE,) * 4 + (300 - 4 * TOKENS_PER_PIECE,)
    assert fp.total_tokens == 300 and list(fp.token_ids()) == list(ids)


def test_chat_pieces_are_role_markers_plus_real_ids():
    request = chat_request(SYSTEM, QUESTION)
    fp = real(request)
    assert fp.total_tokens == 2 * OVERHEAD + len(fake_ids(SYSTEM)) + len(fake_ids(QUESTION))
    ids = list(fp.token_ids())
    assert len(ids) == fp.total_tokens
    start = OVERHEAD + len(fake_ids(SYSTEM)) + OVERHEAD
    assert ids[OVERHEAD:OVERHEAD + len(fake_ids(SYSTEM))] == list(fake_ids(SYSTEM))
    assert ids[start:] == list(fake_ids(QUESTION))


def test_a_later_turn_matches_the_whole_earlier_prompt_by_real_ids():
    first = real(chat_request(SYSTEM, QUESTION))
    later = real(chat_request(SYSTEM, QUESTION, ANSWER, FOLLOW_UP))
    assert later.common_prefix_tokens(first) == first.total_tokens
    assert later.token_ids()[:first.total_tokens] == first.token_ids()
    other = real(chat_request(SYSTEM, FOLLOW_UP))          # same system prompt, other question
    assert later.common_prefix_tokens(other) == OVERHEAD + len(fake_ids(SYSTEM)) + OVERHEAD


def test_a_grown_prompt_matches_its_earlier_ids_at_piece_granularity():
    short = GenerateRequest("completion", {"model": "m", "prompt": SYSTEM})
    grown = GenerateRequest("completion", {"model": "m", "prompt": SYSTEM + ANSWER})
    fp_short, fp_grown = real(short), real(grown)
    num_full = len(fake_ids(SYSTEM)) // TOKENS_PER_PIECE * TOKENS_PER_PIECE
    assert fp_grown.common_prefix_tokens(fp_short) == num_full
    assert list(fp_grown.token_ids()[:len(fake_ids(SYSTEM))]) == list(fake_ids(SYSTEM))


def test_real_and_estimated_pieces_mix_in_prompt_order():
    request = chat_request(SYSTEM, "short question", ANSWER)
    fp = real(request, only={SYSTEM, ANSWER})
    estimate = -(-len("short question") // CHARS_PER_TOKEN)
    assert fp.total_tokens == 3 * OVERHEAD + len(fake_ids(SYSTEM)) + estimate + len(fake_ids(ANSWER))
    ids = list(fp.token_ids())
    assert len(ids) == fp.total_tokens
    assert ids[-len(fake_ids(ANSWER)):] == list(fake_ids(ANSWER))
    assert fp.piece_ids.count(None) == 3 + 1              # role markers and the short question
    same = real(chat_request(SYSTEM, "short question", ANSWER), only={SYSTEM, ANSWER})
    assert same.hashes == fp.hashes and list(same.token_ids()) == ids


def test_an_estimated_text_does_not_match_its_tokenized_self():
    """Pieces are by ids or by characters, never both: a text that could not be tokenized
    once matches only up to its own message (routing degrades, it does not break)."""
    request = chat_request(SYSTEM, QUESTION)
    estimated, tokenized = fingerprint_of(request), real(request)
    assert estimated.piece_ids.count(None) == len(estimated.hashes)
    assert tokenized.common_prefix_tokens(estimated) == OVERHEAD


def test_texts_of_lists_message_texts_and_the_completion_prompt():
    tool_call = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    request = GenerateRequest("chat", {"model": "m", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": tool_call}]})
    texts = texts_of(request)
    assert texts[0] == "hi" and texts[1].startswith("null[") and '"name": "f"' in texts[1]
    assert texts_of(GenerateRequest("completion", {"model": "m", "prompt": "abc"})) == ["abc"]


def test_estimated_pieces_a_short_text_one_chunk_an_empty_one_none():
    request = chat_request("", "hi", "x" * (2 * 256 + 10))
    fingerprint = fingerprint_of(request)
    assert fingerprint.num_tokens == (OVERHEAD, OVERHEAD, 1, OVERHEAD, 64, 64, 3)
    assert fingerprint.hashes[2] == hash("hi") and fingerprint.hashes[4] == hash("x" * 256)
    assert fingerprint == fingerprint_of(request) and len(fingerprint.token_ids()) == sum(fingerprint.num_tokens)
