"""Shared fixtures: the real llama-server, the tiny model, the Ollama emulator."""
from tests.rig.fixtures import *  # noqa: F401,F403
