"""Fake vendor tools: small shell scripts on PATH that print fixtures (real processes)."""
import os
import stat
import time
from pathlib import Path

from tests.hw.fixtures import FIXTURES


def write_tool(bin_dir: Path, name: str, body: str) -> Path:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def prints(fixture_name: str, exit_code: int = 0) -> str:
    return f'cat "{FIXTURES / fixture_name}"\nexit {exit_code}'


def hangs(pid_file: Path) -> str:
    """Records its pid (= its process group id), then waits in a child `sleep`."""
    return f'echo $$ > "{pid_file}"\nsleep 60\necho never'


def fake_path(monkeypatch, bin_dir: Path) -> None:
    """Only our fakes plus the base system dirs (for sh, cat, sleep) are visible."""
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")


def live_group_members(pgid: int, settle_s: float = 2.0) -> list[int]:
    """Pids in group `pgid` that are not zombies, polled until empty or `settle_s` passed.

    SIGKILL is delivered asynchronously, and PID 1 on some machines never reaps orphans, so
    "gone" means "zombie or absent" and we give the kernel a moment to get there.
    """
    deadline = time.monotonic() + settle_s
    while (members := _live_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return members


def _live_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat_text.rsplit(")", 1)[1].split()     # state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members
