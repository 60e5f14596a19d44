"""wire/truncate.py: a prompt over its context cut as Ollama cuts it."""
from velollmd.wire.truncate import kept_messages, kept_tokens, prompt_limit


def sized(limit: int):
    """fits() for messages whose size is the length of their contents."""
    return lambda messages: sum(len(m["content"]) for m in messages) <= limit


CONVERSATION = [{"role": "system", "content": "s"}, {"role": "user", "content": "u" * 10},
                {"role": "assistant", "content": "a" * 10}, {"role": "user", "content": "v" * 3},
                {"role": "assistant", "content": "b" * 3}, {"role": "user", "content": "w"}]


def test_the_oldest_turns_go_first_and_system_messages_and_the_latest_stay():
    assert kept_messages(CONVERSATION, sized(100)) == CONVERSATION
    assert kept_messages(CONVERSATION, sized(8)) == [CONVERSATION[0], *CONVERSATION[3:]]
    assert kept_messages(CONVERSATION, sized(2)) == [CONVERSATION[0], CONVERSATION[-1]]
    assert kept_messages(CONVERSATION, sized(0)) == [CONVERSATION[0], CONVERSATION[-1]]   # alone, even too long


def test_a_turn_is_dropped_whole_never_leaving_an_assistant_message_first():
    for limit in range(0, 30):
        kept = kept_messages(CONVERSATION, sized(limit))
        assert [m["role"] for m in kept][:2] == ["system", "user"]


def test_a_cut_prompt_keeps_its_first_tokens_and_its_latest_and_room_to_answer():
    ids = list(range(100))
    assert prompt_limit(64, 3) == 61 and prompt_limit(64, None) == 32 and prompt_limit(64, 1000) == 32
    assert prompt_limit(1, None) == prompt_limit(1, 5) == 1
    assert kept_tokens(ids, 10) == [0, 1, 2, 3, 94, 95, 96, 97, 98, 99]
    assert kept_tokens(ids, 3) == [0, 1, 99]
    assert kept_tokens(ids, 10, 0) == ids[-10:] and kept_tokens(ids, 10, 6) == [0, 1, 2, 3, 4, 5, 96, 97, 98, 99]
    assert kept_tokens(ids, 10, -1) == [*range(9), 99] and kept_tokens(ids, 10, 6.0) == kept_tokens(ids, 10, 6)       # Ollama's -1: as many as fit, the latest one too


def test_a_fits_that_asks_a_server_keeps_what_the_plain_one_keeps():
    import asyncio
    from velollmd.wire.truncate import kept_messages_counted
    for limit in range(0, 30):
        async def fits(messages, limit=limit):
            return sized(limit)(messages)
        assert asyncio.run(kept_messages_counted(CONVERSATION, fits)) == kept_messages(CONVERSATION, sized(limit))
