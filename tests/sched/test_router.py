"""Fingerprints, affinity tables and the PrefixRouter, with plain objects as backends."""
from types import SimpleNamespace

from velollmd.sched.affinity import RecentTable, SlotTable
from velollmd.sched.fingerprint import CHUNK_CHARS, fingerprint_of
from velollmd.sched.router import PrefixRouter
from velollmd.wire.request import GenerateRequest


def chat(*contents):
    roles = ["user", "assistant"]
    messages = [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]
    return fingerprint_of(GenerateRequest("chat", {"model": "m", "messages": messages}))


def backend(name, pins_slots=True, num_slots=2):
    return SimpleNamespace(name=name, pins_slots=pins_slots, num_slots=num_slots)


HISTORY = "the quick brown fox " * 100          # 2000 characters


def test_a_later_turn_shares_the_whole_earlier_prompt():
    first = chat(HISTORY)
    later = chat(HISTORY, "an answer", "a follow-up question")
    assert later.common_prefix_tokens(first) == first.total_tokens
    assert later.token_ids()[:first.total_tokens] == first.token_ids()


def test_appending_to_one_message_keeps_the_prefix_at_chunk_granularity():
    short = chat(HISTORY)
    longer = chat(HISTORY + "and more text")
    shared = longer.common_prefix_tokens(short)
    assert 0 < shared < short.total_tokens
    assert short.total_tokens - shared <= CHUNK_CHARS // 4


def test_different_conversations_share_only_the_role_marker():
    a, b = chat("x" * 600), chat("y" * 600)
    assert a.common_prefix_tokens(b) == 4
    assert a.token_ids()[4:] != b.token_ids()[4:]


def test_completion_prompts_are_fingerprinted_too():
    fp = fingerprint_of(GenerateRequest("completion", {"model": "m", "prompt": HISTORY}))
    assert fp.total_tokens == len(HISTORY) // 4


def test_slot_table_pins_the_free_slot_with_the_longest_prefix():
    table = SlotTable(3, min_match_tokens=32)
    a, b = chat(HISTORY), chat("other " * 300)
    assert table.claim(a, now=1) == (0, 0)
    assert table.claim(b, now=2) == (1, 0)
    table.release(0)
    table.release(1)
    later_a = chat(HISTORY, "reply", "next")
    assert table.claim(later_a, now=3) == (0, a.total_tokens)
    # slot 0 busy now: the same conversation again gets the least recently used free slot (2)
    assert table.claim(later_a, now=4)[0] == 2
    assert table.claim(later_a, now=5) == (1, 4)         # slot 1 (b): only the role marker matches
    assert table.claim(later_a, now=6) == (None, 0)      # every slot busy


def test_while_an_unpinned_request_runs_nothing_is_pinned():
    """llama-server gave the unpinned request whichever slot freed first, so the table no
    longer knows which slots are free until that request is done."""
    table = SlotTable(2, min_match_tokens=32)
    a, b = chat(HISTORY), chat("other " * 300)
    assert [table.claim(a, now=1)[0], table.claim(b, now=2)[0], table.claim(a, now=3)[0]] == [0, 1, None]
    table.release(0)
    assert table.claim(a, now=4) == (None, 0)            # slot 0 may hold the unpinned one now
    table.release(None)
    table.release(None)
    table.release(1)
    assert table.claim(a, now=5) == (0, a.total_tokens)  # all known again: pinned by prefix


def test_recent_table_replaces_a_conversation_by_its_next_turn_and_evicts_lru():
    table = RecentTable(num_entries=2)
    a1, b1, c1 = chat(HISTORY), chat("b" * 400), chat("c" * 400)
    table.record(a1, now=1)
    table.record(b1, now=2)
    a2 = chat(HISTORY, "reply", "next")
    table.record(a2, now=3)                     # replaces a1, not a new entry
    assert len(table.entries) == 2
    table.record(c1, now=4)                     # evicts b1 (least recently used)
    assert table.best_match(a2) == a2.total_tokens
    assert table.best_match(b1) == 4
    assert table.best_match(c1) == c1.total_tokens


def test_recent_table_counts_each_prefix_once_per_entry_through_turns_repeats_and_evictions():
    table = RecentTable(num_entries=2)
    turns = [chat(HISTORY), chat(HISTORY), chat(HISTORY, "reply"), chat(HISTORY, "reply", "next"),
             chat("b" * 400), chat("c" * 400), chat("b" * 400, "more")]
    for now, fingerprint in enumerate(turns):
        table.record(fingerprint, now)
    expected: dict[int, int] = {}
    for entry in table.entries.values():
        for key in entry.fingerprint.prefix_keys:
            expected[key] = expected.get(key, 0) + 1
    assert table._prefix_counts == expected and len(table.entries) == 2


