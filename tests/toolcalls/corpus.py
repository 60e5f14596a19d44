"""The table-driven corpus of raw model outputs (tests/toolcalls/corpus/*.json).

Each file is one family: a list of cases {name, tools, raw, content, calls, fixes} plus the
optional tool_choice, messages, loop, error (a substring of the expected error), ids and cut
(max_tokens ended the text: finish_reason "length").
"""
from __future__ import annotations

import json
from pathlib import Path

CORPUS_DIR = Path(__file__).parent / "corpus"


def load_tools() -> dict[str, list[dict]]:
    return json.loads((CORPUS_DIR / "_tools.json").read_text())


def load_cases() -> list[dict]:
    tools = load_tools()
    cases = []
    for path in sorted(CORPUS_DIR.glob("[!_]*.json")):
        for case in json.loads(path.read_text()):
            case = dict(case, family=path.stem)
            case["tools"] = tools[case["tools"]]
            cases.append(case)
    return cases


def load_repair_cases() -> list[dict]:
    """Broken JSON documents with the value they should repair to (for repair + benchmark)."""
    return json.loads((CORPUS_DIR / "_repair.json").read_text())
