"""Storage faults under a real daemon process: kill -9 while it writes snapshots, a full disk, a
read-only state directory, a snapshot from a newer velollmd. Each time the daemon starts, keeps
the last good snapshot, serves only intact entries, and says what happened in one log line.

A tiny tmpfs plays the full disk and (remounted read-only) the read-only directory; where
mounting is not allowed those tests are skipped with the reason. VELOLLM_SNAPSHOT_KILLS sets the
number of kill -9 rounds (`make soak` runs 50; `make test` a few).
"""
import contextlib
import os
import random
import subprocess
import time
import uuid

import httpx
import pytest

from tests.daemon_process import DaemonProcess
from tests.daemon_rig import RunningDaemon, ollama_backend
from velollmd.cache.store import SNAPSHOT_NAME, SnapshotError, decode_snapshot

MODEL = "llama3.2:latest"
NUM_KILLS = int(os.environ.get("VELOLLM_SNAPSHOT_KILLS", "3"))


def daemon_toml(emulator, cache_dir, interval_s: float, responses_dir="") -> str:
    backend = ollama_backend(emulator)
    return (f'[log]\naccess = false\n[cache]\npath = "{cache_dir}"\nsnapshot_interval_s = {interval_s}\n'
            f'semantic = false\n[responses]\npath = "{responses_dir}"\n[key_limits]\npath = ""\n[[backends]]\nname = "{backend["name"]}"\n'
            f'kind = "ollama"\nurl = "{backend["url"]}"\nmodels = ["llama3*"]\n')


def ask(daemon: DaemonProcess, question: str) -> httpx.Response:
    body = {"model": MODEL, "temperature": 0, "messages": [{"role": "user", "content": question}]}
    response = httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response


def content(response: httpx.Response) -> str:
    return response.json()["choices"][0]["message"]["content"]


def fill(daemon: DaemonProcess, emulator, answers: dict[str, str]) -> None:
    """Ask each question once, the emulator scripted with its answer: now cached."""
    for question, answer in answers.items():
        emulator.script(answer)
        assert ask(daemon, question).headers["x-velollm-cache"] == "miss"


def assert_served_from_cache(daemon: DaemonProcess, emulator, answers: dict[str, str]) -> None:
    calls = emulator.count("/api/chat")
    for question, answer in answers.items():
        response = ask(daemon, question)
        assert response.headers["x-velollm-cache"] == "hit-exact", question
        assert content(response) == answer
    assert emulator.count("/api/chat") == calls


def restored(daemon: DaemonProcess) -> int:
    [line] = [r for r in daemon.log_records("info") if r["msg"] == "cache restored"]
    return line["entries"]


def warnings(daemon: DaemonProcess) -> list[str]:
    return [r["msg"] + " " + str(r.get("error", "")) for r in daemon.log_records("warning")]


def wait_for_snapshot_of(path, num_entries: int) -> None:
    """Until the daemon's periodic snapshot holds `num_entries` (read without touching its temps)."""
    for _ in range(500):
        with contextlib.suppress(OSError, SnapshotError):
            if len(decode_snapshot(path.read_bytes()).exact) == num_entries:
                return
        time.sleep(0.02)
    raise AssertionError(f"no snapshot of {num_entries} entries in {path}")


def files(directory) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.fixture
def tiny_fs(tmp_path):
    """A 512 KiB tmpfs (the state directory of a small machine); skipped where mount is refused."""
    mount_point = tmp_path / "state"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0755", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_kill_9_while_snapshotting_keeps_every_entry(tmp_path, ollama_emulator):
    """Snapshots every 20 ms of ~1 MB each; kill -9 at random points of that loop, restart:
    all entries back, byte for byte, no corrupt or temp file left behind."""
    cache_dir = tmp_path / "cache"
    answers = {f"question {i} {uuid.uuid4().hex}": f"answer {i} " + "x" * 120_000 for i in range(8)}
    rng = random.Random(18)
    with DaemonProcess(daemon_toml(ollama_emulator, cache_dir, 0.02), tmp_path) as daemon:
        fill(daemon, ollama_emulator, answers)
        wait_for_snapshot_of(cache_dir / SNAPSHOT_NAME, len(answers))
        for _ in range(NUM_KILLS):
            time.sleep(rng.uniform(0.0, 0.15))
            daemon.kill()
            daemon.start()
            assert restored(daemon) == len(answers)
            assert not warnings(daemon)
            assert not [name for name in files(cache_dir) if ".corrupt-" in name]
        assert_served_from_cache(daemon, ollama_emulator, answers)


