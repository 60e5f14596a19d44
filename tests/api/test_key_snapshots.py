"""A key's limit windows outlive a restart of the real daemon process ([key_limits] path): a
used-up tokens_per_day is still used up after SIGTERM and start, and after kill -9 once a
periodic write happened; a corrupt file is set aside with one warning and the daemon starts
empty; daemons without limits leave the directory alone; a reload turns the file on, moves it
and turns it off."""
import openai
import pytest

from tests.daemon_process import DaemonProcess
from tests.daemon_rig import RunningDaemon, ollama_backend
from tests.rig.waiting import wait_for
from velollmd.api.key_snapshots import WINDOWS_NAME, decode_windows
from velollmd.cache.statefile import FutureStateFileError, StateFileError, seal

MODEL = "llama3.2:latest"
KEY = "sk-nightly"
MAX_TOKENS = 8                                 # the emulator answers exactly this many tokens


def daemon_toml(emulator, keys_dir, interval_s: float = 0.0, limit: str = "tokens_per_day = 20") -> str:
    backend = ollama_backend(emulator)
    return (f'[log]\naccess = false\n[cache]\nenabled = false\n[responses]\npath = ""\n'
            f'[key_limits]\npath = "{keys_dir}"\nsnapshot_interval_s = {interval_s}\n'
            f'[[backends]]\nname = "ollama"\nkind = "ollama"\nurl = "{backend["url"]}"\nmodels = ["llama3*"]\n'
            f'[[keys]]\nname = "nightly"\nkey = "{KEY}"\n{limit}\n')


def chat(daemon: DaemonProcess, text: str):
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key=KEY, max_retries=0)
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                          max_tokens=MAX_TOKENS)


def use_up_the_budget(daemon: DaemonProcess) -> int:
    """Requests until the day's 20 tokens are spent (each costs its prompt + 8); the tokens used."""
    used = 0
    while used < 20:
        used += chat(daemon, f"spend {used}").usage.total_tokens
    assert_refused(daemon)
    return used


def assert_refused(daemon: DaemonProcess) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        chat(daemon, "one more")
    assert info.value.code == "rate_limit_exceeded" and "tokens per day (limit 20)" in info.value.message
    assert int(info.value.response.headers["retry-after"]) > 86000


def tokens_kept(path) -> int:
    """The day's tokens of the key in the state file (0 while there is none or no whole one)."""
    try:
        state = decode_windows(path.read_bytes())
    except (FileNotFoundError, StateFileError):
        return 0
    return sum(tokens for _, tokens in state["keys"].get("nightly", {}).get("tokens_day", ()))


def test_a_used_up_daily_budget_stays_used_up_across_a_graceful_restart(tmp_path, ollama_emulator):
    keys_dir = tmp_path / "keys"
    with DaemonProcess(daemon_toml(ollama_emulator, keys_dir), tmp_path) as daemon:
        used = use_up_the_budget(daemon)
        assert not (keys_dir / WINDOWS_NAME).exists()        # interval 0: written on shutdown only
        assert daemon.stop() == 0                            # SIGTERM
        assert tokens_kept(keys_dir / WINDOWS_NAME) == used
        daemon.start()
        assert_refused(daemon)
        assert any(r["msg"] == "key limits restored" and r["keys"] == 1 for r in daemon.log_records("info"))


def test_a_periodic_write_keeps_the_budget_across_kill_9(tmp_path, ollama_emulator):
    keys_dir = tmp_path / "keys"
    with DaemonProcess(daemon_toml(ollama_emulator, keys_dir, interval_s=0.05), tmp_path) as daemon:
        used = use_up_the_budget(daemon)
        assert wait_for(lambda: tokens_kept(keys_dir / WINDOWS_NAME) == used)    # the next periodic write
        daemon.kill()                                        # kill -9: no shutdown write
        daemon.start()
        assert_refused(daemon)


def test_a_corrupt_file_is_set_aside_and_the_daemon_starts_empty(tmp_path, ollama_emulator):
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / WINDOWS_NAME).write_bytes(b"VELOKEYS but not a state file")
    with DaemonProcess(daemon_toml(ollama_emulator, keys_dir), tmp_path) as daemon:
        warnings = [r["msg"] for r in daemon.log_records("warning")]
        assert chat(daemon, "a fresh budget").usage.total_tokens > 0
    assert len(warnings) == 1 and "key limits" in warnings[0] and "unusable" in warnings[0]
    assert [p.name for p in keys_dir.iterdir() if ".corrupt-" in p.name]


def test_a_daemon_whose_keys_have_no_limits_leaves_the_directory_alone(tmp_path, ollama_emulator):
    keys_dir = tmp_path / "keys"
    with DaemonProcess(daemon_toml(ollama_emulator, keys_dir, limit=""), tmp_path) as daemon:
        chat(daemon, "no limits")
        assert daemon.stop() == 0
    assert not keys_dir.exists()


