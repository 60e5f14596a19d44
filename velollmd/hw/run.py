"""Run one external command with a timeout; never hang, never raise.

Every probe goes through `run_command`. The child starts in its own session (process group),
so on expiry the whole group is killed: a wrapper script that forks `sleep` cannot outlive us.
A missing tool, a non-zero exit or a timeout comes back as a `CommandResult` whose `status`
says what happened and whose `note` is one human line for the report.
"""
from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass

DEFAULT_TIMEOUT_S = 5.0
OK, MISSING, TIMEOUT, FAILED = "ok", "missing", "timeout", "failed"


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    status: str                 # ok | missing | timeout | failed
    returncode: int | None
    stdout: str
    stderr: str
    note: str = ""
    pid: int | None = None      # the child's pid (= its process group id)

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def output(self) -> str:
        """stdout and stderr together: nvidia-smi prints its errors on stdout."""
        return self.stdout + ("\n" + self.stderr if self.stderr else "")


def run_command(argv, timeout_s: float = DEFAULT_TIMEOUT_S, env: dict | None = None) -> CommandResult:
    argv = tuple(argv)
    name = argv[0]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, env=env,
                                text=True, errors="replace")
    except FileNotFoundError:
        return CommandResult(argv, MISSING, None, "", "", f"{name}: not found")
    except OSError as exc:
        return CommandResult(argv, FAILED, None, "", "", f"{name}: cannot start: {exc.strerror}")
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return CommandResult(argv, TIMEOUT, None, "", "",
                             f"{name}: timed out after {timeout_s:g} s (killed)", proc.pid)
    if proc.returncode != 0:
        first = first_line(stdout + "\n" + stderr)
        note = f"{name}: exit {proc.returncode}" + (f": {first}" if first else "")
        return CommandResult(argv, FAILED, proc.returncode, stdout, stderr, note, proc.pid)
    return CommandResult(argv, OK, 0, stdout, stderr, "", proc.pid)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group, then reap the child."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.communicate(timeout=1.0)
    except subprocess.TimeoutExpired:  # a grandchild still holds the pipes: stop reading
        for stream in (proc.stdout, proc.stderr):
            stream.close()
        proc.wait(timeout=1.0)


def first_line(text: str) -> str:
    """The first non-blank line, stripped and cut to 200 characters ("" for none)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:200]
    return ""