def test_snapshot_from_a_newer_daemon_is_set_aside_not_overwritten(tmp_path, ollama_emulator):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    future = b"VELOCACH" + (2).to_bytes(4, "little") + os.urandom(300)
    (cache_dir / SNAPSHOT_NAME).write_bytes(future)
    with DaemonProcess(daemon_toml(ollama_emulator, cache_dir, 0.02), tmp_path) as daemon:
        assert restored(daemon) == 0
        [line] = warnings(daemon)
        assert "newer velollmd" in line and "format version 2" in line and "starting empty" in line
        [aside] = [name for name in files(cache_dir) if name.startswith(SNAPSHOT_NAME + ".v2-")]
        assert (cache_dir / aside).read_bytes() == future
        answers = {"what is new?": "this daemon's own entry"}
        fill(daemon, ollama_emulator, answers)
        assert daemon.stop() == 0
    assert (cache_dir / aside).read_bytes() == future          # still there for the newer daemon
    with DaemonProcess(daemon_toml(ollama_emulator, cache_dir, 0.02), tmp_path) as daemon:
        assert restored(daemon) == 1 and not warnings(daemon)


def test_corrupt_snapshot_falls_back_to_the_previous_good_one(tmp_path, ollama_emulator):
    cache_dir = tmp_path / "cache"
    first = {"first question?": "first answer"}
    with DaemonProcess(daemon_toml(ollama_emulator, cache_dir, 0), tmp_path) as daemon:
        fill(daemon, ollama_emulator, first)
        assert daemon.stop() == 0                     # snapshot 1 (on shutdown)
        daemon.start()
        fill(daemon, ollama_emulator, {"second question?": "second answer"})
        assert daemon.stop() == 0                     # snapshot 2; snapshot 1 kept as .prev
    snapshot = cache_dir / SNAPSHOT_NAME
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0x55                      # bit rot in the newest snapshot
    snapshot.write_bytes(bytes(data))
    with DaemonProcess(daemon_toml(ollama_emulator, cache_dir, 0), tmp_path) as daemon:
        assert restored(daemon) == 1
        [line] = warnings(daemon)
        assert "unusable" in line and "checksum" in line and "restoring the previous snapshot" in line
        assert_served_from_cache(daemon, ollama_emulator, first)
        emulator_calls = ollama_emulator.count("/api/chat")
        ollama_emulator.script("second answer, asked again")
        assert ask(daemon, "second question?").headers["x-velollm-cache"] == "miss"
        assert ollama_emulator.count("/api/chat") == emulator_calls + 1


def test_full_disk_keeps_the_last_good_snapshot(tmp_path, tiny_fs, ollama_emulator):
    small = {"small question?": "small answer"}
    with DaemonProcess(daemon_toml(ollama_emulator, tiny_fs, 0.05), tmp_path) as daemon:
        fill(daemon, ollama_emulator, small)
        time.sleep(0.3)                               # a few good snapshots
        fill(daemon, ollama_emulator, {"big question?": "y" * 700_000})   # more than the disk holds
        time.sleep(0.5)                               # several failed snapshot rounds
        assert daemon.stop() == 0                     # and one more at shutdown
        failures = [w for w in warnings(daemon) if "snapshot failed" in w]
        assert len(failures) == 1 and "No space left" in failures[0]
    assert not [name for name in files(tiny_fs) if ".tmp-" in name]          # no partial file
    with DaemonProcess(daemon_toml(ollama_emulator, tiny_fs, 0.05), tmp_path) as daemon:
        assert restored(daemon) == 1 and not warnings(daemon)
        assert_served_from_cache(daemon, ollama_emulator, small)


def test_read_only_state_directory(tmp_path, tiny_fs, ollama_emulator):
    answers = {"read only question?": "read only answer"}
    with DaemonProcess(daemon_toml(ollama_emulator, tiny_fs, 0.05), tmp_path) as daemon:
        fill(daemon, ollama_emulator, answers)
        assert daemon.stop() == 0
    before = {name: (tiny_fs / name).read_bytes() for name in files(tiny_fs)}
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    with contextlib.ExitStack() as stack:
        daemon = stack.enter_context(DaemonProcess(daemon_toml(ollama_emulator, tiny_fs, 0.05), tmp_path))
        assert restored(daemon) == 1
        assert_served_from_cache(daemon, ollama_emulator, answers)
        fill(daemon, ollama_emulator, {"a new question?": "not saved"})
        time.sleep(0.4)                               # several snapshot rounds, all refused
        assert daemon.stop() == 0
        [line] = warnings(daemon)                     # said at start, not again at each round
        assert "cache directory cannot be written" in line and "Read-only file system" in line
    assert {name: (tiny_fs / name).read_bytes() for name in files(tiny_fs)} == before


