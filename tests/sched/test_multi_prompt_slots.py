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
