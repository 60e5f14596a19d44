"""Entry point and lifecycle: config, bind (or socket activation), sd_notify, signals, drain."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading

from . import __version__, systemd
from .app import App
from .config import DEFAULT_PATH, Config, load_config
from .errors import ConfigError
from .http.server import HTTPServer
from .log import setup_logging

log = logging.getLogger("velollmd")


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="velollmd", description="VeloLLM inference autopilot daemon")
    parser.add_argument("--config", default=DEFAULT_PATH, help=f"TOML config file (default {DEFAULT_PATH})")
    parser.add_argument("--check-config", nargs="?", const="", metavar="PATH",
                        help="validate the config file and exit (0 ok, 2 invalid)")
    parser.add_argument("--version", action="version", version=f"velollmd {__version__}")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    path = args.check_config or args.config
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"velollmd: invalid config: {exc}", file=sys.stderr)
        return 2
    if args.check_config is not None:
        print(f"{path}: ok ({len(config.backends)} backends)")
        return 0
    setup_logging(config.log.level, access=config.log.access)
    _install_uvloop()
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(config: Config, app: App | None = None, ready=None,
                stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set), then drain.

    `ready(server)` is called once listening; tests run the daemon in a thread with it."""
    app = app or build_app(config)
    server = HTTPServer(app.handle, config.server)
    sockets = systemd.listen_sockets()
    await server.start(sock=sockets[0] if sockets else None)
    await app.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if threading.current_thread() is threading.main_thread() else ()
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    watchdog = _start_watchdog()
    address = server.sockets[0].getsockname()
    log.info("listening", extra={"fields": {"address": list(address[:2]), "backends": len(config.backends)}})
    systemd.notify("READY=1", f"STATUS=listening on {address[0]}:{address[1]}")
    if ready is not None:
        ready(server)
    try:
        await stop.wait()
    finally:
        await _drain(app, server, config)
        if watchdog is not None:
            watchdog.cancel()
        for signum in signals:
            loop.remove_signal_handler(signum)


def build_app(config: Config) -> App:
    return App(config)


def _start_watchdog() -> asyncio.Task | None:
    interval = systemd.watchdog_interval()
    if interval is None:
        return None
    return asyncio.get_running_loop().create_task(systemd.watchdog_loop(interval))


async def _drain(app: App, server: HTTPServer, config: Config) -> None:
    log.info("draining", extra={"fields": {"connections": len(server.connections)}})
    systemd.notify("STOPPING=1", "STATUS=draining")
    app.draining = True
    await server.shutdown(config.server.drain_timeout_s)
    await app.close()
    log.info("stopped")
