"""SIGHUP reload of a real daemon process: sd_notify on a real AF_UNIX socket, backends swapped
under a stream in flight, a broken file refused, `velollmctl reload` finding the daemon."""
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from tests.rig.net import free_port
from tests.rig.ollama_emulator import OllamaEmulator
from tests.test_daemon import get, running, write_config

ROOT = Path(__file__).resolve().parents[1]
WORDS = "one two three four five six seven eight"


def backend(name, emulator):
    return f'[[backends]]\nname = "{name}"\nkind = "ollama"\nurl = "{emulator.url}"\nmodels = ["llama3*"]\n'


def next_message(sock) -> str:
    """The next sd_notify datagram, skipping watchdog pings."""
    while True:
        message = sock.recv(4096).decode()
        if message != "WATCHDOG=1":
            return message


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def reload_and_wait(proc, sock) -> str:
    """SIGHUP, then RELOADING=1 with a MONOTONIC_USEC taken during the reload, then READY=1;
    returns the STATUS= of the READY message."""
    before = monotonic_usec()
    proc.send_signal(signal.SIGHUP)
    reloading = next_message(sock)
    match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", reloading)
    assert match, reloading
    assert before <= int(match.group(1)) <= monotonic_usec()
    ready = next_message(sock)
    assert ready.startswith("READY=1\nSTATUS="), ready
    return ready.split("STATUS=", 1)[1]


def stop_and_read_log(proc) -> list[dict]:
    """SIGTERM, a clean exit, and the daemon's JSON log records."""
    proc.terminate()
    assert proc.wait(timeout=20) == 0
    return [json.loads(line) for line in proc.stderr.read().splitlines()]


def test_sighup_swaps_backends_while_a_stream_on_the_old_one_finishes(tmp_path, notify):
    port = free_port()
    with OllamaEmulator() as old, OllamaEmulator() as new:
        config = write_config(tmp_path, port, backend("old", old))
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
        with running(config, notify) as proc:
            assert next_message(notify).startswith("READY=1")
            old.script(WORDS, delay_s=0.4)           # longer than drain_timeout_s: no deadline cuts it
            stream = client.chat.completions.create(
                model="llama3.2", messages=[{"role": "user", "content": "slow"}], stream=True)
            chunks = iter(stream)
            first = next(chunks)
            config.write_text(write_config(tmp_path, port, backend("new", new)).read_text())

            status = reload_and_wait(proc, notify)

            assert status.endswith("configuration reloaded")
            queue = get(f"http://127.0.0.1:{port}/v1/velollm/queue")[1]
            assert queue["backends"]["old"]["num_running"] == 1        # still streaming
            raw = client.chat.completions.with_raw_response.create(
                model="llama3.2", messages=[{"role": "user", "content": "fresh"}])
            assert raw.headers["x-velollm-backend"] == "new"
            assert new.count("/api/chat") == 1
            rest = [c.choices[0].delta.content or "" for c in chunks if c.choices]
            assert "".join([first.choices[0].delta.content or ""] + rest).split() == WORDS.split()
            assert proc.poll() is None
            health = get(f"http://127.0.0.1:{port}/health")[1]
            assert [b["name"] for b in health["backends"]] == ["new"]
            records = stop_and_read_log(proc)
    reloaded = [r for r in records if r["msg"] == "reloaded"]
    assert len(reloaded) == 1 and reloaded[0]["added"] == ["new"] and reloaded[0]["removed"] == ["old"]
    retired = [r for r in records if r["msg"] == "backend retired"]
    assert [r["backend"] for r in retired] == ["old"]
    assert records.index(retired[0]) > records.index(reloaded[0])


