"""velollmctl: detect, optimize, status and bench; talks to the daemon over http/client."""
