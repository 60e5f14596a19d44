"""`velollmctl reload`: find the running daemon and send it SIGHUP (what `systemctl reload`
does), so that it re-reads its config file.

The daemon is found by, in order: `--pid`, its pid file (`--pid-file`, by default the one it
writes under systemd's RuntimeDirectory), then systemd's MainPID of velollmd.service. A pid
whose command line does not name velollmd is refused (a stale pid file). The outcome of the
reload is in the daemon's log (`journalctl -u velollmd`) and its systemd STATUS=.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

DEFAULT_PID_FILE = "/run/velollm/velollmd.pid"
UNIT = "velollmd.service"


def add_reload_arguments(parser) -> None:
    parser.add_argument("--pid", type=int,
                        help=f"the daemon's pid (default: read from --pid-file, else systemd's MainPID of {UNIT}; "
                             "a daemon started by hand writes one with velollmd --pid-file)")
    parser.add_argument("--pid-file", default=DEFAULT_PID_FILE,
                        help=f"the daemon's pid file (default {DEFAULT_PID_FILE})")
    parser.set_defaults(func=cmd_reload)


def cmd_reload(args) -> int:
    found, misses = find_daemon(args.pid, args.pid_file)
    if found is None:
        print(f"velollmctl reload: no running velollmd found ({'; '.join(misses)})", file=sys.stderr)
        return 1
    pid, source = found
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"velollmctl reload: pid {pid} ({source}) is not running", file=sys.stderr)
        return 1
    except PermissionError:
        print(f"velollmctl reload: not allowed to signal pid {pid} ({source}): run as root or as "
              "the daemon's user", file=sys.stderr)
        return 1
    print(f"sent SIGHUP to velollmd (pid {pid}, from {source}); the result is in its log")
    return 0


def find_daemon(pid: int | None, pid_file: str) -> tuple[tuple[int, str] | None, list[str]]:
    """(pid, where it was found) of a running velollmd, or None; and why each place looked at
    before gave none."""
    candidates = [(pid, "--pid")] if pid is not None else [(_read_pid_file(pid_file), pid_file),
                                                            (_systemd_main_pid(), UNIT)]
    misses = []
    for candidate, source in candidates:
        if candidate and is_velollmd(candidate):
            return (candidate, source), misses
        misses.append(f"pid {candidate} from {source} is not a running velollmd" if candidate is not None
                      else f"no pid from {source}")
    return None, misses


def is_velollmd(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"velollmd" in f.read()
    except OSError:
        return False


def _read_pid_file(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _systemd_main_pid() -> int | None:
    try:
        out = subprocess.run(["systemctl", "show", "--property=MainPID", "--value", UNIT],
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return int(out) if out.isdigit() and out != "0" else None