def test_broken_file_keeps_the_running_config_and_says_so_once(tmp_path, notify):
    port = free_port()
    with OllamaEmulator() as emulator:
        good = write_config(tmp_path, port, backend("emu", emulator)).read_text()
        config = tmp_path / "velollm.toml"
        with running(config, notify) as proc:
            assert next_message(notify).startswith("READY=1")
            config.write_text(good.replace("[cache]", '[cache]\nmax_entries = "lots"'))

            status = reload_and_wait(proc, notify)

            assert "reload failed (cache.max_entries" in status and "old configuration kept" in status
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
            answer = client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
            assert answer.choices[0].message.content
            assert proc.poll() is None
            records = stop_and_read_log(proc)
    errors = [r for r in records if r["level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["key"] == "cache.max_entries" and "cache.max_entries" in errors[0]["msg"]
    assert "reloaded" not in [r["msg"] for r in records]


def test_a_new_listen_address_needs_a_restart(tmp_path, notify):
    port, other = free_port(), free_port()
    config = write_config(tmp_path, port, '[scheduler]\ndefault_priority = 5\n')
    with running(config, notify) as proc:
        assert next_message(notify).startswith("READY=1")
        config.write_text(write_config(tmp_path, other, '[scheduler]\ndefault_priority = 7\n').read_text())
        status = reload_and_wait(proc, notify)
        assert status == f"listening on 127.0.0.1:{port}; configuration reloaded"
        assert get(f"http://127.0.0.1:{port}/health")[0] == 200
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{other}/health", timeout=5)
        records = stop_and_read_log(proc)
    warnings = [r for r in records if r["level"] == "warning"]
    assert len(warnings) == 1 and "needs a restart" in warnings[0]["msg"]
    assert warnings[0]["configured"] == f"127.0.0.1:{other}"


def test_velollmctl_reload_finds_the_daemon_by_its_pid_file(tmp_path, notify):
    port = free_port()
    config = write_config(tmp_path, port)
    pid_file = tmp_path / "velollmd.pid"
    argv = [sys.executable, "-m", "velollmd", "--config", str(config), "--pid-file", str(pid_file)]
    with running(config, notify, argv=argv) as proc:
        assert next_message(notify).startswith("READY=1")
        assert pid_file.read_text().strip() == str(proc.pid)
        ctl = subprocess.run([str(ROOT / "tools" / "velollmctl"), "reload", "--pid-file", str(pid_file)],
                             capture_output=True, text=True, timeout=60)
        assert ctl.returncode == 0, ctl.stderr
        assert f"pid {proc.pid}" in ctl.stdout
        assert next_message(notify).startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert next_message(notify).startswith("READY=1")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert not pid_file.exists()


def test_velollmctl_reload_refuses_a_pid_that_is_not_velollmd(tmp_path):
    with subprocess.Popen(["sleep", "30"]) as other:
        pid_file = tmp_path / "velollmd.pid"
        pid_file.write_text(f"{other.pid}\n")
        try:
            ctl = subprocess.run([str(ROOT / "tools" / "velollmctl"), "reload", "--pid-file", str(pid_file)],
                                 capture_output=True, text=True, timeout=60)
            assert other.poll() is None                   # not signalled
        finally:
            other.kill()
    assert ctl.returncode == 1 and "no running velollmd found" in ctl.stderr
    assert f"pid {other.pid} from {pid_file} is not a running velollmd" in ctl.stderr


@pytest.mark.parametrize("pid", ["0", "-5", "999999999"])
def test_velollmctl_reload_names_a_pid_given_that_is_not_velollmd(tmp_path, pid):
    ctl = subprocess.run([str(ROOT / "tools" / "velollmctl"), "reload", "--pid", pid,
                          "--pid-file", str(tmp_path / "none.pid")], capture_output=True, text=True, timeout=60)
    assert ctl.returncode == 1 and "Traceback" not in ctl.stderr
    assert ctl.stderr == f"velollmctl reload: no running velollmd found (pid {pid} from --pid is not a running velollmd)\n"


def test_a_reload_turns_the_access_log_on_and_off(tmp_path, notify):
    port = free_port()
    config = write_config(tmp_path, port, "[log]\naccess = false\n")
    url = f"http://127.0.0.1:{port}/v1/models"

    def ask(request_id):
        with urllib.request.urlopen(urllib.request.Request(url, headers={"x-request-id": request_id}), timeout=10):
            pass

    with running(config, notify) as proc:
        assert next_message(notify).startswith("READY=1")
        ask("while-off")
        config.write_text(config.read_text().replace("access = false", "access = true"))
        assert reload_and_wait(proc, notify).endswith("configuration reloaded")
        ask("turned-on")
        config.write_text(config.read_text().replace("access = true", "access = false"))
        assert reload_and_wait(proc, notify).endswith("configuration reloaded")
        ask("turned-off")
        records = stop_and_read_log(proc)
    logged = [r["request_id"] for r in records if r["msg"] == "access"]
    assert logged == ["turned-on"]


DRAIN_WORDS = ["one", "two", "three", "four"]


def drain_with_a_signal(tmp_path, notify, signum) -> tuple[list[str], list[dict]]:
    """A stream in flight, SIGTERM (the drain), then `signum`: the words the client got and
    the daemon's log records, once it exited (with status 0)."""
    port = free_port()
    with OllamaEmulator() as emulator:
        config = write_config(tmp_path, port, backend("emu", emulator))
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
        with running(config, notify) as proc:
            assert next_message(notify).startswith("READY=1")
            emulator.script(" ".join(DRAIN_WORDS), delay_s=0.3)     # 1.2 s in all: inside drain_timeout_s (2)
            chunks = iter(client.chat.completions.create(
                model="llama3.2", messages=[{"role": "user", "content": "slow"}], stream=True))
            got = [next(chunks).choices[0].delta.content or ""]
            proc.send_signal(signal.SIGTERM)
            assert next_message(notify).startswith("STOPPING=1")
            proc.send_signal(signum)                          # logrotate's HUP, a second TERM, a Ctrl-C
            try:
                got += [c.choices[0].delta.content or "" for c in chunks if c.choices]
            except openai.APIError:                           # cut mid-stream
                pass
            assert proc.wait(timeout=20) == 0
            records = [json.loads(line) for line in proc.stderr.read().splitlines()]
    return "".join(got).split(), records


def test_a_hangup_while_draining_leaves_the_drain_to_finish(tmp_path, notify):
    words, records = drain_with_a_signal(tmp_path, notify, signal.SIGHUP)
    assert words == DRAIN_WORDS
    messages = [r["msg"] for r in records if r["logger"] == "velollmd"]
    assert messages[-3:] == ["draining", "signal ignored while draining", "stopped"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_stop_signal_cuts_the_requests_in_flight_and_exits_cleanly(tmp_path, notify, signum):
    """Ctrl-C twice (or a second TERM) means now: the drain stops waiting, and the daemon exits
    as after a drain, not killed in the middle of it."""
    words, records = drain_with_a_signal(tmp_path, notify, signum)
    assert words != DRAIN_WORDS and words == DRAIN_WORDS[:len(words)]
    messages = [r["msg"] for r in records if r["logger"] == "velollmd"]
    assert messages[-3:] == ["draining", "second stop signal: cutting the requests in flight", "stopped"]
    assert [r["signal"] for r in records if "signal" in r] == [signal.Signals(signum).name]
