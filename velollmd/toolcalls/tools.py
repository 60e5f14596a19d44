"""The request's tools, indexed by name: which names are real tools, and their schemas."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..wire.tools import name_and_schema

_NAME_PREFIXES = ("functions.", "function.", "tools.", "tool.")


@dataclass
class RawCall:
    """A call as found (in text or in a backend's reply), before cleaning."""
    name: str
    arguments: object            # dict, JSON string, or anything a model wrote
    id: str | None = None
    fixes: list[str] = field(default_factory=list)


class ToolIndex:
    """Name -> JSON Schema of the parameters, for the tools a request offered."""

    def __init__(self, tools: list[dict] | None):
        self.schemas: dict[str, dict] = {}
        for tool in tools or ():
            name, schema = name_and_schema(tool)
            if name:
                self.schemas[name] = schema
        self._folded = {_fold(name): name for name in self.schemas}

    def __bool__(self) -> bool:
        return bool(self.schemas)

    def resolve(self, name: object) -> tuple[str | None, str | None]:
        """(the tool's real name or None, a fix token when the name had to be matched loosely)."""
        if not isinstance(name, str):
            return None, None
        if name in self.schemas:
            return name, None
        bare = name.strip()
        for prefix in _NAME_PREFIXES:
            if bare.startswith(prefix):
                bare = bare[len(prefix):]
        if bare.endswith(".call"):
            bare = bare[:-5]
        found = self.schemas.get(bare) and bare or self._folded.get(_fold(bare))
        return (found, "tool-name") if found else (None, None)

    def schema(self, name: str) -> dict:
        return self.schemas.get(name) or {}


def _fold(name: str) -> str:
    return name.lower().replace("-", "_").replace(" ", "_")
