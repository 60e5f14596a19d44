import logging
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from velollmd.cache.exact import CachedResponse
from velollmd.cache.statefile import KEEP_SET_ASIDE
from velollmd.cache.store import (
    SNAPSHOT_NAME,
    SnapshotState,
    decode_snapshot,
    encode_snapshot,
    read_snapshot,
    write_snapshot,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def state(n=3, dim=8, tag="v"):
    exact = [(f"k{i}", CachedResponse(model="m", content=f"{tag}{i}", usage={"total_tokens": i}),
              float("inf") if i % 2 else 2e9 + i) for i in range(n)]
    rows = [(f"p{i}", f"k{i}", f"question {i}") for i in range(n)]
    vectors = np.arange(n * dim, dtype=np.float32).reshape(n, dim)    # (n, dim)
    return SnapshotState(exact, rows, vectors)


def test_round_trip(tmp_path):
    s = state()
    write_snapshot(str(tmp_path), encode_snapshot(s))
    loaded = read_snapshot(str(tmp_path))
    assert loaded.exact == s.exact and loaded.semantic_rows == s.semantic_rows
    assert np.array_equal(loaded.semantic_vectors, s.semantic_vectors)
    assert loaded.semantic_vectors.dtype == np.float32
    assert os.listdir(tmp_path) == [SNAPSHOT_NAME]          # no temp file left


def test_an_entrys_tool_report_round_trips_and_entries_written_before_it_load(tmp_path):
    """A repaired answer keeps its report (the x-velollm-tool-repair header) across a restart;
    a snapshot written before entries had one still loads, each entry with none."""
    report = {"tool_repair": ["trailing-comma"], "tool_loop": True}
    s = SnapshotState([("k", CachedResponse(model="m", content="c", tool_report=report), float("inf"))])
    write_snapshot(str(tmp_path), encode_snapshot(s))
    assert read_snapshot(str(tmp_path)).exact[0][1].tool_report == report
    old = {k: v for k, v in CachedResponse(model="m", content="old").to_dict().items() if k != "tool_report"}
    assert CachedResponse.from_dict(old) == CachedResponse(model="m", content="old")
    assert CachedResponse.from_dict({**old, "tool_report": "garbage"}).tool_report is None


def test_float16_and_empty_round_trip():
    s = SnapshotState([], [("p", "k", "t")], np.ones((1, 4), np.float16))
    loaded = decode_snapshot(encode_snapshot(s))
    assert loaded.semantic_vectors.dtype == np.float16 and loaded.semantic_rows == [("p", "k", "t")]
    assert decode_snapshot(encode_snapshot(SnapshotState())).exact == []


def test_missing_file_is_empty(tmp_path):
    assert read_snapshot(str(tmp_path)) is None


def test_a_directory_in_the_snapshots_place_is_set_aside_and_the_cache_writes_again(tmp_path, caplog):
    """A directory named as the snapshot (made by hand or by a tool) is set aside as a corrupt
    file is, its contents kept; writes then go where it was, at start and while running."""
    path = tmp_path / SNAPSHOT_NAME
    path.mkdir()
    (path / "kept.txt").write_text("an operator's file")
    with caplog.at_level(logging.WARNING):
        assert read_snapshot(str(tmp_path)) is None
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith(SNAPSHOT_NAME + ".corrupt-")]
    assert (aside / "kept.txt").read_text() == "an operator's file" and not path.exists()
    assert "unusable (a directory, not a state file)" in caplog.text
    write_snapshot(str(tmp_path), encode_snapshot(state()))
    assert read_snapshot(str(tmp_path)).exact == state().exact
    os.unlink(path)                                        # one made while the daemon runs
    path.mkdir()
    (tmp_path / (SNAPSHOT_NAME + ".prev")).mkdir()
    write_snapshot(str(tmp_path), encode_snapshot(state(tag="w")))
    assert read_snapshot(str(tmp_path)).exact == state(tag="w").exact
    assert len([p for p in tmp_path.iterdir() if ".corrupt-" in p.name and p.is_dir()]) == 3


def _corrupt_variants():
    good = encode_snapshot(state())
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    return {"truncated": good[: len(good) - 7], "truncated_header": good[:10],
            "bitflip": bytes(flipped), "foreign": b"PK\x03\x04 this is a zip file" * 10,
            "empty": b"", "old_version": good[:8] + b"\x00\x00\x00\x00" + good[12:]}


