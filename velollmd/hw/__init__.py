"""Probe the machine (hardware, memory, OS) and parse what its tools print; nothing else."""
