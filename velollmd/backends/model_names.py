"""Model names as Ollama reads them: a name without a tag is its `:latest` (`llama3.2` is
llama3.2:latest, never llama3.2:1b). Routing, listings, aliases and the engine's catalogue all
ask the same question here."""


def latest_twin(name: str) -> str:
    """The other spelling of the same model (`name` <-> `name:latest`); a name with another tag
    has none and is returned as it is."""
    if name.endswith(":latest"):
        return name[:-len(":latest")]
    return name if ":" in name else f"{name}:latest"


def same_model(asked: str, listed: str) -> bool:
    return listed == asked or listed == latest_twin(asked)


def tagged(name: str) -> str:
    """The spelling with a tag (`llama3.2` -> llama3.2:latest): one key for both spellings."""
    return name if ":" in name else f"{name}:latest"
