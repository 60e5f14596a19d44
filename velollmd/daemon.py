"""Entry point and lifecycle: config, bind (or socket activation), sd_notify, signals, reload, drain."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import signal
import socket
import sys
import threading

from . import __version__, systemd
from .app import App
from .config import DEFAULT_PATH, Config, check_engine_paths, check_exposure, load_config
from .errors import ConfigError
from .http.server import HTTPServer
from .log import set_levels, setup_logging

log = logging.getLogger("velollmd")
GC_YOUNG_FACTOR = 10      # settle_gc: young collections this many times rarer than Python's default


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="velollmd", description="VeloLLM inference autopilot daemon")
    parser.add_argument("--config", default=DEFAULT_PATH, help=f"TOML config file (default {DEFAULT_PATH})")
    parser.add_argument("--check-config", nargs="?", const="", metavar="PATH",
                        help="validate the config file and exit (0 ok, 2 invalid)")
    parser.add_argument("--pid-file", default=_default_pid_file(),
                        help="write the daemon's pid here for `velollmctl reload` "
                             "(default $RUNTIME_DIRECTORY/velollmd.pid under systemd, else none)")
    parser.add_argument("--version", action="version", version=f"velollmd {__version__}")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    path = args.check_config or args.config
    try:
        config = load_config(path)
        if args.check_config is not None:
            check_engine_paths(config)
    except ConfigError as exc:
        print(f"velollmd: invalid config: {exc}", file=sys.stderr)
        return 2
    if args.check_config is not None:
        print(f"{path}: ok ({len(config.backends)} backends)")
        return 0
    setup_logging(config.log.level, access=config.log.access)
    _install_uvloop()
    try:
        asyncio.run(serve(config, pid_file=args.pid_file, ready=lambda _server: settle_gc()))
    except ConfigError as exc:                      # a socket-activated address the config may not serve
        print(f"velollmd: invalid config: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:                          # the address is taken, not here, not a host...
        log.error("cannot start: %s", exc, extra={"fields": {"listen": f"{config.server.host}:{config.server.port}"}})
        return 1
    except MemoryError as exc:                      # what the config sizes at start (the semantic cache's rows)
        log.error("cannot start: out of memory: %s", exc or "an allocation failed",
                  extra={"fields": {"config": path}})
        return 1
    return 0


def settle_gc() -> None:
    """Once listening: what start-up built (modules, config, routes, loaded models) lives until
    exit, so it leaves the collector's view (gc.freeze) and a full collection walks only what
    requests made; young collections run 10x less often, since a request's garbage is mostly
    freed by reference counting. Measured in benchmarks/RESULTS.md (issue 13, the GC)."""
    gc.collect()
    gc.freeze()
    threshold = gc.get_threshold()
    gc.set_threshold(threshold[0] * GC_YOUNG_FACTOR, *threshold[1:])


def _default_pid_file() -> str:
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return os.path.join(runtime, "velollmd.pid") if runtime else ""


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(config: Config, app: App | None = None, ready=None,
                stop: asyncio.Event | None = None, pid_file: str = "") -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set), then drain; SIGHUP reloads the config file.

    `ready(server)` is called once listening; tests run the daemon in a thread with it."""
    app = app or build_app(config)
    server = HTTPServer(app.handle, config.server, render_error=app.refused)
    sockets = systemd.listen_sockets()
    await server.start(sock=sockets[0] if sockets else None)
    _check_exposure(config, server, config.path)     # socket activation may bind elsewhere
    await app.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    reloader = Reloader(app, server)
    handlers = {signal.SIGTERM: stop.set, signal.SIGINT: stop.set, signal.SIGHUP: reloader.start} \
        if threading.current_thread() is threading.main_thread() else {}
    for signum, handler in handlers.items():
        loop.add_signal_handler(signum, handler)
    watchdog = _start_watchdog()
    log.info("listening", extra={"fields": {"address": _address(server), "backends": len(config.backends)}})
    _write_pid_file(pid_file)
    systemd.notify("READY=1", f"STATUS={_listening(server)}")
    if ready is not None:
        ready(server)
    try:
        await stop.wait()
    finally:
        for signum in handlers:                 # the drain has its own deadline: a HUP (logrotate) is
            loop.add_signal_handler(signum, _while_draining, signum, server)  # ignored, a 2nd TERM hurries it
        await reloader.wait()
        await _drain(app, server)
        for signum in handlers:
            loop.remove_signal_handler(signum)
        if watchdog is not None:
            watchdog.cancel()
        _remove_pid_file(pid_file)