@pytest.mark.parametrize("name", sorted(_corrupt_variants()))
def test_corrupt_file_is_quarantined(tmp_path, caplog, name):
    path = tmp_path / SNAPSHOT_NAME
    path.write_bytes(_corrupt_variants()[name])
    with caplog.at_level(logging.WARNING, logger="velollmd.cache.store"):
        assert read_snapshot(str(tmp_path)) is None
    assert not path.exists()
    aside = [p for p in os.listdir(tmp_path) if p.startswith(SNAPSHOT_NAME + ".corrupt-")]
    assert len(aside) == 1
    assert (tmp_path / aside[0]).read_bytes() == _corrupt_variants()[name]
    assert "unusable" in caplog.text
    write_snapshot(str(tmp_path), encode_snapshot(state()))   # the cache goes on working
    assert read_snapshot(str(tmp_path)).exact == state().exact


CHILD = r"""
import sys
import numpy as np
from velollmd.cache.exact import CachedResponse
from velollmd.cache.store import SnapshotState, encode_snapshot, write_snapshot
directory = sys.argv[1]
gen = 0
while True:
    n = 50 + gen % 200                                   # sizes vary: partial writes differ
    exact = [(f"g{gen}-{i}", CachedResponse(model="m", content="x" * (i * 37 % 900)), 1e12)
             for i in range(n)]
    rows = [("p", f"g{gen}-{i}", "q") for i in range(n)]
    vectors = np.full((n, 64), gen, np.float32)
    write_snapshot(directory, encode_snapshot(SnapshotState(exact, rows, vectors)))
    if gen == 0:
        print("ready", flush=True)
    gen += 1
"""


def test_kill_9_while_writing_never_leaves_a_partial_snapshot(tmp_path, caplog):
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": ROOT}
    for _ in range(6):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], env=env,
                                 stdout=subprocess.PIPE, cwd=ROOT)
        assert child.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        with caplog.at_level(logging.WARNING):
            loaded = read_snapshot(str(tmp_path))
        assert loaded is not None, "snapshot lost or quarantined after kill -9"
        gen = int(loaded.exact[0][0].split("-")[0][1:])
        assert len(loaded.exact) == 50 + gen % 200 == len(loaded.semantic_vectors)
        assert (loaded.semantic_vectors == gen).all()
        assert not [p for p in os.listdir(tmp_path) if ".corrupt-" in p or ".tmp-" in p]
    assert "unusable" not in caplog.text


def test_writes_from_two_threads_at_once_leave_one_whole_file(tmp_path):
    """A reload or shutdown starts a snapshot while the previous one is still in its thread
    (a cancelled task does not stop its thread). Both wrote one temp name (`.tmp-<pid>`): one
    truncated the other's file under it, and the loser's rename found no temp file; now they queue."""
    import threading
    from velollmd.cache.statefile import seal, unseal, write_state_file
    payloads = [bytes([i]) * (2 << 20) for i in range(4)]
    errors, start = [], threading.Barrier(len(payloads))

    def write(payload):
        start.wait()
        for _ in range(6):
            try:
                write_state_file(str(tmp_path), "state.snap", seal(b"TESTSTAT", 1, payload))
            except OSError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with open(tmp_path / "state.snap", "rb") as f:
        assert unseal(f.read(), b"TESTSTAT", 1) in payloads
    assert sorted(os.listdir(tmp_path)) == ["state.snap", "state.snap.prev"]


def test_set_aside_files_do_not_pile_up(tmp_path, caplog):
    """A crash loop that leaves a bad file each time: the KEEP_SET_ASIDE newest set-aside
    copies are kept, and the warning names the ones removed."""
    for n in range(KEEP_SET_ASIDE + 2):
        (tmp_path / SNAPSHOT_NAME).write_bytes(b"bad %d" % n)
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            assert read_snapshot(str(tmp_path)) is None
    aside = sorted(p for p in os.listdir(tmp_path) if ".corrupt-" in p)
    assert [(tmp_path / name).read_bytes() for name in aside] == [b"bad %d" % n for n in range(2, KEEP_SET_ASIDE + 2)]
    [line] = caplog.messages
    assert "older ones removed: " + SNAPSHOT_NAME + ".corrupt-" in line and aside[0] not in line
