"""velollmd as a real process (python -m velollmd), for tests that kill it, restart it or watch
its /proc: storage faults and the soak. Its stderr (JSON log lines) goes to a file."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.rig.net import free_port

ROOT = Path(__file__).resolve().parent.parent


class DaemonProcess:
    """One velollmd process configured by `toml_body` (the [server] port is added); `workdir`
    holds its config and its log. start() can be called again after kill() or stop(). It waits
    for the "listening" log line, so the log level must stay at info or below."""

    def __init__(self, toml_body: str, workdir: Path, server_toml: str = ""):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = self.workdir / "velollm.toml"
        self.config.write_text(f"[server]\nport = {self.port}\ndrain_timeout_s = 2\n{server_toml}{toml_body}")
        self.log_path = self.workdir / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self._log_offset = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> DaemonProcess:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "velollmd", "--config", str(self.config)],
                                         env=env, stderr=log, stdout=subprocess.DEVNULL, cwd=str(ROOT))
        self._wait_listening(timeout)
        return self

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"velollmd exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
            if '"msg":"listening"' in self.log_text():   # logged once started (cache restored)
                socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
                return
            time.sleep(0.02)
        raise RuntimeError(f"velollmd not listening after {timeout} s")

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM (a graceful shutdown: drain, final snapshot); the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        return self.proc.wait(timeout=30)

    def reload(self, timeout: float = 30.0) -> None:
        """SIGHUP (the config file read again), until this run logs one more "reloaded" line."""
        done = self.log_text().count('"msg":"reloaded"')
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.log_text().count('"msg":"reloaded"') == done:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"velollmd did not reload: {self.log_text()[-2000:]}")
            time.sleep(0.02)

    def log_text(self) -> str:
        """What this run (since the last start) wrote to the log."""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def log_records(self, level: str | None = None) -> list[dict]:
        """This run's JSON log lines (access-log lines included), optionally of one level."""
        records = []
        for line in self.log_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = {"level": "raw", "msg": line}
            if level is None or record.get("level") == level:
                records.append(record)
        return records

    def num_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
