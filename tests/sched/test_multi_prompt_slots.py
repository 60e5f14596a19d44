"""A completion of several prompts runs on llama-server as that many requests, a slot each: the
scheduler counts it so (capped at the server's slots), so that a 4-prompt completion on a
4-slot server does not let three more requests be sent into the full server. The real
llama-server (tiny model, --parallel 4) behind the real daemon, the official openai client."""
import json
import threading
import urllib.request

import openai
import pytest

from tests.daemon_rig import RunningDaemon, llama_backend
from tests.rig.waiting import wait_for
from velollmd.config import SchedulerConfig
from velollmd.errors import BadRequest
from velollmd.sched.kvblocks import BlockPool
from velollmd.sched.request import STOPPED, SchedRequest
from velollmd.sched.scheduler import Scheduler

PROMPTS = ["one two", "three four", "five six", "seven eight"]
LONG = 600                     # tokens per prompt: the 4-prompt answer runs while the others arrive


def completion(sdk: openai.OpenAI, results: dict, name: str, **fields) -> None:
    results[name] = sdk.completions.create(model="tiny", **fields)


def num_processing(server) -> int:
    """Slots of the llama-server that run a request now (its /slots)."""
    with urllib.request.urlopen(server.url + "/slots", timeout=5) as response:
        return sum(1 for slot in json.load(response) if slot.get("is_processing"))


@pytest.mark.parametrize("prefix_routing", [False, True])
def test_a_four_prompt_completion_holds_all_four_slots(llama_server, prefix_routing):
    """With prefix routing, the request goes unpinned: pinned to one slot, its prompts would
    run one after another there."""
    table = {"backends": [llama_backend(llama_server)], "cache": {"enabled": False},
             "scheduler": {"prefix_routing": prefix_routing, "backend_queue_per_slot": 0}}
    with RunningDaemon(table) as daemon:
        def queue() -> dict:
            return daemon.app.service.stats()["backends"]["llama"]
        sdk = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0, timeout=120)
        assert wait_for(lambda: queue()["num_slots"] == 4 and queue()["concurrency_limit"] == 4)
        results: dict = {}
        multi = threading.Thread(target=completion, args=(sdk, results, "multi"),
                                 kwargs={"prompt": PROMPTS, "max_tokens": LONG})
        multi.start()
        assert wait_for(lambda: queue()["num_running"] == 1)
        singles = [threading.Thread(target=completion, args=(sdk, results, f"single{i}"),
                                    kwargs={"prompt": f"single {i}", "max_tokens": 4}) for i in range(3)]
        for single in singles:
            single.start()
        assert wait_for(lambda: queue()["num_waiting"] == 3 or not multi.is_alive())
        assert wait_for(lambda: num_processing(llama_server) == 4 or not multi.is_alive())
        seen = queue()["num_running"], queue()["num_waiting"], num_processing(llama_server), multi.is_alive()
        for thread in (multi, *singles):
            thread.join(120)
    assert seen == (1, 3, 4, True)                # the three waited in the daemon, the prompts ran on 4 slots
    assert [c.index for c in results["multi"].choices] == [0, 1, 2, 3]
    assert all(results[f"single{i}"].choices[0].text is not None for i in range(3))


def test_a_request_of_more_prompts_than_slots_takes_the_slots_there_are():
    """Capped at the server's slots (the rest of its prompts wait there); the slots all come
    back when it ends."""
    sched = Scheduler(SchedulerConfig(block_size=4), 8, BlockPool(256, 4), num_backend_slots=4)
    wide = SchedRequest("wide", "m", [1, 2], 4, arrival_time=0.0, num_parallel=6)
    assert sched.start_at_once(wide, 0.0) is not None
    assert sched.num_free_slots == 4 and len(wide.extra_slots) == 3
    narrow = [SchedRequest(f"n{i}", "m", [1], 4, arrival_time=0.0) for i in range(5)]
    assert [sched.start_at_once(r, 0.0) is not None for r in narrow] == [True] * 4 + [False]
    sched.finish_request("wide", STOPPED, 1.0)
    assert sched.num_free_slots == 4 and wide.extra_slots == ()


def test_each_prompt_reserves_its_max_tokens_so_the_pool_is_not_overcommitted():
    """A 2-prompt completion (8 prompt tokens, max_tokens 16: 2 + 2 x 4 blocks of 4 tokens) holds
    10 of the 16 blocks, not 6: a single (1 + 4 blocks) fits beside it, a second waits. A request
    of more prompts than the server's slots reserves for the slots it holds (its other prompts
    run after others there), and one whose prompts cannot all run at once is a 400 naming them."""
    sched = Scheduler(SchedulerConfig(block_size=4), 8, BlockPool(16, 4), num_backend_slots=4)
    pair = SchedRequest("pair", "m", list(range(1, 9)), 16, arrival_time=0.0, num_parallel=2)
    assert sched.start_at_once(pair, 0.0) is not None
    held_by_pair = sched.pool.num_blocks - sched.pool.num_free_blocks
    singles = [SchedRequest(f"s{i}", "m", [100 + i] * 4, 16, arrival_time=0.0) for i in range(2)]
    started = [sched.start_at_once(r, 0.0) is not None for r in singles]
    sched.finish_request("pair", STOPPED, 1.0)
    sched.finish_request("s0", STOPPED, 1.0)
    wide = SchedRequest("wide", "m", [7] * 4, 12, arrival_time=0.0, num_parallel=6)
    assert sched.start_at_once(wide, 0.0) is not None
    held_by_wide = sched.pool.num_blocks - sched.pool.num_free_blocks
    sched.finish_request("wide", STOPPED, 2.0)
    too_wide = SchedRequest("too-wide", "m", [7] * 4, 16, arrival_time=0.0, num_parallel=4)
    with pytest.raises(BadRequest) as refused:
        sched.add_request(too_wide, 3.0)
    assert held_by_pair == 2 + 2 * 4 and started == [True, False]
    assert held_by_wide == 1 + 4 * 3                  # 4 slots of max_tokens 12, not 6
    assert refused.value.param == "max_tokens" and "each of the 4 prompts" in refused.value.message


def test_a_two_prompt_completion_reserves_max_tokens_for_each_prompt(llama_server):
    """The real llama-server (--parallel 4) behind the daemon: while a 2-prompt completion
    runs, the backend's KV budget holds both prompts' max_tokens."""
    table = {"backends": [llama_backend(llama_server)], "cache": {"enabled": False},
             "scheduler": {"backend_queue_per_slot": 0}}
    with RunningDaemon(table) as daemon:
        def queue() -> dict:
            return daemon.app.service.stats()["backends"]["llama"]
        sdk = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0, timeout=120)
        assert wait_for(lambda: queue()["num_slots"] == 4)
        num_pool_tokens = 4 * daemon.app.registry.backends[0].context_size()
        results: dict = {}
        multi = threading.Thread(target=completion, args=(sdk, results, "multi"),
                                 kwargs={"prompt": PROMPTS[:2], "max_tokens": LONG})
        multi.start()
        seen: list[dict] = []
        assert wait_for(lambda: seen.append(queue()) or seen[-1]["num_running"] == 1 or not multi.is_alive())
        multi.join(120)
    assert seen[-1]["num_running"] == 1             # read while it ran
    assert seen[-1]["block_usage"] * num_pool_tokens >= 2 * LONG
    assert [c.index for c in results["multi"].choices] == [0, 1]