def _while_draining(signum: int, server: HTTPServer) -> None:
    """A signal during the drain: SIGHUP (logrotate, a reload) is ignored; a second SIGTERM or
    SIGINT (Ctrl-C again) stops waiting for the requests in flight, which are cut, and the
    daemon exits as after a drain (neither kills the process in the middle of it)."""
    name = signal.Signals(signum).name
    if signum == signal.SIGHUP:
        log.info("signal ignored while draining", extra={"fields": {"signal": name}})
        return
    log.info("second stop signal: cutting the requests in flight", extra={"fields": {"signal": name}})
    server.hurry()


class Reloader:
    """SIGHUP: re-read the config file and apply it, as systemd's Type=notify-reload expects
    (RELOADING=1 with MONOTONIC_USEC, then READY=1; with Type=notify + ExecReload=kill -HUP
    the same messages put the unit in "reloading" on systemd 253+, older ones ignore them).
    An invalid file changes nothing: one log line names the key, STATUS= says so."""

    def __init__(self, app: App, server: HTTPServer):
        self.app, self.server = app, server
        self._task: asyncio.Task | None = None
        self._again = False                 # a SIGHUP came while a reload ran

    def start(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.ensure_future(self._run())

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            systemd.notify("RELOADING=1", f"MONOTONIC_USEC={systemd.monotonic_usec()}")
            try:
                status = await self.reload(self.app.config.path)
            except Exception:                   # a bug must not leave systemd waiting in "reloading"
                log.exception("reload failed")
                status = f"{_listening(self.server)}; reload failed (see the log)"
            systemd.notify("READY=1", f"STATUS={status}")

    async def reload(self, path: str) -> str:
        """Apply the file at `path`; returns the status line for systemd."""
        try:
            config = self._keep_address(load_config(path))
            _check_exposure(config, self.server, path)
        except ConfigError as exc:
            log.error(f"reload refused, running configuration kept: {exc}",
                      extra={"fields": {"key": exc.key, "path": exc.path}})
            return f"{_listening(self.server)}; reload failed ({exc.key}: {exc.reason}), old configuration kept"
        changes = await self.app.reload(config)
        self.server.config = config.server
        set_levels(config.log.level, config.log.access)
        log.info("reloaded", extra={"fields": {"path": path, "backends": len(config.backends), **changes}})
        return f"{_listening(self.server)}; configuration reloaded"

    def _keep_address(self, config: Config) -> Config:
        """The listening socket stays: a new host or port is logged and kept for a restart."""
        running = self.server.config
        if (config.server.host, config.server.port) == (running.host, running.port):
            return config
        log.warning("server.host/server.port changed: the new address needs a restart; still listening "
                    "on the old one", extra={"fields": {"listening": _listening(self.server),
                                                         "configured": f"{config.server.host}:{config.server.port}"}})
        server = dataclasses.replace(config.server, host=running.host, port=running.port)
        return dataclasses.replace(config, server=server)


def _address(server: HTTPServer) -> list:
    """Where the server listens: [host, port], or [path] for a UNIX socket (socket activation)."""
    address = server.sockets[0].getsockname()
    return [address] if isinstance(address, str) else list(address[:2])


def _listening(server: HTTPServer) -> str:
    return "listening on " + ":".join(map(str, _address(server)))


def _check_exposure(config: Config, server: HTTPServer, path: str) -> None:
    """check_exposure for the address the server is bound to; a UNIX socket is not reachable from
    the network (its file's permissions say who may connect)."""
    sock = server.sockets[0]
    if sock.family != socket.AF_UNIX:
        check_exposure(config.server, sock.getsockname()[0], path, config.keys)


def _write_pid_file(path: str) -> None:
    if not path:
        return
    try:
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")
    except OSError as exc:
        log.warning("cannot write the pid file", extra={"fields": {"path": path, "error": str(exc)}})


def _remove_pid_file(path: str) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def build_app(config: Config) -> App:
    return App(config)


def _start_watchdog() -> asyncio.Task | None:
    interval = systemd.watchdog_interval()
    if interval is None:
        return None
    return asyncio.get_running_loop().create_task(systemd.watchdog_loop(interval))


async def _drain(app: App, server: HTTPServer) -> None:
    log.info("draining", extra={"fields": {"connections": len(server.connections)}})
    systemd.notify("STOPPING=1", "STATUS=draining")
    app.draining = True
    await server.shutdown(app.config.server.drain_timeout_s)
    await app.close()
    log.info("stopped")
