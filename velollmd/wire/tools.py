"""How a request names its tools and its tool_choice, read the same way by every layer."""
from __future__ import annotations


def parse_tool_choice(tool_choice) -> tuple[str, str | None]:
    """(mode, function name): mode is "auto", "none", "required" or "named"."""
    if tool_choice is None or tool_choice == "auto":
        return "auto", None
    if tool_choice in ("none", "required"):
        return tool_choice, None
    if tool_choice == "any":  # Mistral's spelling of "required"
        return "required", None
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function") if isinstance(tool_choice.get("function"), dict) else tool_choice
        if isinstance(function.get("name"), str):
            return "named", function["name"]
    return "auto", None


def name_and_schema(tool: dict) -> tuple[str | None, dict]:
    """OpenAI {"type": "function", "function": {...}} or a flat {"name", "parameters"}."""
    if not isinstance(tool, dict):
        return None, {}
    spec = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    name = spec.get("name")
    schema = spec.get("parameters") or spec.get("input_schema") or {}
    return (name if isinstance(name, str) else None), (schema if isinstance(schema, dict) else {})
