"""Model aliases: the names clients ask for, served by a local model.

Coding agents and SDKs ask for their vendor's model names (`claude-sonnet-4-5`, `gpt-4o`);
`[aliases]` in the configuration maps them, or a glob of them (`"claude-*"`), onto a model a
backend serves. An exact alias wins over a served model of the same name (the user named it);
a glob alias applies only to names that no backend lists, so it never hides a real model.
Aliases do not chain: the configuration refuses a target that is itself an alias.
"""
from __future__ import annotations

import fnmatch
import re
from typing import Callable, Iterable

from ..config import is_glob
from .model_names import same_model


class ModelAliases:
    def __init__(self, pairs: Iterable[tuple[str, str]] = ()):
        pairs = tuple(pairs)
        self.exact: dict[str, str] = {name: target for name, target in pairs if not is_glob(name)}
        self.globs: tuple[tuple[re.Pattern, str], ...] = tuple(
            (re.compile(fnmatch.translate(name)), target) for name, target in pairs if is_glob(name))

    def __bool__(self) -> bool:
        return bool(self.exact or self.globs)

    def resolve(self, model: str, is_listed: Callable[[str], bool]) -> str:
        """The model to serve for the name a client asked for (the name itself when no alias
        applies). `is_listed(name)`: some backend lists that model now."""
        target = self.exact.get(model)
        if target is not None:
            return target
        if self.globs and not is_listed(model):
            for pattern, target in self.globs:
                if pattern.match(model):
                    return target
        return model

    def aliases_of(self, model: str) -> list[str]:
        """The exact aliases that name `model` (globs name no model a picker could list); a
        target without a tag names the `:latest` model, as Ollama reads it."""
        return [name for name, target in self.exact.items() if same_model(target, model)]
