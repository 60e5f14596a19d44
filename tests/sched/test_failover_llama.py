"""Failover end to end: two real llama-servers behind the daemon; one is killed (SIGKILL)
and every request, streaming or not, still succeeds on the other with no client error."""
import openai

from tests.daemon_rig import RunningDaemon, llama_backend


def test_a_killed_backend_fails_over_with_no_client_error(llama_server_factory):
    servers = [llama_server_factory(parallel=2) for _ in range(2)]
    table = {"backends": [llama_backend(s, name=f"llama{i}", health_interval_s=60)
                          for i, s in enumerate(servers)],
             "scheduler": {"prefix_routing": False, "breaker_failures": 2, "breaker_cooldown_s": 60}}
    with RunningDaemon(table) as daemon:
        client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
        messages = [{"role": "user", "content": "hello there"}]
        before = {client.chat.completions.with_raw_response.create(
            model="tiny", messages=messages, max_tokens=4).headers["x-velollm-backend"] for _ in range(4)}
        servers[0].kill()
        served = []
        for i in range(6):
            if i % 2:
                stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4,
                                                        stream=True)
                text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
                assert text
                served.append("stream")
            else:
                raw = client.chat.completions.with_raw_response.create(model="tiny", messages=messages,
                                                                        max_tokens=4)
                assert raw.parse().choices[0].message.content
                served.append(raw.headers["x-velollm-backend"])
        stats = daemon.app.service.stats()
    assert before == {"llama0", "llama1"}
    assert [s for s in served if s != "stream"] == ["llama1"] * 3
    assert stats["num_failovers"] == 2                  # then llama0's circuit opened
    assert stats["backends"]["llama0"]["breaker"] == "open"
