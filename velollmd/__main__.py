"""`python -m velollmd` / the `velollmd` console script."""
import sys


def main(argv=None) -> int:
    from .daemon import main as daemon_main
    return daemon_main(argv)


if __name__ == "__main__":
    sys.exit(main())