def stored_response(daemon: DaemonProcess, emulator, text: str) -> str:
    emulator.script(text)
    response = httpx.post(daemon.url + "/v1/responses", json={"model": MODEL, "input": text}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_a_second_daemon_on_the_same_state_paths_keeps_its_state_in_memory(tmp_path, ollama_emulator):
    """Two daemons, one state path (a second instance beside the service): the first owns the
    files; the second starts, serves, says so once per store naming the path, and writes
    nothing, so the first's state survives the second's shutdown. The lock dies with its owner."""
    cache_dir, responses_dir = tmp_path / "cache", tmp_path / "responses"
    toml = daemon_toml(ollama_emulator, cache_dir, 0, responses_dir)
    first, second = DaemonProcess(toml, tmp_path / "first"), DaemonProcess(toml, tmp_path / "second")
    mine = {"whose cache is this?": "the first daemon's"}
    with first, second:
        assert not warnings(first)
        fill(first, ollama_emulator, mine)
        kept = stored_response(first, ollama_emulator, "the first daemon's response")
        assert not [r for r in second.log_records("info") if r["msg"] == "cache restored"]   # memory only
        lines = warnings(second)
        assert len(lines) == 2 and all("another velollmd" in line and f"pid {first.pid}" in line for line in lines)
        assert str(cache_dir / SNAPSHOT_NAME) in lines[0] + lines[1] and str(responses_dir) in lines[0] + lines[1]
        fill(second, ollama_emulator, {"and this one?": "the second daemon's"})     # it serves
        stored_response(second, ollama_emulator, "the second daemon's response")
        assert first.stop() == 0                      # the first writes its state...
        assert second.stop() == 0                     # ...and the second does not overwrite it
        first.start()
        assert restored(first) == len(mine) and not warnings(first)
        assert_served_from_cache(first, ollama_emulator, mine)
        assert httpx.get(f"{first.url}/v1/responses/{kept}", timeout=30).status_code == 200
        first.kill()                                  # kill -9: the kernel lets the lock go
        second.start()
        assert restored(second) == len(mine) and not warnings(second)


def test_an_unchanged_cache_is_not_rewritten_and_a_flush_is(tmp_path, ollama_emulator):
    """Each periodic write rewrites (and fsyncs) the whole cache, up to max_bytes and the
    vectors: only when it changed since. A flush is a change: it reaches the disk at once."""
    cache_dir = tmp_path / "cache"
    table = {"backends": [ollama_backend(ollama_emulator)],
             "cache": {"path": str(cache_dir), "snapshot_interval_s": 0, "semantic": False}}
    with RunningDaemon(table) as daemon:
        def write():
            return daemon.call(daemon.app.pipeline.snapshots.write)
        assert write() is None                        # nothing restored, nothing stored
        fill(daemon, ollama_emulator, {"is this written once?": "yes"})
        assert write() == str(cache_dir / SNAPSHOT_NAME) and write() is None
    with RunningDaemon(table) as daemon:
        assert daemon.call(daemon.app.pipeline.snapshots.write) is None     # as restored
        assert httpx.delete(daemon.url + "/v1/velollm/cache", timeout=30).json()["deleted"] == 1
        assert decode_snapshot((cache_dir / SNAPSHOT_NAME).read_bytes()).exact == []   # written by the flush
        assert daemon.call(daemon.app.pipeline.snapshots.write) is None


def test_a_flushed_cache_stays_flushed_after_a_crash(tmp_path, ollama_emulator):
    """DELETE /v1/velollm/cache (bad answers cached) reaches the snapshot at once: a crash
    before the next periodic write does not bring the flushed answers back."""
    cache_dir = tmp_path / "cache"
    with DaemonProcess(daemon_toml(ollama_emulator, cache_dir, 0), tmp_path) as daemon:
        fill(daemon, ollama_emulator, {"a bad answer?": "cached by mistake"})
        assert daemon.stop() == 0
        daemon.start()
        assert restored(daemon) == 1
        assert httpx.delete(daemon.url + "/v1/velollm/cache", timeout=30).json()["deleted"] == 1
        daemon.kill()
        daemon.start()
        assert restored(daemon) == 0


def test_a_reload_that_turns_the_cache_path_on_merges_the_snapshot_already_there(tmp_path, ollama_emulator):
    """[cache] path set by a reload (SIGHUP) where an earlier run left a snapshot: its entries
    are loaded beside those in memory (not overwritten by them), and the whole written there."""
    cache_dir = tmp_path / "cache"
    with DaemonProcess(daemon_toml(ollama_emulator, cache_dir, 3600), tmp_path) as daemon:
        fill(daemon, ollama_emulator, {"only on disk?": "on disk", "from the earlier run?": "older"})
        assert daemon.stop() == 0
        daemon.config.write_text(daemon.config.read_text().replace(f'path = "{cache_dir}"', 'path = ""'))
        daemon.start()
        fill(daemon, ollama_emulator, {"from this run?": "in memory", "from the earlier run?": "newer"})
        daemon.config.write_text(daemon.config.read_text().replace('path = ""', f'path = "{cache_dir}"', 1))
        daemon.reload()
        merged = {"only on disk?": "on disk", "from the earlier run?": "newer", "from this run?": "in memory"}
        assert_served_from_cache(daemon, ollama_emulator, merged)     # memory wins on the same question
        assert daemon.stop() == 0
        daemon.start()
        assert restored(daemon) == 3
        assert_served_from_cache(daemon, ollama_emulator, merged)


def test_a_reload_that_moves_the_cache_path_writes_the_old_one_last(tmp_path, ollama_emulator):
    """[cache] path moved by a reload before any periodic write: the directory given up gets
    the cache as it was then; a later start on the old path serves those answers."""
    old_dir, new_dir = tmp_path / "cache", tmp_path / "moved"
    with DaemonProcess(daemon_toml(ollama_emulator, old_dir, 3600), tmp_path) as daemon:
        answers = {"kept on the old path?": "yes"}
        fill(daemon, ollama_emulator, answers)
        daemon.config.write_text(daemon.config.read_text().replace(str(old_dir), str(new_dir)))
        daemon.reload()
        assert daemon.stop() == 0
        daemon.config.write_text(daemon.config.read_text().replace(str(new_dir), str(old_dir)))
        daemon.start()
        assert restored(daemon) == 1
        assert_served_from_cache(daemon, ollama_emulator, answers)


def test_a_cache_flushed_while_its_path_was_off_is_not_merged_back(tmp_path, ollama_emulator):
    """[cache] path turned off by a reload, the cache flushed, the path turned on again: the
    snapshot there was written before the flush, so it holds only flushed answers: not merged."""
    cache_dir = tmp_path / "cache"
    on, off = f'[cache]\npath = "{cache_dir}"', '[cache]\npath = ""'
    with DaemonProcess(daemon_toml(ollama_emulator, cache_dir, 3600), tmp_path) as daemon:
        fill(daemon, ollama_emulator, {"a bad answer?": "cached by mistake"})
        assert daemon.stop() == 0
        daemon.start()
        assert restored(daemon) == 1
        daemon.config.write_text(daemon.config.read_text().replace(on, off))
        daemon.reload()
        assert httpx.delete(daemon.url + "/v1/velollm/cache", timeout=30).json()["deleted"] == 1
        daemon.config.write_text(daemon.config.read_text().replace(off, on))
        daemon.reload()
        assert [r for r in daemon.log_records("info") if "before the last flush" in r["msg"]]
        ollama_emulator.script("a good answer")
        assert ask(daemon, "a bad answer?").headers["x-velollm-cache"] == "miss"
        assert daemon.stop() == 0
        daemon.start()
        assert restored(daemon) == 1 and content(ask(daemon, "a bad answer?")) == "a good answer"


def test_state_paths_that_cannot_be_written_are_said_at_start_once_each(tmp_path, ollama_emulator):
    """A file where the state directories should be (a typo, a missing mount): one warning per
    state at start, naming the path and the reason; the daemon serves; no more lines on stop."""
    (tmp_path / "file").write_text("not a directory")
    toml = daemon_toml(ollama_emulator, tmp_path / "file" / "cache", 0.05, tmp_path / "file" / "responses")
    toml = toml.replace('[key_limits]\npath = ""', f'[key_limits]\npath = "{tmp_path / "file" / "keys"}"')
    toml += '[[keys]]\nname = "a"\nkey = "sk-state-dir-test-key"\nrpm = 100\n'
    with DaemonProcess(toml, tmp_path / "run") as daemon:
        at_start = daemon.log_records("warning")
        emulator_answer = {"unwritable question?": "still answered"}
        ollama_emulator.script(emulator_answer["unwritable question?"])
        body = {"model": MODEL, "messages": [{"role": "user", "content": "unwritable question?"}]}
        response = httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=30,
                              headers={"authorization": "Bearer sk-state-dir-test-key"})
        assert response.status_code == 200, response.text
        time.sleep(0.3)                               # several snapshot rounds, all refused
        assert daemon.stop() == 0
        records = daemon.log_records("warning")
    assert [r["msg"].split(" directory")[0] for r in at_start] == ["cache", "response store", "key limits"]
    assert all("Not a directory" in r["error"] and r["path"].startswith(str(tmp_path / "file")) for r in at_start)
    assert records == at_start
