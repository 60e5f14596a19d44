"""`python -m velollmd` / the `velollmd` console script."""
import signal
import sys


def main(argv=None) -> int:
    try:
        # First of all: a SIGHUP (systemd's ExecReload=kill -HUP, logrotate) that comes while the
        # daemon still imports, loads models or binds must not kill it by its default action;
        # serve() installs the reload handler once it can reload.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        from .daemon import main as daemon_main
        return daemon_main(argv)
    except KeyboardInterrupt:           # Ctrl-C before serve() took SIGINT over: no traceback
        print("velollmd: interrupted while starting", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