def test_a_reload_turns_the_file_on_moves_it_and_turns_it_off(tmp_path, ollama_emulator):
    """As the Responses store: a new path is owned and written in full (the windows in memory
    come along), the old one let go; "" keeps them in memory only from then on."""
    def table(path: str) -> dict:
        return {"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False},
                "keys": [{"name": "nightly", "key": KEY, "tokens_per_day": 1000}],
                "key_limits": {"path": path, "snapshot_interval_s": 0.05}}
    first, second = tmp_path / "a" / WINDOWS_NAME, tmp_path / "b" / WINDOWS_NAME
    with RunningDaemon(table("")) as daemon:
        used = chat(daemon, "in memory only").usage.total_tokens
        daemon.reload(table(str(tmp_path / "a")))
        assert wait_for(lambda: tokens_kept(first) == used)
        used += chat(daemon, "now on disk").usage.total_tokens
        assert wait_for(lambda: tokens_kept(first) == used)
        daemon.reload(table(str(tmp_path / "b")))
        assert wait_for(lambda: tokens_kept(second) == used)
        daemon.reload(table(""))
        chat(daemon, "in memory again")
    assert tokens_kept(first) == tokens_kept(second) == used
    with RunningDaemon(table(str(tmp_path / "a"))) as daemon:    # "a" was let go: another takes it
        assert daemon.app.key_snapshots.writer.directory == str(tmp_path / "a")


def test_a_reload_that_turns_the_path_on_restores_the_windows_an_earlier_run_left(tmp_path, ollama_emulator):
    """rpm 2 used up and written on shutdown; a restart with path "" gives fresh windows (one
    request goes through); a reload (SIGHUP) back to the path merges the earlier run's two
    requests with this run's one: still limited, as the restart to the path would have been."""
    keys_dir = tmp_path / "keys"
    with DaemonProcess(daemon_toml(ollama_emulator, keys_dir, limit="rpm = 2"), tmp_path) as daemon:
        chat(daemon, "one")
        chat(daemon, "two")
        assert_over_the_request_limit(daemon)
        assert daemon.stop() == 0                            # the windows on disk
        on, off = f'[key_limits]\npath = "{keys_dir}"', '[key_limits]\npath = ""'
        daemon.config.write_text(daemon.config.read_text().replace(on, off))
        daemon.start()
        chat(daemon, "fresh windows: memory only")
        daemon.config.write_text(daemon.config.read_text().replace(off, on))
        daemon.reload()
        assert_over_the_request_limit(daemon)
        assert any(r["msg"] == "key limits merged with its snapshot" and r["keys"] == 1
                   for r in daemon.log_records("info"))


def assert_over_the_request_limit(daemon: DaemonProcess) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        chat(daemon, "one more")
    assert "requests per minute (limit 2)" in info.value.message


def test_turning_the_path_off_and_on_again_counts_nothing_twice(tmp_path, ollama_emulator):
    """The file there holds this run's own windows (written before the reload that turned the
    path off): merged again they would count each token twice."""
    def table(path: str) -> dict:
        return {"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False},
                "keys": [{"name": "nightly", "key": KEY, "tokens_per_day": 1000, "rpm": 100}],
                "key_limits": {"path": path, "snapshot_interval_s": 0.05}}
    keys_dir = tmp_path / "keys"
    with RunningDaemon(table(str(keys_dir))) as daemon:
        used = chat(daemon, "counted once").usage.total_tokens
        assert wait_for(lambda: tokens_kept(keys_dir / WINDOWS_NAME) == used)
        daemon.reload(table(""))
        daemon.reload(table(str(keys_dir)))
        [usage] = daemon.app.ledger.usage()
        assert usage["window"]["tokens_last_day"] == used
        assert len(daemon.app.ledger.accounts["nightly"].requests.times) == 1


def test_a_newer_or_well_sealed_but_wrong_file_is_not_trusted():
    """A newer format is told apart (statefile leaves it for a newer daemon); a sealed payload
    of the wrong shape is corrupt."""
    with pytest.raises(FutureStateFileError):
        decode_windows(b"VELOKEYS" + (2).to_bytes(4, "little") + bytes(60))
    for payload in (b'{"saved_at": 1, "keys": {"k": {"requests": [-1], "tokens_minute": [], "tokens_day": []}}}',
                    b'{"saved_at": 1, "keys": {"k": {"requests": [], "tokens_minute": [[1, 2, 3]], "tokens_day": []}}}',
                    b'[]', b'{"keys": {}}'):
        with pytest.raises(StateFileError, match="bad payload"):
            decode_windows(seal(b"VELOKEYS", 1, payload))
