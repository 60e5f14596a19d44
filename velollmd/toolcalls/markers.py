"""The literal strings that open a tool-call segment, one table for every family.

marker -> (segment kind, closing tag or None). A segment with a closing tag ends after it, or
before the next marker of its own spelling; one without ends at that next marker or at the end
of the text, unless its kind is in HEADER_KINDS: there the header after the marker decides
(`headers.py`). Spellings come from each family's chat template and from the parsers of
llama.cpp (common/chat-parser.cpp) and vLLM (tool_parsers/).
"""
from __future__ import annotations

_DEEPSEEK_END = "<｜tool▁calls▁end｜>"

MARKERS = {
    "<tool_call>": ("hermes", "</tool_call>"),            # Hermes, Qwen 2.5/3, GLM-4.5/4.6
    "<|tool_call|>": ("granite", None),
    "[TOOL_CALLS]": ("mistral", None),
    "<|python_tag|>": ("python-tag", None),
    "<function=": ("qwen-xml", "</function>"),
    "functools[": ("functools", None),
    # DeepSeek V3 / R1 / V3.1: the section (and the misspellings llama.cpp accepts), and a
    # call written without its section
    "<｜tool▁calls▁begin｜>": ("deepseek", _DEEPSEEK_END),
    "<｜tool_calls_begin｜>": ("deepseek", _DEEPSEEK_END),
    "<｜tool calls begin｜>": ("deepseek", _DEEPSEEK_END),
    "<｜tool\\_calls\\_begin｜>": ("deepseek", _DEEPSEEK_END),
    "<｜tool▁calls｜>": ("deepseek", _DEEPSEEK_END),
    "<｜tool▁call▁begin｜>": ("deepseek", "<｜tool▁call▁end｜>"),
    "<｜end▁of▁sentence｜>": ("control", None),
    # Kimi K2: the section (vLLM also accepts the singular), and a call without its section
    "<|tool_calls_section_begin|>": ("kimi", "<|tool_calls_section_end|>"),
    "<|tool_call_section_begin|>": ("kimi", "<|tool_call_section_end|>"),
    "<|tool_call_begin|>": ("kimi", "<|tool_call_end|>"),
    # Command R7B: actions, thinking (reasoning), response wrappers (dropped); Command-R
    "<|START_ACTION|>": ("command-r", "<|END_ACTION|>"),
    "<|START_THINKING|>": ("thinking", "<|END_THINKING|>"),
    "<|START_RESPONSE|>": ("control", None),
    "<|END_RESPONSE|>": ("control", None),
    "Action:": ("command-r-action", None),
    # Functionary v3.2: >>>NAME\n{...}, >>>all\ntext
    ">>>": ("functionary", None),
    # gpt-oss Harmony: a message header, and the tokens that end a message
    "<|channel|>": ("harmony", None),
    "<|start|>": ("harmony", None),
    "<|end|>": ("control", None),
    "<|return|>": ("control", None),
    "<|call|>": ("control", None),
}

HEADER_KINDS = {"functionary", "harmony", "command-r-action"}   # the header decides the end
WHOLE_KINDS = {"control"}                                       # the marker alone is the segment
LINE_START_MARKERS = {"Action:"}                                # a marker only at a line's start
LONGEST_MARKER = max(map(len, MARKERS))
MARKER_PREFIXES = {m[:i] for m in MARKERS for i in range(1, len(m))}
MARKER_FIRST_CHARS = "".join(sorted({m[0] for m in MARKERS}))
