"""velollmctl bench: workloads, a client, statistics and reports."""