def test_recent_table_finds_the_longest_shared_prefix_and_forgets_evicted_prefixes():
    table = RecentTable(num_entries=2)
    system = "You are a careful assistant. " * 20                 # ~600 characters shared
    a, b = chat(system + "question a " * 40), chat(system + "question b " * 40)
    table.record(a, now=1)
    table.record(b, now=2)
    shared = chat(system).common_prefix_tokens(a)
    assert 0 < shared < a.total_tokens
    assert table.best_match(chat(system + "question c " * 40)) == shared
    assert table.best_match(chat(system + "question a " * 40, "answer", "more")) == a.total_tokens
    table.record(chat("x" * 600), now=3)                          # evicts a
    assert table.best_match(a) == shared                           # b still holds the system prompt
    table.record(chat("y" * 600), now=4)                          # evicts b
    assert table.best_match(a) == table.best_match(b) == 4         # the role marker only
    assert len(table.entries) == 2


def test_rank_sends_a_conversation_back_to_the_backend_that_served_it():
    router = PrefixRouter()
    one, two = backend("one"), backend("two")
    a = chat(HISTORY)
    router.claim(two, a, now=1)
    router.release(two, 0)
    load = {"one": 0.0, "two": 0.5}
    later = chat(HISTORY, "reply", "next")
    assert router.rank([one, two], later, lambda b: load[b.name]) == [two, one]
    assert router.num_affinity_hits == 1


def test_rank_prefers_least_load_when_the_affine_backend_is_much_busier():
    router = PrefixRouter(balance_slack=1.0)
    one, two = backend("one"), backend("two")
    router.claim(two, chat(HISTORY), now=1)
    load = {"one": 0.0, "two": 1.5}
    assert router.rank([one, two], chat(HISTORY, "r", "n"), lambda b: load[b.name]) == [one, two]


def test_rank_without_prefix_routing_is_least_load_then_round_robin():
    router = PrefixRouter(prefix_routing=False)
    one, two = backend("one"), backend("two")
    fp = chat(HISTORY)
    firsts = [router.rank([one, two], fp, lambda b: 0.0)[0].name for _ in range(4)]
    assert firsts == ["two", "one", "two", "one"]
    busy = {"one": 0.0, "two": 1.0}
    assert [router.rank([one, two], fp, lambda b: busy[b.name])[0].name for _ in range(2)] == ["one", "one"]
    assert router.claim(one, fp, now=1) is None          # no slot pinning either


def test_claim_pins_only_backends_that_pin_slots_and_forget_drops_affinity():
    router = PrefixRouter()
    llama, ollama = backend("llama"), backend("ollama", pins_slots=False, num_slots=1)
    fp = chat(HISTORY)
    assert router.claim(llama, fp, now=1) == 0
    assert router.claim(ollama, fp, now=1) is None
    router.release(llama, 0)
    router.forget(llama)
    later = chat(HISTORY, "r", "n")
    assert router.rank([llama, ollama], later, lambda b: 0.0)[0] is ollama   # sticky to ollama now
    assert router.claim(llama, later, now=2) == 0
    assert router.num_slot_hits == 0


def test_without_slot_pinning_the_backend_is_still_chosen_by_prefix():
    router = PrefixRouter(pin_slots=False)
    one, two = backend("one"), backend("two")
    fp = chat(HISTORY)
    assert router.claim(two, fp, now=1) is None                   # llama-server picks the slot
    later = chat(HISTORY, "r", "n")
    assert [router.rank([one, two], later, lambda b: 0.0)[0].name for _ in range(3)] == ["two"] * 3
    assert router.num_affinity_hits == 3 and router.num_slot_hits == 0


def test_a_request_of_several_prompts_goes_unpinned_and_pins_nothing_while_it_runs():
    """llama-server runs its prompts on as many slots: pinned to one they would wait for each
    other, and which slots they took is unknown until it ends."""
    table = SlotTable(4)
    a = chat("alpha")
    assert table.claim(a, now=1, pinnable=False) == (None, 0)
    assert table.claim(a, now=2) == (None, 0)
    table.release(None)
    table.release(None)
    assert table.claim(a, now=3)[0] == 0
