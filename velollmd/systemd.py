"""systemd integration without libsystemd: sd_notify, the watchdog, socket activation.

Everything here is a no-op outside systemd (no NOTIFY_SOCKET / WATCHDOG_USEC / LISTEN_FDS).
"""
from __future__ import annotations

import asyncio
import os
import socket
import time

SD_LISTEN_FDS_START = 3


def notify(*states: str) -> bool:
    """Send `READY=1`-style lines to $NOTIFY_SOCKET; '@' starts an abstract socket name."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address[0] not in ("/", "@"):
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
    except OSError:
        return False
    return True


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC=` with `RELOADING=1` wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC in seconds when the watchdog is meant for this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2e6


async def watchdog_loop(interval: float) -> None:
    """Ping the watchdog from the event loop: a blocked loop stops the pings, as it should."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def listen_sockets() -> list[socket.socket]:
    """Sockets passed by socket activation (LISTEN_FDS for this LISTEN_PID), else []."""
    fds = os.environ.get("LISTEN_FDS", "")
    pid = os.environ.get("LISTEN_PID", "")
    if not fds.isdigit() or pid != str(os.getpid()):
        return []
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return [socket.socket(fileno=fd) for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(fds))]
