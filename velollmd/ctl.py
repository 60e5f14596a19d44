"""`velollmctl`: detect hardware, tune Ollama / llama.cpp, benchmark, status."""
import sys

SUBCOMMANDS = ("detect", "optimize", "bench", "status")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SUBCOMMANDS:
        print("usage: velollmctl {" + ",".join(SUBCOMMANDS) + "} [options]", file=sys.stderr)
        return 2
    print(f"velollmctl {argv[0]}: not yet implemented", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
